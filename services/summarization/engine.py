"""Summarization engines: extractive on MiniLM sentence embeddings, abstractive on a local LLM.

Extractive (``extractive-minilm``): the text is split into sentences with character
offsets (nupunkt's bundled Punkt model plus its layout rules: no NLTK downloads),
every sentence of every request in a batch is embedded in one MiniLM call, and each
request's sentences are ranked by TextRank (PageRank over their cosine-similarity
graph) or by cosine similarity to the document's mean embedding. The best ``k``
come back in input order with their offsets, so clients can highlight them.

Abstractive (``abstractive-llm``): a prompt to a local instruction-tuned LLM, run
by vLLM's offline engine or a transformers pipeline, whichever the image has.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import nupunkt
from pydantic import ConfigDict, Field, model_validator

from nlp.v1 import common_pb2, summarization_pb2
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import ModelSpec
from shared.models.minilm import EmbedderParams, MiniLMEmbedder, Vector
from shared.models.vllm_cpu import VllmCpuParams, configure_vllm_environment
from shared.observability.telemetry import count_tokens
from shared.runtime.engines import EngineFactory

Span = tuple[int, int]
Scores = npt.NDArray[np.float64]

# Ideographic and full-width full stops, exclamation and question marks end sentences
# with no space after them, which Punkt (trained on space-separated text) never splits
# at. Inside a closing bracket or quote they end the sentence only where a space, the
# end or an opening bracket follows: 「はい。」と言った。 is one sentence. Escaped, since
# ruff flags the full-width look-alikes.
_CJK_STOPS = r"[\u3002\uff01\uff1f\uff61]+"
_CJK_CLOSERS = r"[\u300d\u300f\uff09\u3011\u3015\u3009\u300b\"'\u201d\u2019]"
_CJK_OPENERS = r"[\u300c\u300e\uff08\u3010\u3014\u3008\u300a]"
_CJK_STOP = re.compile(
    rf"{_CJK_STOPS}(?!{_CJK_CLOSERS})|{_CJK_STOPS}{_CJK_CLOSERS}+(?=\s|$|{_CJK_OPENERS})"
)


# --- sentence splitting -------------------------------------------------------------


def split_sentences(text: str, *, line_breaks: bool = False, max_chars: int = 1000) -> list[Span]:
    """``(start, end)`` of each sentence, in order; ``text[start:end]`` has no outer spaces.

    Offsets are ``str`` indices, i.e. Unicode code points, as the API promises. Blank
    lines always end a sentence; with ``line_breaks`` so do heading and list-item
    lines. A "sentence" longer than ``max_chars`` (unpunctuated text, tables, logs) is
    cut at a line break or space so one span cannot swallow a document. Linear time.
    """
    punkt = nupunkt.load("default")  # cached by nupunkt; read-only here
    spans: list[Span] = []
    for segment in punkt.iter_segments(text, paragraph_breaks=True, line_breaks=line_breaks):
        for start, end in _split_cjk(text, segment.start, segment.end):
            spans.extend(_split_long(text, start, end, max_chars))
    return spans


def _tight(text: str, start: int, end: int) -> Iterator[Span]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def _split_cjk(text: str, start: int, end: int) -> Iterator[Span]:
    pos = start
    for match in _CJK_STOP.finditer(text, start, end):
        yield from _tight(text, pos, match.end())
        pos = match.end()
    yield from _tight(text, pos, end)


def _split_long(text: str, start: int, end: int, limit: int) -> Iterator[Span]:
    while end - start > limit:
        # Prefer a line break, then a space, in the second half of the window, so
        # that pieces stay long; a hard cut only for text without either.
        half = start + limit // 2
        cut = text.rfind("\n", half, start + limit)
        if cut == -1:
            cut = next((i for i in range(start + limit - 1, half, -1) if text[i].isspace()), -1)
        if cut == -1:
            cut = start + limit
        yield from _tight(text, start, cut)
        start = cut
    yield from _tight(text, start, end)


def _sentence_count(
    request: summarization_pb2.SummarizeRequest, default: int, limit: int, n: int
) -> int:
    """How many sentences a request asks for, out of ``n``, capped at ``limit``."""
    which = request.WhichOneof("length")
    if which == "max_sentences":
        k = request.max_sentences
    elif which == "ratio":
        # ratio is a float32 on the wire (0.3 arrives as 0.30000001): round it back so
        # that 0.3 of 10 sentences is 3, not 4.
        k = math.ceil(round(request.ratio, 6) * n - 1e-6)
    else:
        k = default
    return max(1, min(k, limit))


def _length_problems(request: summarization_pb2.SummarizeRequest) -> list[str]:
    which = request.WhichOneof("length")
    if which == "max_sentences" and request.max_sentences <= 0:
        return ["max_sentences must be positive"]
    if which == "ratio" and not 0.0 < request.ratio <= 1.0:
        return ["ratio must be in (0, 1]"]
    return []


# --- extractive -------------------------------------------------------------------


class ExtractiveParams(EmbedderParams):
    """Parameters of an ``extractive-minilm`` model (its ``params`` in ``NLP_MODELS``)."""

    model_config = ConfigDict(extra="forbid")

    # Sentences are short (tens of word pieces, not 256-piece windows), so a batch of 64
    # holds less activation memory than the embedder's default 16 full windows, and
    # fewer, fuller model calls run faster on CPU.
    batch_windows: int = Field(64, gt=0, description="sentences per model call")
    method: Literal["centroid", "textrank"] = Field(
        "textrank",
        description="textrank: PageRank over sentence similarities (central sentences); "
        "centroid: similarity to the mean sentence embedding (cheaper, same idea)",
    )
    default_max_sentences: int = Field(3, gt=0, description="when a request sets no length")
    max_sentences_limit: int = Field(
        50, gt=0, description="cap on the sentences one summary returns (larger asks are capped)"
    )
    min_sentence_chars: int = Field(
        12,
        ge=0,
        description="shorter sentences (headings, 'Yes.', list numbers) are not ranked, "
        "unless the text has nothing longer",
    )
    position_bias: float = Field(
        0.1,
        ge=0,
        description="lead bias for news-style text: sentence i's score (best = 1) is "
        "multiplied by 1 + position_bias / (1 + i), i.e. +10% for the first, +5% for "
        "the second, fading out; 0 ranks on content alone",
    )
    max_input_sentences: int = Field(
        2000,
        ge=2,
        description="documents with more rankable sentences rank this many, evenly spaced "
        "over the whole text (first, last and every (n-1)/(N-1)-th between); bounds the "
        "embedding work and TextRank's N x N matrices (2000: under 100 MB)",
    )
    max_sentence_chars: int = Field(
        1000, ge=50, description="longer sentences are cut at a line break or space"
    )
    line_breaks: bool = Field(
        False,
        description="also end sentences at heading and list-item lines (structured "
        "documents; hurts hard-wrapped prose)",
    )
    damping: float = Field(0.85, gt=0, lt=1, description="TextRank's PageRank damping")

    @model_validator(mode="after")
    def _default_within_limit(self) -> ExtractiveParams:
        if self.default_max_sentences > self.max_sentences_limit:
            raise ValueError("default_max_sentences exceeds max_sentences_limit")
        return self


def textrank(vectors: Vector, damping: float, tol: float = 1e-6, max_iter: int = 100) -> Scores:
    """PageRank over the cosine-similarity graph of L2-normalised ``vectors``."""
    n = len(vectors)
    if n == 1:
        return np.ones(1)
    # Negative similarity is no endorsement: clip it, and drop self-loops.
    sim = np.clip(vectors @ vectors.T, 0.0, None)
    np.fill_diagonal(sim, 0.0)
    out = sim.sum(axis=1, keepdims=True)
    # A sentence similar to none of the others links to all of them equally.
    transition = np.where(out > 0, sim / np.maximum(out, 1e-12), np.float32(1.0 / n))
    incoming = transition.T.astype(np.float64)
    rank = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        updated = (1.0 - damping) / n + damping * (incoming @ rank)
        converged = float(np.abs(updated - rank).sum()) < tol
        rank = updated
        if converged:
            break
    return rank


def centroid(vectors: Vector) -> Scores:
    """Cosine similarity of each vector to the normalised mean of all of them."""
    mean = vectors.mean(axis=0, dtype=np.float64)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    return np.asarray(vectors.astype(np.float64) @ mean)


@dataclass
class _Document:
    text: str
    spans: list[Span]
    k: int
    ranked: list[int]  # indices into spans that are embedded and ranked


class ExtractiveSummarizer:
    """Batched extractive summaries; thread-safe (onnxruntime sessions are)."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        self.name = name
        self.params = ExtractiveParams.model_validate(spec.params)
        self.embedder = MiniLMEmbedder(spec.path, self.params)
        self._info = common_pb2.ModelInfo(
            name=name, version=f"{self.embedder.version};{self.params.method}"
        )

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def split(self, text: str) -> list[Span]:
        return split_sentences(
            text, line_breaks=self.params.line_breaks, max_chars=self.params.max_sentence_chars
        )

    def _check(self, request: summarization_pb2.SummarizeRequest) -> None:
        problems = _length_problems(request)
        if request.mode == summarization_pb2.SUMMARY_MODE_ABSTRACTIVE:
            problems.append(
                f"abstractive summarization is not served by model {self.name}; "
                "use an LLM-backed model"
            )
        if problems:
            raise InvalidRequestError(problems)

    def _prepare(self, request: summarization_pb2.SummarizeRequest) -> _Document:
        p = self.params
        spans = self.split(request.text)
        k = _sentence_count(request, p.default_max_sentences, p.max_sentences_limit, len(spans))
        if len(spans) <= k:
            return _Document(request.text, spans, k, [])  # everything is returned, unranked
        ranked = [i for i, (s, e) in enumerate(spans) if e - s >= p.min_sentence_chars]
        if not ranked:
            ranked = list(range(len(spans)))
        if len(ranked) > p.max_input_sentences:
            # Evenly spaced rather than the first N, so the end of a long report still
            # has a voice; deterministic, and unique since the step is at least 1.
            picks = np.linspace(0, len(ranked) - 1, p.max_input_sentences).round().astype(int)
            ranked = [ranked[i] for i in picks]
        return _Document(request.text, spans, k, ranked)

    def _scores(self, doc: _Document, vectors: Vector) -> Scores:
        raw = (
            textrank(vectors, self.params.damping)
            if self.params.method == "textrank"
            else centroid(vectors)
        )
        # Best sentence = 1, so that scores read the same for both methods and any length.
        scores = raw / max(float(raw.max()), 1e-12)
        positions = np.asarray(doc.ranked, dtype=np.float64)
        return scores * (1.0 + self.params.position_bias / (1.0 + positions))

    def _respond(
        self, doc: _Document, vectors: Vector | None
    ) -> summarization_pb2.SummarizeResponse:
        if vectors is None:
            chosen = [(i, 1.0) for i in range(len(doc.spans))]
        else:
            scores = self._scores(doc, vectors)
            # Stable on ties: the earlier sentence wins.
            best = np.argsort(-scores, kind="stable")[: doc.k]
            chosen = sorted((doc.ranked[j], float(scores[j])) for j in best)
        sentences = [
            summarization_pb2.SummarySentence(
                text=doc.text[doc.spans[i][0] : doc.spans[i][1]],
                start=doc.spans[i][0],
                end=doc.spans[i][1],
                score=score,
            )
            for i, score in chosen
        ]
        return summarization_pb2.SummarizeResponse(
            summary=" ".join(s.text for s in sentences), sentences=sentences, model=self._info
        )

    def run_batch(
        self, requests: Sequence[summarization_pb2.SummarizeRequest]
    ) -> list[summarization_pb2.SummarizeResponse]:
        """Summarise many requests with one embedding pass over all their sentences."""
        for request in requests:
            self._check(request)  # before any work: a bad request fails fast, alone
        docs = [self._prepare(r) for r in requests]
        texts = [doc.text[slice(*doc.spans[i])] for doc in docs for i in doc.ranked]
        vectors = self.embedder.embed(texts) if texts else None
        responses = []
        pos = 0
        for doc in docs:
            if doc.ranked and vectors is not None:
                responses.append(self._respond(doc, vectors[pos : pos + len(doc.ranked)]))
                pos += len(doc.ranked)
            else:
                responses.append(self._respond(doc, None))
        return responses

    def summarize(
        self, request: summarization_pb2.SummarizeRequest
    ) -> summarization_pb2.SummarizeResponse:
        return self.run_batch([request])[0]


# --- abstractive ------------------------------------------------------------------

DEFAULT_PROMPT = (
    "Summarize the following text in at most {max_sentences} sentences. "
    "Reply with the summary only.\n\n{text}"
)


class AbstractiveParams(VllmCpuParams):
    """Parameters of an ``abstractive-llm`` model (its ``params`` in ``NLP_MODELS``); on
    vLLM's CPU build those of :class:`VllmCpuParams` too."""

    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="auto: vLLM when installed, else transformers"
    )
    prompt_template: str = Field(
        DEFAULT_PROMPT, description="str.format template with {text} and {max_sentences}"
    )
    chat: bool = Field(
        True, description="send the prompt as a user chat message (instruction-tuned models)"
    )
    default_max_sentences: int = Field(3, gt=0)
    max_sentences_limit: int = Field(20, gt=0)
    max_new_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)
    load_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra arguments for vllm.LLM or AutoModelForCausalLM.from_pretrained",
    )

    @model_validator(mode="after")
    def _template_has_text(self) -> AbstractiveParams:
        if "{text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {text}")
        return self


Generate = Callable[[list[str]], list[str]]


def _pick_backend(name: str, wanted: str) -> str:
    vllm = find_spec("vllm") is not None
    transformers = find_spec("transformers") is not None and find_spec("torch") is not None
    if wanted == "vllm" and not vllm:
        raise RuntimeError(f"model {name!r}: backend vllm is configured but not installed")
    if wanted == "transformers" and not transformers:
        raise RuntimeError(
            f"model {name!r}: backend transformers is configured but transformers "
            "and torch are not both installed"
        )
    if wanted == "auto":
        if not (vllm or transformers):
            raise RuntimeError(
                f"model {name!r}: abstractive-llm needs vllm, or transformers with torch; "
                "neither is installed in this image"
            )
        return "vllm" if vllm else "transformers"
    return wanted


def _load_vllm(path: Path, params: AbstractiveParams) -> Generate:
    configure_vllm_environment(params)
    vllm = import_module("vllm")  # by name: an optional, untyped dependency

    llm = vllm.LLM(model=str(path), **params.load_kwargs)
    sampling = vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature)

    def generate(prompts: list[str]) -> list[str]:
        if params.chat:
            chats = [[{"role": "user", "content": p}] for p in prompts]
            outputs = llm.chat(chats, sampling, use_tqdm=False)
        else:
            outputs = llm.generate(prompts, sampling, use_tqdm=False)
        count_tokens(
            sum(len(o.prompt_token_ids or ()) for o in outputs),
            sum(len(o.outputs[0].token_ids) for o in outputs),
        )
        return [str(o.outputs[0].text) for o in outputs]

    return generate


def _load_transformers(path: Path, params: AbstractiveParams) -> Generate:
    transformers = import_module("transformers")

    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, **{"torch_dtype": "auto", **params.load_kwargs}
    )
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    options: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "return_full_text": False}
    if params.temperature > 0:
        options |= {"do_sample": True, "temperature": params.temperature}
    else:
        options["do_sample"] = False

    def generate(prompts: list[str]) -> list[str]:
        inputs: list[Any] = (
            [[{"role": "user", "content": p}] for p in prompts] if params.chat else prompts
        )
        outputs = pipe(inputs, **options)
        texts = []
        for out in outputs:
            generated = out[0]["generated_text"]
            # Chat input may come back as the message list with the reply appended.
            texts.append(
                str(generated[-1]["content"] if isinstance(generated, list) else generated)
            )
        count_tokens(
            sum(len(tokenizer(p)["input_ids"]) for p in prompts),
            sum(len(tokenizer(t)["input_ids"]) for t in texts),
        )
        return texts

    return generate


class AbstractiveLLMSummarizer:
    """Summaries written by a local LLM; needs ``spec.path`` (a model directory)."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        if spec.path is None:
            raise ValueError(f"model {name!r}: abstractive-llm needs path, a local model directory")
        self.name = name
        self.params = AbstractiveParams.model_validate(spec.params)
        backend = _pick_backend(name, self.params.backend)
        # Loaded here, not on the first request: a broken model fails the worker's
        # start, and the first task does not pay minutes of loading under its deadline.
        load = _load_vllm if backend == "vllm" else _load_transformers
        self._generate = load(spec.path, self.params)
        self._lock = threading.Lock()  # neither backend's offline engine is thread-safe
        self._info = common_pb2.ModelInfo(name=name, version=f"{backend};{spec.path.name}")

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def run_batch(
        self, requests: Sequence[summarization_pb2.SummarizeRequest]
    ) -> list[summarization_pb2.SummarizeResponse]:
        """Summarise many requests in one generation call."""
        problems = [p for r in requests for p in _length_problems(r)]
        if any(r.mode != summarization_pb2.SUMMARY_MODE_ABSTRACTIVE for r in requests):
            problems.append(
                f"extractive summarization is not served by model {self.name}; "
                "use an extractive model such as minilm-textrank"
            )
        if problems:
            raise InvalidRequestError(problems)
        p = self.params
        prompts = []
        for r in requests:
            n = len(split_sentences(r.text)) if r.WhichOneof("length") == "ratio" else 0
            k = _sentence_count(r, p.default_max_sentences, p.max_sentences_limit, n)
            prompts.append(p.prompt_template.format(text=r.text, max_sentences=k))
        with self._lock:
            outputs = self._generate(prompts)
        return [
            summarization_pb2.SummarizeResponse(summary=out.strip(), model=self._info)
            for out in outputs
        ]


FACTORIES: dict[str, EngineFactory] = {
    "extractive-minilm": ExtractiveSummarizer,
    "abstractive-llm": AbstractiveLLMSummarizer,
}

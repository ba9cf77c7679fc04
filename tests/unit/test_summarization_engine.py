"""Extractive summarization on the embedded MiniLM model (real weights) and its splitter."""

from __future__ import annotations

import time
from importlib.util import find_spec

import pytest

from nlp.v1 import summarization_pb2
from services.summarization.engine import (
    FACTORIES,
    AbstractiveLLMSummarizer,
    ExtractiveSummarizer,
    split_sentences,
)
from services.summarization.settings import Settings
from shared.contracts.errors import InvalidRequestError
from shared.contracts.settings import ModelSpec

SETTINGS = Settings()

NEWS = (
    "The city council approved a new budget on Tuesday that raises spending on public "
    "transport by 12 percent. Mayor Jane Alvarez said the plan would cut commute times and "
    "reduce traffic in the downtown area. Opposition members criticised the budget, arguing "
    "that property taxes would have to rise to pay for it. The weather on Tuesday was sunny "
    "with a light breeze. The new bus lines are expected to open next spring, the council "
    "said. Local business owners had mixed reactions to the transport plan."
)
SPORTS = (
    "The home side won the cup final 3-1 after extra time on Saturday. Their striker scored "
    "twice in the second half. The coach praised the defence for holding firm under pressure. "
    "Fans celebrated in the streets until late at night. The team will parade the trophy "
    "through the city on Monday."
)
SCIENCE = (
    "Astronomers have detected water vapour in the atmosphere of a distant exoplanet. The "
    "planet orbits a small red dwarf star about 110 light years away. Observations came from "
    "the space telescope's infrared spectrograph. The finding raises questions about whether "
    "the planet could be habitable. Further observations are planned for next year."
)

Request = summarization_pb2.SummarizeRequest
Response = summarization_pb2.SummarizeResponse


@pytest.fixture(scope="module")
def engine() -> ExtractiveSummarizer:
    return ExtractiveSummarizer(SETTINGS.default_model, SETTINGS.models[SETTINGS.default_model])


@pytest.fixture(scope="module")
def centroid_engine() -> ExtractiveSummarizer:
    spec = ModelSpec(engine="extractive-minilm", params={"method": "centroid"})
    return ExtractiveSummarizer("minilm-centroid", spec)


def assert_offsets(text: str, response: Response) -> None:
    """Every sentence is a slice of the input, in input order; the summary joins them."""
    previous_end = 0
    for s in response.sentences:
        assert text[s.start : s.end] == s.text
        assert s.text and s.text == s.text.strip()
        assert s.start >= previous_end
        previous_end = s.end
    assert response.summary == " ".join(s.text for s in response.sentences)


def test_max_sentences_picks_input_sentences_in_order(engine: ExtractiveSummarizer) -> None:
    assert len(split_sentences(NEWS)) == 6
    response = engine.run_batch([Request(text=NEWS, max_sentences=2)])[0]
    assert len(response.sentences) == 2
    assert_offsets(NEWS, response)
    # The lead sentence carries the story; the weather aside never does.
    assert response.sentences[0].start == 0
    assert "weather" not in response.summary
    assert response.model.name == SETTINGS.default_model
    assert response.model.version.endswith(";textrank")
    assert all(
        0.0 < s.score <= 1.0 + engine.params.position_bias + 1e-6 for s in response.sentences
    )


@pytest.mark.parametrize(("ratio", "expected"), [(0.5, 3), (0.3, 2), (0.01, 1), (1.0, 6)])
def test_ratio(engine: ExtractiveSummarizer, ratio: float, expected: int) -> None:
    response = engine.run_batch([Request(text=NEWS, ratio=ratio)])[0]
    assert len(response.sentences) == expected
    assert_offsets(NEWS, response)


def test_float32_ratio_is_not_rounded_up(engine: ExtractiveSummarizer) -> None:
    # 0.3 arrives as 0.30000001: of 10 sentences that must still be 3.
    text = " ".join(f"Sentence number {i} talks about topic {i % 3} at length." for i in range(10))
    response = engine.run_batch([Request(text=text, ratio=0.3)])[0]
    assert len(response.sentences) == 3


def test_default_length_and_cap(engine: ExtractiveSummarizer) -> None:
    default = engine.run_batch([Request(text=NEWS)])[0]
    assert len(default.sentences) == engine.params.default_max_sentences
    many = engine.run_batch([Request(text=NEWS, max_sentences=100)])[0]
    assert [s.text for s in many.sentences] == [NEWS[s:e] for s, e in split_sentences(NEWS)]


def test_unicode_offsets_round_trip(engine: ExtractiveSummarizer) -> None:
    text = (
        "Le café 😀 ouvre à huit heures près de la gare. "
        "Der Bäcker verkauft frische Brötchen 🥐 und Kuchen. "
        "東京は今日晴れです。明日は雨が降るでしょう！「はい。」と彼は言った。 "  # noqa: RUF001
        "Naïve façades line the Ærø waterfront 🇩🇰 in summer."
    )
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans][2:5] == [
        "東京は今日晴れです。",
        "明日は雨が降るでしょう！",  # noqa: RUF001
        "「はい。」と彼は言った。",
    ]
    response = engine.run_batch([Request(text=text, max_sentences=10)])[0]
    assert len(response.sentences) == 6
    assert_offsets(text, response)
    # Code points, not UTF-8 bytes or UTF-16 units: the last sentence ends at len(text).
    assert response.sentences[-1].end == len(text)


def test_abbreviations_do_not_split() -> None:
    text = "Dr. Smith met the U.S. ambassador. They discussed trade with Mr. Jones on Jan. 5."
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "Dr. Smith met the U.S. ambassador.",
        "They discussed trade with Mr. Jones on Jan. 5.",
    ]


def test_paragraphs_and_missing_final_punctuation() -> None:
    text = "Budget Passes\n\nThe council voted on Tuesday.\nIt was close.\n\nMore to follow"
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "Budget Passes",
        "The council voted on Tuesday.",
        "It was close.",
        "More to follow",
    ]
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []


def test_overlong_unpunctuated_text_is_cut() -> None:
    text = "word " * 2000
    spans = split_sentences(text, max_chars=1000)
    assert len(spans) > 5
    assert all(e - s <= 1000 and text[s:e] == text[s:e].strip() for s, e in spans)


def test_large_document(engine: ExtractiveSummarizer) -> None:
    paragraphs = [NEWS, SPORTS, SCIENCE]
    text = ""
    i = 0
    while len(text) < 200_000:
        text += f"Part {i}. " + paragraphs[i % 3] + "\n\n"
        i += 1
    start = time.perf_counter()
    response = engine.run_batch([Request(text=text, max_sentences=5)])[0]
    elapsed = time.perf_counter() - start
    assert len(response.sentences) == 5
    assert_offsets(text, response)
    assert elapsed < 120, f"200 kB took {elapsed:.1f}s"


def test_batch_has_no_cross_talk(engine: ExtractiveSummarizer) -> None:
    texts = [NEWS, SPORTS, SCIENCE, "Just one short sentence here.", NEWS]
    requests = [Request(text=t, max_sentences=2) for t in texts]
    batched = engine.run_batch(requests)
    assert len(batched) == len(texts)
    for text, request, response in zip(texts, requests, batched, strict=True):
        assert_offsets(text, response)
        single = engine.run_batch([request])[0]
        assert [s.text for s in response.sentences] == [s.text for s in single.sentences]
        for b, s in zip(response.sentences, single.sentences, strict=True):
            assert b.score == pytest.approx(s.score, abs=1e-4)
    assert batched[0].summary == batched[4].summary


def test_single_sentence(engine: ExtractiveSummarizer) -> None:
    text = "  The only sentence, without a full stop  "
    response = engine.run_batch([Request(text=text)])[0]
    assert [s.text for s in response.sentences] == ["The only sentence, without a full stop"]
    assert_offsets(text, response)
    empty = engine.run_batch([Request(text="   ")])[0]
    assert empty.summary == "" and not empty.sentences


def test_abstractive_is_refused(engine: ExtractiveSummarizer) -> None:
    request = Request(text=NEWS, mode=summarization_pb2.SUMMARY_MODE_ABSTRACTIVE)
    with pytest.raises(InvalidRequestError, match="not served by model minilm-textrank"):
        engine.run_batch([request])
    extractive = Request(text=NEWS, mode=summarization_pb2.SUMMARY_MODE_EXTRACTIVE)
    assert len(engine.run_batch([extractive])[0].sentences) == 3


@pytest.mark.parametrize(
    "request_", [Request(text=NEWS, max_sentences=0), Request(text=NEWS, ratio=1.5)]
)
def test_bad_length_is_refused(engine: ExtractiveSummarizer, request_: Request) -> None:
    with pytest.raises(InvalidRequestError):
        engine.run_batch([request_])


def test_centroid_method(centroid_engine: ExtractiveSummarizer) -> None:
    assert centroid_engine.info.version.endswith(";centroid")
    response = centroid_engine.run_batch([Request(text=NEWS, max_sentences=2)])[0]
    assert len(response.sentences) == 2
    assert_offsets(NEWS, response)
    assert "weather" not in response.summary


def test_max_input_sentences_bounds_ranking() -> None:
    spec = ModelSpec(engine="extractive-minilm", params={"max_input_sentences": 4})
    small = ExtractiveSummarizer("small", spec)
    text = " ".join([NEWS, SPORTS, SCIENCE])
    doc = small._prepare(Request(text=text, max_sentences=2))
    assert len(doc.ranked) == 4
    assert doc.ranked[0] == 0 and doc.ranked[-1] == len(doc.spans) - 1
    assert_offsets(text, small.run_batch([Request(text=text, max_sentences=2)])[0])


def test_unknown_param_fails_at_start() -> None:
    with pytest.raises(ValueError, match="metod"):
        ExtractiveSummarizer("x", ModelSpec(engine="extractive-minilm", params={"metod": "x"}))


def test_abstractive_engine_errors() -> None:
    with pytest.raises(ValueError, match="needs path"):
        AbstractiveLLMSummarizer("llm", ModelSpec(engine="abstractive-llm"))
    if find_spec("vllm") or find_spec("transformers"):
        return  # an image with an LLM stack would try to load the (missing) model
    with pytest.raises(RuntimeError, match="vllm"):
        AbstractiveLLMSummarizer("llm", ModelSpec(engine="abstractive-llm", path="/models/llm"))


def test_factories() -> None:
    assert set(FACTORIES) == {"extractive-minilm", "abstractive-llm"}
    assert SETTINGS.models[SETTINGS.default_model].engine in FACTORIES

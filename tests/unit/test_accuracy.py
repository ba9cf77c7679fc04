"""bench.accuracy's arithmetic and the labelled set it reads."""

from __future__ import annotations

import pytest

from bench.accuracy import DATA, Example, read_examples, score


def test_the_labelled_set_is_whole_and_balanced() -> None:
    examples = read_examples(DATA)
    assert len(examples) >= 200
    assert len({e.text for e in examples}) == len(examples)
    by_domain = {d: [e for e in examples if e.domain == d] for d in ("review", "support", "news")}
    for domain, items in by_domain.items():
        labels = {e.label for e in items}
        assert labels == {"positive", "negative", "neutral"}, domain


def test_accuracy_and_f1() -> None:
    examples = [
        Example("review", "positive", "a"),
        Example("review", "negative", "b"),
        Example("news", "neutral", "c"),
        Example("news", "positive", "d"),
    ]
    result = score("m", "e", examples, ["positive", "positive", "neutral", "negative"])
    # No support examples: no figure for that domain (not a zero).
    assert result.accuracy == {"review": 0.5, "news": 0.5, "all": 0.5}
    # positive: tp 1, fp 1, fn 1 -> 0.5; negative: tp 0 -> 0; neutral: tp 1 -> 1.
    assert result.f1 == {"positive": 0.5, "negative": 0.0, "neutral": 1.0}
    assert result.macro_f1 == pytest.approx(0.5)
    assert result.confusion["positive"] == {"positive": 1, "negative": 1, "neutral": 0}

"""The classification kind's models with labels of their own: the rule every caller's
request is checked by (gateway and worker alike), and the VADER sentiment engine."""

from __future__ import annotations

import pytest

from nlp.v1 import classification_pb2
from services.classification.engine import FACTORIES, ZeroShotClassifier
from services.classification.sentiment import LABELS, VaderSentiment
from services.classification.settings import SENTIMENT_MODEL, Settings
from shared.contracts.envelope import classification_model_problems
from shared.contracts.settings import ModelSpec
from shared.runtime.engines import ModelRegistry, request_problems
from tests.factories import classify_request

OWN = ("positive", "negative", "neutral")


def _request(
    *labels: str, multi: bool = False, described: bool = False
) -> classification_pb2.ClassifyRequest:
    request = classify_request("Great service.", labels, multi_label=multi)
    if described and request.labels:
        request.labels[0].description = "happy customers"
    return request


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (_request(), []),
        (_request("positive"), []),
        (_request("positive", "neutral"), []),
        (_request("happy"), ["'happy' is not a label of model 'm' (its labels: positive"]),
        (_request("positive", described=True), ["a description would have no effect"]),
        (_request(multi=True), ["is single-label"]),
    ],
)
def test_a_model_with_its_own_labels_takes_none_or_a_subset(
    request_: classification_pb2.ClassifyRequest, expected: list[str]
) -> None:
    problems = classification_model_problems(request_, "m", OWN)
    assert len(problems) == len(expected)
    for problem, part in zip(problems, expected, strict=True):
        assert part in problem


def test_a_multi_label_head_wants_multi_label_and_a_zero_shot_model_wants_labels() -> None:
    assert "set multi_label" in classification_model_problems(_request(), "m", OWN, True)[0]
    assert classification_model_problems(_request(multi=True), "m", OWN, True) == []
    assert "zero-shot" in classification_model_problems(_request(), "z", ())[0]
    assert classification_model_problems(_request("a", "b", multi=True), "z", ()) == []


@pytest.fixture(scope="module")
def vader() -> VaderSentiment:
    engine = FACTORIES["vader-sentiment"](SENTIMENT_MODEL, ModelSpec(engine="vader-sentiment"))
    assert isinstance(engine, VaderSentiment)
    return engine


@pytest.mark.parametrize(
    ("text", "label"),
    [
        # The zero-shot model called this one positive (0.586).
        ("Terrible. It broke after one day and support never answered.", "negative"),
        ("Absolutely love it, the best purchase I made this year!", "positive"),
        ("The store opens at 9 am on weekdays.", "neutral"),
        ("Not bad at all for the price.", "positive"),
    ],
)
def test_vader_labels_reviews_and_tickets(vader: VaderSentiment, text: str, label: str) -> None:
    (response,) = vader.run_batch([classify_request(text, ())])
    assert response.top_label == label
    assert response.scores[0].label == label
    assert sorted(s.label for s in response.scores) == sorted(LABELS)
    assert sum(s.score for s in response.scores) == pytest.approx(1.0, abs=1e-6)
    assert response.model.name == SENTIMENT_MODEL and response.model.version.startswith("vader-")


def test_the_top_score_is_vaders_label_on_either_side_of_the_band(vader: VaderSentiment) -> None:
    band = vader.params.neutral_band
    for compound, label in [(band + 0.01, "positive"), (band - 0.01, "neutral"), (0.0, "neutral")]:
        scores = vader.scores(compound)
        assert max(scores, key=lambda k: scores[k]) == label, compound
        mirrored = vader.scores(-compound)
        assert mirrored["negative"] == pytest.approx(scores["positive"])


def test_a_subset_keeps_only_those_labels_renormalised(vader: VaderSentiment) -> None:
    text = "The refund took three weeks and nobody replied to my emails."
    (everything,) = vader.run_batch([classify_request(text, ())])
    (two,) = vader.run_batch([classify_request(text, ("positive", "neutral"))])
    assert {s.label for s in two.scores} == {"positive", "neutral"}
    assert sum(s.score for s in two.scores) == pytest.approx(1.0, abs=1e-6)
    full = {s.label: s.score for s in everything.scores}
    part = {s.label: s.score for s in two.scores}
    assert part["neutral"] / part["positive"] == pytest.approx(full["neutral"] / full["positive"])


def test_vader_params_are_checked() -> None:
    with pytest.raises(ValueError, match="neutral_band"):
        VaderSentiment("s", ModelSpec(engine="vader-sentiment", params={"neutral_band": 2}))
    with pytest.raises(ValueError, match="extra"):
        VaderSentiment("s", ModelSpec(engine="vader-sentiment", params={"threshold": 1}))
    wide = VaderSentiment("s", ModelSpec(engine="vader-sentiment", params={"neutral_band": 0.9}))
    (response,) = wide.run_batch([classify_request("I like it.", ())])
    assert response.top_label == "neutral"  # the band has an effect


def test_the_catalog_advertises_own_labels_and_engines_check_requests(
    vader: VaderSentiment,
) -> None:
    settings = Settings()
    assert settings.models[SENTIMENT_MODEL].engine == "vader-sentiment"
    registry = ModelRegistry(
        "classification",
        {"sentiment": vader},
        {"sentiment": "vader-sentiment"},
        "sentiment",
    )
    (descriptor,) = registry.descriptors()
    assert descriptor["labels"] == list(LABELS) and descriptor["multi_label"] is False
    assert request_problems(vader, classify_request("x", ("angry",)))
    assert ZeroShotClassifier.labels == ()

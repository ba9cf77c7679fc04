"""Sentiment with VADER (Hutto & Gilbert, 2014): a lexicon and rules tuned on social media
text, installed from PyPI (``vadersentiment``), nothing to download. An honest baseline
rather than a trained model; its accuracy next to zero-shot MiniLM is in
docs/benchmarks.md (``python -m bench.accuracy``).

VADER gives a compound score in [-1, 1]: positive at or above ``neutral_band``, negative
at or below minus it, neutral between, as its authors recommend. The three scores are a
softmax of ``sharpness`` times how far the compound lies past the band on either side (0
for neutral), so the top score is always VADER's label and the scores sum to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import metadata

from pydantic import BaseModel, Field
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from nlp.v1 import classification_pb2, common_pb2
from services.classification.scores import ranked_response
from shared.contracts.settings import ModelSpec

LABELS = ("positive", "negative", "neutral")


class VaderParams(BaseModel):
    """Parameters of a ``vader-sentiment`` model (its ``params`` in ``NLP_MODELS``)."""

    model_config = {"extra": "forbid"}

    neutral_band: float = Field(
        0.05, ge=0, lt=1, description="|compound| below this is neutral (VADER's authors: 0.05)"
    )
    sharpness: float = Field(
        8.0, gt=0, description="how sharply the scores follow the compound past the band"
    )


class VaderSentiment:
    """positive / negative / neutral for any text; thread-safe (VADER keeps no state per
    call). Needs no candidate labels: names given keep only those labels."""

    labels: tuple[str, ...] = LABELS
    multi_label = False

    def __init__(self, name: str, spec: ModelSpec) -> None:
        if spec.path:
            raise ValueError(
                f"model {name!r}: vader-sentiment takes no path (its lexicon ships with it)"
            )
        self.params = VaderParams.model_validate(spec.params)
        self.analyzer = SentimentIntensityAnalyzer()
        self._info = common_pb2.ModelInfo(
            name=name, version=f"vader-{metadata.version('vadersentiment')}"
        )

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def scores(self, compound: float) -> dict[str, float]:
        """The three labels' scores for a compound score."""
        band, k = self.params.neutral_band, self.params.sharpness
        logits = {"positive": k * (compound - band), "negative": k * (-compound - band)}
        logits["neutral"] = 0.0
        top = max(logits.values())
        exp = {label: math.exp(v - top) for label, v in logits.items()}
        total = sum(exp.values())
        return {label: exp[label] / total for label in LABELS}

    def run_batch(
        self, requests: Sequence[classification_pb2.ClassifyRequest]
    ) -> list[classification_pb2.ClassifyResponse]:
        responses = []
        for request in requests:
            compound = float(self.analyzer.polarity_scores(request.text)["compound"])
            scores = self.scores(compound)
            wanted = [label.name.strip() for label in request.labels] or list(LABELS)
            # A subset keeps its labels' share of the scores, renormalised.
            total = sum(scores[label] for label in wanted)
            responses.append(
                ranked_response(((label, scores[label] / total) for label in wanted), self._info)
            )
        return responses

"""What every classification engine answers: its labels' scores, best first."""

from __future__ import annotations

from collections.abc import Iterable

from nlp.v1 import classification_pb2, common_pb2


def ranked_response(
    scores: Iterable[tuple[str, float]], model: common_pb2.ModelInfo
) -> classification_pb2.ClassifyResponse:
    """A response with ``scores`` (label, score) sorted best first; the best is the top
    label (ties keep the given order)."""
    ranked = sorted(scores, key=lambda pair: pair[1], reverse=True)
    return classification_pb2.ClassifyResponse(
        scores=[classification_pb2.LabelScore(label=label, score=score) for label, score in ranked],
        top_label=ranked[0][0],
        model=model,
    )

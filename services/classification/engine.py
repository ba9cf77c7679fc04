"""Zero-shot classification on MiniLM sentence embeddings (int8 ONNX) — no torch.

The text and each label (as a hypothesis sentence, or its description) are
embedded; scores come from cosine similarity: a softmax across labels for
single-label requests, an independent logistic per label for multi-label ones.
Texts longer than the model window are split into overlapping windows whose
embeddings are averaged. Label embeddings are cached, since callers repeat them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydantic import Field

from nlp.v1 import classification_pb2, common_pb2
from services.classification.scores import ranked_response
from services.classification.sentiment import VaderSentiment
from services.classification.supervised import HfSequenceClassifier
from shared.contracts.settings import ModelSpec
from shared.models.minilm import EmbedderParams, MiniLMEmbedder, Vector
from shared.runtime.engines import EngineFactory


class ZeroShotParams(EmbedderParams):
    """Parameters of a ``minilm-zero-shot`` model (its ``params`` in ``NLP_MODELS``)."""

    hypothesis_template: str = Field(
        "This text is about {}.", description="how a label becomes a sentence to compare with"
    )
    temperature: float = Field(
        0.05, gt=0, description="softmax temperature over cosine similarities (single-label)"
    )
    multi_label_threshold: float = Field(
        0.05, description="cosine similarity that maps to 0.5 in multi-label mode"
    )
    label_cache_size: int = Field(4096, gt=0)


class ZeroShotClassifier:
    """Batched zero-shot classification; thread-safe (onnxruntime sessions are). It has
    no labels of its own: each request brings its candidates."""

    labels: tuple[str, ...] = ()
    multi_label = False

    def __init__(self, name: str, spec: ModelSpec) -> None:
        self.params = ZeroShotParams.model_validate(spec.params)
        self.embedder = MiniLMEmbedder(spec.path, self.params)
        self._info = common_pb2.ModelInfo(name=name, version=self.embedder.version)
        self._label_cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def _hypothesis(self, label: classification_pb2.Label) -> str:
        return label.description.strip() or self.params.hypothesis_template.format(
            label.name.strip()
        )

    def _label_vectors(self, hypotheses: Sequence[str]) -> dict[str, Vector]:
        with self._cache_lock:
            found = {h: self._label_cache[h] for h in hypotheses if h in self._label_cache}
            for h in found:
                self._label_cache.move_to_end(h)
        missing = sorted({h for h in hypotheses if h not in found})
        if missing:
            vectors = self.embedder.embed(missing)
            with self._cache_lock:
                for h, v in zip(missing, vectors, strict=True):
                    found[h] = v
                    self._label_cache[h] = v
                while len(self._label_cache) > self.params.label_cache_size:
                    self._label_cache.popitem(last=False)
        return found

    def run_batch(
        self, requests: Sequence[classification_pb2.ClassifyRequest]
    ) -> list[classification_pb2.ClassifyResponse]:
        """Classify many requests with one embedding pass over all their texts."""
        if not requests:
            return []
        texts = self.embedder.embed([r.text for r in requests])
        hypotheses = [[self._hypothesis(label) for label in r.labels] for r in requests]
        label_vectors = self._label_vectors([h for hs in hypotheses for h in hs])
        responses = []
        for request, text_vec, hs in zip(requests, texts, hypotheses, strict=True):
            sims = np.array([float(label_vectors[h] @ text_vec) for h in hs], dtype=np.float64)
            names = [label.name.strip() for label in request.labels]
            responses.append(
                ranked_response(
                    zip(names, self._scores(request.multi_label, sims), strict=True), self._info
                )
            )
        return responses

    def _scores(self, multi_label: bool, sims: npt.NDArray[np.float64]) -> list[float]:
        t = self.params.temperature
        if multi_label:
            probs = 1.0 / (1.0 + np.exp(-(sims - self.params.multi_label_threshold) / t))
        else:
            logits = sims / t
            exp = np.exp(logits - logits.max())
            probs = exp / exp.sum()
        return [float(p) for p in probs]

    def classify(
        self, request: classification_pb2.ClassifyRequest
    ) -> classification_pb2.ClassifyResponse:
        return self.run_batch([request])[0]


FACTORIES: dict[str, EngineFactory] = {
    "minilm-zero-shot": ZeroShotClassifier,
    "vader-sentiment": VaderSentiment,
    "hf-sequence-classification": HfSequenceClassifier,
}

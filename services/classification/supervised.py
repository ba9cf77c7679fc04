"""Fine-tuned classifiers: a Hugging Face sequence-classification model from a local
folder (``hf-sequence-classification``), e.g. sentiment, intent, routing or moderation.

The labels are the model's (``id2label`` in its ``config.json``): a request needs no
candidate labels, and names given keep only those. A model whose config says
``problem_type: multi_label_classification`` scores each label with a sigmoid (requests
set ``multi_label``); any other with a softmax over its labels. A text longer than the
model window is cut into overlapping windows (``stride`` tokens shared) whose logits are
averaged. The windows of a whole batch are sorted by length and run ``batch_size`` at a
time, so a forward pass pads little.

Two runtimes, one tokenization (the folder's ``tokenizer.json``):

- ``onnx``: the folder's ``model.onnx`` (``python -m services.classification.export``
  writes it) on onnxruntime, CPU only. No torch: the classification image serves it,
  and on CPU it is the faster of the two (``python -m bench.supervised``).
- ``torch``: the weights on torch and transformers (the generation extra, the GPU
  image), on CUDA when present unless ``device`` says otherwise.

``auto`` takes ``onnx`` when the folder has ``model.onnx`` and no ``device`` is set.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nlp.v1 import classification_pb2, common_pb2
from services.classification.scores import ranked_response
from shared.contracts.settings import ModelSpec
from shared.models.hf import model_version
from shared.observability.telemetry import count_tokens

ONNX_FILE = "model.onnx"
# A forward pass: (input ids, attention mask), both [batch, tokens] int64 -> logits.
Forward = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float64]]


class HfSequenceClassificationParams(BaseModel):
    """``params`` of an ``hf-sequence-classification`` model."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="onnx: the folder's model.onnx on onnxruntime (CPU); torch: its weights "
        "on torch; auto: onnx when the folder has model.onnx and no device is set",
    )
    batch_size: int = Field(32, gt=0, description="windows per forward pass")
    stride: int | None = Field(
        None, ge=0, description="tokens shared by consecutive windows; default: a quarter of one"
    )
    max_tokens: int | None = Field(
        None, gt=8, description="window length in tokens; default: the model's (at most 512)"
    )
    device: str | None = Field(
        None,
        description='torch device, e.g. "cpu" or "cuda:1"; default: CUDA when available',
    )
    onnx_threads: int = Field(
        0, ge=0, description="onnxruntime's threads per forward pass (0: one per core)"
    )

    @model_validator(mode="after")
    def _runtime_options(self) -> HfSequenceClassificationParams:
        if self.runtime == "onnx" and self.device is not None:
            raise ValueError("device is for the torch runtime; onnx runs on the CPU")
        return self


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


class _Windows:
    """The folder's fast tokenizer, cutting texts into windows of at most ``window``
    tokens (special tokens included), ``stride`` of them shared by neighbours."""

    def __init__(self, name: str, path: Path, params: HfSequenceClassificationParams) -> None:
        tokenizers: Any = importlib.import_module("tokenizers")
        if not (path / "tokenizer.json").is_file():
            raise ValueError(f"model {name!r}: needs tokenizer.json (a fast tokenizer) in {path}")
        config = _read_json(path / "config.json")
        options = _read_json(path / "tokenizer_config.json")
        window = params.max_tokens or int(options.get("model_max_length") or 0)
        if not 8 < window <= 100_000:  # unset: transformers writes a huge sentinel
            window = int(config.get("max_position_embeddings", 512))
        self.window = min(window, 512) if params.max_tokens is None else window
        self.stride = self.window // 4 if params.stride is None else params.stride
        if self.stride >= self.window - 2:
            raise ValueError(f"model {name!r}: stride must be below the window ({self.window})")
        self._tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.window, stride=self.stride)
        pad = options.get("pad_token")
        pad_token = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = self._tokenizer.token_to_id(pad_token) if pad_token else None
        self.pad_id = int(pad_id if pad_id is not None else config.get("pad_token_id") or 0)

    def __call__(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Every text's windows of token ids, and the text each belongs to."""
        ids: list[list[int]] = []
        owners: list[int] = []
        for i, encoding in enumerate(self._tokenizer.encode_batch(list(texts))):
            for window in (encoding, *encoding.overflowing):
                ids.append(list(window.ids))
                owners.append(i)
                count_tokens(len(window.ids))
        return ids, owners


def _onnx_forward(
    name: str, path: Path, params: HfSequenceClassificationParams
) -> tuple[Forward, str]:
    if not (path / ONNX_FILE).is_file():
        raise ValueError(
            f"model {name!r}: runtime onnx needs {ONNX_FILE} in {path} "
            "(python -m services.classification.export writes it)"
        )
    ort: Any = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    if params.onnx_threads:
        options.intra_op_num_threads = params.onnx_threads
    session = ort.InferenceSession(
        str(path / ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )
    inputs = {i.name for i in session.get_inputs()}

    def forward(ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:  # exports that take it (e.g. optimum's)
            feed["token_type_ids"] = np.zeros_like(ids)
        logits = session.run(None, {k: v for k, v in feed.items() if k in inputs})[0]
        return np.asarray(logits, dtype=np.float64)

    return forward, f"onnxruntime=={ort.__version__}"


def _torch_forward(
    name: str, path: Path, params: HfSequenceClassificationParams, labels: tuple[str, ...]
) -> tuple[Forward, str]:
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")
    # local_files_only: a missing file is an error, never a download from the hub.
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, local_files_only=True
    )
    if int(model.config.num_labels) != len(labels):
        raise ValueError(f"model {name!r}: its head has {model.config.num_labels} labels")
    device = params.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()

    def forward(ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        with torch.inference_mode():
            logits = model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
            ).logits
        return np.asarray(logits.float().cpu().numpy(), dtype=np.float64)

    return forward, f"transformers=={transformers.__version__}"


class HfSequenceClassifier:
    """A fine-tuned sequence classifier with labels of its own; thread-safe (one forward
    pass at a time)."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        if spec.path is None:
            raise ValueError(
                f"model {name!r}: engine hf-sequence-classification needs a local 'path'"
            )
        self.params = params = HfSequenceClassificationParams.model_validate(spec.params)
        config = _read_json(spec.path / "config.json")
        id2label = config.get("id2label") or {}
        if not id2label:
            raise ValueError(f"model {name!r}: config.json in {spec.path} names no id2label")
        self.labels: tuple[str, ...] = tuple(str(id2label[str(i)]) for i in range(len(id2label)))
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"model {name!r}: its labels repeat: {self.labels}")
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self._windows = _Windows(name, spec.path, params)
        runtime = params.runtime
        if runtime == "auto":
            onnx = (spec.path / ONNX_FILE).is_file() and params.device is None
            runtime = "onnx" if onnx else "torch"
        if runtime == "onnx":
            self._forward, library = _onnx_forward(name, spec.path, params)
        else:
            self._forward, library = _torch_forward(name, spec.path, params, self.labels)
        self.runtime = runtime
        self._info = common_pb2.ModelInfo(name=name, version=model_version(library, spec.path))
        self._lock = threading.Lock()

    @property
    def info(self) -> common_pb2.ModelInfo:
        return self._info

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """One row of logits per text (averaged over its windows)."""
        ids, owners = self._windows(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        counts = np.zeros(len(texts), dtype=np.float64)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with self._lock:
            for start in range(0, len(order), self.params.batch_size):
                chunk = order[start : start + self.params.batch_size]
                width = max(len(ids[i]) for i in chunk)
                batch = np.full((len(chunk), width), self._windows.pad_id, dtype=np.int64)
                mask = np.zeros((len(chunk), width), dtype=np.int64)
                for row, i in enumerate(chunk):
                    batch[row, : len(ids[i])] = ids[i]
                    mask[row, : len(ids[i])] = 1
                for i, row_logits in zip(chunk, self._forward(batch, mask), strict=True):
                    out[owners[i]] += row_logits
                    counts[owners[i]] += 1
        return out / counts[:, None]

    def run_batch(
        self, requests: Sequence[classification_pb2.ClassifyRequest]
    ) -> list[classification_pb2.ClassifyResponse]:
        if not requests:
            return []
        all_logits = self.logits([r.text for r in requests])
        responses = []
        for request, row in zip(requests, all_logits, strict=True):
            wanted = [label.name.strip() for label in request.labels] or list(self.labels)
            picked = np.array([row[self.labels.index(label)] for label in wanted])
            if self.multi_label:
                probs = 1.0 / (1.0 + np.exp(-picked))
            else:  # a subset: the softmax over its labels
                exp = np.exp(picked - picked.max())
                probs = exp / exp.sum()
            responses.append(
                ranked_response(zip(wanted, (float(p) for p in probs), strict=True), self._info)
            )
        return responses

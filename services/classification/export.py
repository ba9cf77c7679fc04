"""Export a fine-tuned sequence classifier to ONNX, for the ``onnx`` runtime of
``hf-sequence-classification`` (the classification image: onnxruntime, no torch).

    python -m services.classification.export MODEL_DIR [--out DIR] [--opset 17]

Writes ``model.onnx`` with the folder's config and tokenizer files to ``--out`` (default:
into ``MODEL_DIR``), then runs the same windows through torch and the exported graph and
prints their largest logit difference; exit status 1 when it is over ``--tolerance``.
Needs the ``export`` extra (torch, transformers, onnx), which ``make setup`` installs.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from services.classification.supervised import ONNX_FILE, HfSequenceClassifier
from shared.contracts.settings import ModelSpec

# What the onnx runtime reads besides the graph (the others come along when present).
FOLDER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SAMPLE = (
    "The refund was late and support never answered. " * 40,
    "Great, fast and helpful.",
    "Cafe\u0301 ☕ 東京",
)


def export(source: Path, out: Path | None = None, opset: int = 17) -> Path:
    """Write ``model.onnx`` (and the files it is read with) for the model at ``source``;
    returns the folder it is in. Batch size and sequence length stay dynamic."""
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")
    out = out or source
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != source.resolve():
        for name in FOLDER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        source, local_files_only=True
    ).eval()
    ids = torch.ones((2, 8), dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on transformers' Python branches
        # The TorchScript exporter: the dynamo one needs onnxscript, and this graph is
        # plain (no data-dependent control flow once traced).
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(out / ONNX_FILE),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "logits": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    return out


def largest_difference(torch_folder: Path, onnx_folder: Path) -> float:
    """The largest logit difference between the two runtimes on the same sample texts."""
    engines = [
        HfSequenceClassifier(
            "check",
            ModelSpec(engine="hf-sequence-classification", path=folder, params=params),
        )
        for folder, params in (
            (torch_folder, {"runtime": "torch", "device": "cpu"}),
            (onnx_folder, {"runtime": "onnx"}),
        )
    ]
    a, b = (engine.logits(SAMPLE) for engine in engines)
    return float(np.abs(a - b).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.classification.export")
    parser.add_argument("model", type=Path, help="a Hugging Face sequence-classification folder")
    parser.add_argument("--out", type=Path, help="folder to write (default: the model's)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args(argv)
    out = export(args.model, args.out, args.opset)
    difference = largest_difference(args.model, out)
    print(f"wrote {out / ONNX_FILE}; largest logit difference from torch: {difference:.2e}")
    return 0 if difference <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

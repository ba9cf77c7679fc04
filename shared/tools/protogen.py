"""Generate the Python API code from ``protos/`` into ``gen/python``.

``python -m shared.tools.protogen`` rewrites the generated tree; ``--check`` only
compares and exits non-zero when the checked-in code is stale, which CI runs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "gen" / "python"


def _generate(out: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # mypy-protobuf's plugin types the gRPC stubs (*_pb2_grpc.pyi).
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Packages need __init__.py so they install and import like any other code.
    for directory in [p for p in out.rglob("*") if p.is_dir()]:
        (directory / "__init__.py").touch()


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/python is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        _generate(fresh)
        new, old = _tree(fresh), _tree(OUT_ROOT) if OUT_ROOT.exists() else {}
        stale = sorted(
            name
            for name in new.keys() | old.keys()
            if name not in new or name not in old or not filecmp.cmp(new[name], old[name], False)
        )
        if args.check:
            if stale:
                print("generated code is stale; run `make protos`:", *stale, sep="\n  ")
                return 1
            return 0
        if OUT_ROOT.exists():
            shutil.rmtree(OUT_ROOT)
        shutil.copytree(fresh, OUT_ROOT)
        print(f"generated {len(new)} files under {OUT_ROOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

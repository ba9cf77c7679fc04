"""The offline tools that check the deployment artefacts, fetched once from the Go module
proxy and cached outside the clone (``~/.cache/nlp-platform``, Go's module cache):

- ``kustomize`` (built from ``sigs.k8s.io/kustomize/kustomize/v5``): renders the overlays;
- KEDA's CRDs (module ``github.com/kedacore/keda/v2``): the ScaledObject schema;
- the Compose specification's JSON schema (module ``github.com/compose-spec/compose-go/v2``).

    python -m deploy.tools fetch      # what `make setup` runs
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

KUSTOMIZE_VERSION = "v5.7.1"
KEDA_VERSION = "v2.16.1"
COMPOSE_GO_VERSION = "v2.4.8"

CACHE = Path.home() / ".cache" / "nlp-platform"
BIN = CACHE / "bin"


class ToolError(RuntimeError):
    """A tool could not be fetched (no Go, or the module proxy refused)."""


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise ToolError("the Go toolchain is needed to fetch kustomize and the schemas")
    return go


def _env() -> dict[str, str]:
    # -mod=mod: outside any module; the proxy is whatever GOPROXY says (the default one).
    return {**os.environ, "GOFLAGS": "-mod=mod", "GOBIN": str(BIN)}


def kustomize() -> Path:
    """Path of the kustomize binary, built on first use."""
    path = BIN / "kustomize"
    marker = BIN / f".kustomize-{KUSTOMIZE_VERSION}"
    if not (path.exists() and marker.exists()):
        BIN.mkdir(parents=True, exist_ok=True)
        module = f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"
        done = subprocess.run(
            [_go(), "install", module], env=_env(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise ToolError(f"go install {module} failed:\n{done.stderr[-2000:]}")
        marker.touch()
    return path


def _module_dir(module: str, version: str) -> Path:
    done = subprocess.run(
        [_go(), "mod", "download", "-json", f"{module}@{version}"],
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ToolError(f"go mod download {module}@{version} failed:\n{done.stdout}{done.stderr}")
    return Path(json.loads(done.stdout)["Dir"])


def keda_crds() -> Path:
    """Directory of KEDA's CRD manifests (``keda.sh_scaledobjects.yaml``, …)."""
    return _module_dir("github.com/kedacore/keda/v2", KEDA_VERSION) / "config" / "crd" / "bases"


def compose_schema() -> Path:
    """The Compose specification's JSON schema."""
    module = "github.com/compose-spec/compose-go/v2"
    return _module_dir(module, COMPOSE_GO_VERSION) / "schema" / "compose-spec.json"


def render(overlay: Path) -> str:
    """``kustomize build`` of a kustomization directory."""
    done = subprocess.run(
        [str(kustomize()), "build", str(overlay)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ToolError(f"kustomize build {overlay} failed:\n{done.stderr}")
    return done.stdout


def fetch_command(argv: list[str] | None, doc: str | None, *fetchers: Callable[[], Path]) -> int:
    """``python -m <module> fetch``: run each fetcher, print what it fetched (its usage,
    exit status 2, for anything else; 1 when a fetch fails)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print(doc)
        return 2
    try:
        for fetch in fetchers:
            print(fetch())
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return fetch_command(argv, __doc__, kustomize, keda_crds, compose_schema)


if __name__ == "__main__":
    sys.exit(main())

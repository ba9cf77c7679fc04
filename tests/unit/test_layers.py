"""The library's layers import one way only (see ``shared/__init__.py``).

Parsed with ``ast`` rather than imported, so a violation is reported as the file and
line that has it, including imports inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each subpackage (or service folder) may import from shared, besides itself.
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "observability": {"contracts"},
    "transport": {"contracts", "observability"},
    "models": {"contracts", "observability"},
    "runtime": {"contracts", "observability", "transport", "models"},
    "client": {"contracts", "observability"},
    "tools": {"contracts", "observability", "transport", "models", "runtime"},
    "gateway": {"contracts", "observability", "transport"},
    "worker kinds": {"contracts", "observability", "transport", "models", "runtime"},
}
# Nothing in the library may import a service.
FORBIDDEN_EVERYWHERE_IN_SHARED = ("services", "deploy", "bench", "tests")


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "shared":
        return rel[1]
    return "gateway" if rel[1] == "gateway" else "worker kinds"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "shared":
                found += [(node.lineno, f"shared.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _files() -> list[Path]:
    shared = [p for p in (ROOT / "shared").rglob("*.py") if p.parent != ROOT / "shared"]
    return sorted(shared + list((ROOT / "services").rglob("*.py")))


def violations(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        layer = _layer(path)
        in_shared = path.relative_to(ROOT).parts[0] == "shared"
        for line, module in _imports(path):
            top, _, rest = module.partition(".")
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if top == "shared":
                target = rest.split(".")[0]
                if target != layer and target not in ALLOWED[layer]:
                    out.append(f"{where} ({layer} may not import {target})")
            elif in_shared and top in FORBIDDEN_EVERYWHERE_IN_SHARED:
                out.append(f"{where} (the library may not import {top})")
    return out


def test_every_module_belongs_to_a_known_layer() -> None:
    assert {_layer(p) for p in _files()} <= set(ALLOWED)
    loose = [p.name for p in (ROOT / "shared").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "every library module lives in a subpackage"


def test_imports_only_go_down() -> None:
    assert violations(_files()) == []


@pytest.mark.parametrize(
    ("layer_file", "source", "bad"),
    [
        ("shared/contracts/x.py", "from shared.transport.kafka import AsyncProducer", True),
        ("shared/client/x.py", "import shared.runtime.worker", True),
        ("shared/client/x.py", "from shared import transport", True),
        ("shared/client/x.py", "from shared.contracts import names", False),
        ("shared/transport/x.py", "def f():\n    from shared.runtime import intake", True),
        ("shared/models/x.py", "from services.ner import engine", True),
        ("services/gateway/x.py", "from shared.runtime.worker import main", True),
        ("services/ner/x.py", "from shared.runtime.worker import main", False),
    ],
)
def test_the_check_catches_an_upward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer_file: str, source: str, bad: bool
) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    path = tmp_path / layer_file
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert bool(violations([path])) is bad

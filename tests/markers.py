"""Markers by directory: every test under tests/unit is ``unit``, under tests/deploy
``deploy`` and under tests/integration ``integration`` (tests/conftest.py applies them at
collection, so no module has to remember its ``pytestmark``).

``pytest -m "not integration" tests`` therefore runs exactly the unit and deploy tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import pytest

TESTS = Path(__file__).resolve().parent

# The directories under tests/ whose tests get a marker of the directory's name
# (registered in pyproject.toml).
MARKED = frozenset({"unit", "deploy", "integration"})


class Markable(Protocol):
    """What of a collected item the marking needs (a ``pytest.Item`` has both)."""

    @property
    def path(self) -> Path: ...

    def add_marker(self, marker: str | pytest.MarkDecorator, append: bool = True) -> None: ...


def marker_for(path: Path) -> str | None:
    """The marker of a test file by its directory under tests/ (None outside them)."""
    try:
        relative = path.resolve().relative_to(TESTS)
    except ValueError:
        return None
    if len(relative.parts) < 2:  # a file directly in tests/
        return None
    return relative.parts[0] if relative.parts[0] in MARKED else None


def mark_by_directory(items: Iterable[Markable]) -> None:
    """Add its directory's marker to each item (see ``marker_for``)."""
    for item in items:
        name = marker_for(item.path)
        if name is not None:
            item.add_marker(name)

"""Markers come from the directory (tests/markers.py): no integration module can be left
out of ``-m "not integration"`` by forgetting a ``pytestmark``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.markers import TESTS, mark_by_directory, marker_for


@dataclass
class FakeItem:
    path: Path
    markers: list[str] = field(default_factory=list)

    def add_marker(self, marker: str | pytest.MarkDecorator, append: bool = True) -> None:
        self.markers.append(marker if isinstance(marker, str) else marker.name)


def marked(*paths: Path) -> list[list[str]]:
    items = [FakeItem(p) for p in paths]
    mark_by_directory(items)
    return [item.markers for item in items]


@pytest.mark.parametrize("directory", ["unit", "deploy", "integration"])
def test_every_test_module_gets_the_marker_of_its_directory(directory: str) -> None:
    modules = sorted((TESTS / directory).glob("**/test_*.py"))
    assert modules, f"no test modules under tests/{directory}"
    assert marked(*modules) == [[directory]] * len(modules)


def test_every_integration_module_is_marked_integration() -> None:
    # Also a module that does not exist yet, in a sub-folder.
    modules = [*sorted((TESTS / "integration").glob("**/*.py"))]
    modules.append(TESTS / "integration" / "new" / "test_later.py")
    for module in modules:
        assert marker_for(module) == "integration", module


def test_files_outside_the_three_directories_get_no_marker(tmp_path: Path) -> None:
    assert marker_for(TESTS / "conftest.py") is None
    assert marker_for(TESTS / "factories.py") is None
    assert marker_for(TESTS / "other" / "test_x.py") is None
    assert marker_for(tmp_path / "integration" / "test_x.py") is None
    assert marked(tmp_path / "test_x.py") == [[]]


def test_collected_tests_carry_their_marker(request: pytest.FixtureRequest) -> None:
    # This very test, as collected by tests/conftest.py.
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None

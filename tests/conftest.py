"""Applied to the whole suite: markers by directory (tests/markers.py).

Fixtures stay next to the tests that use them: the real stack's (Kafka, Redis, the
services) in tests/integration/conftest.py.
"""

from __future__ import annotations

import pytest

from tests.markers import mark_by_directory


# First, so that ``-m`` (the mark plugin's own hook) already sees the markers.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_by_directory(items)

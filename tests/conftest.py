"""Test configuration: fixture plugins by component, markers by directory.

tests/unit/ starts nothing and is marked ``unit``; tests/integration/ uses real
PostgreSQL servers and real service processes and is marked ``integration``.  The
default command runs both; ``-m unit`` or ``-m integration`` selects one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.dirs",
    "tests.fixtures.postgres",
    "tests.fixtures.stack",
    "tests.fixtures.proxy",
    "tests.fixtures.remote",
    "tests.fixtures.waldump",
]

TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).relative_to(TESTS_DIR)
        if rel.parts[0] == "unit":
            item.add_marker(pytest.mark.unit)
        elif rel.parts[0] == "integration":
            item.add_marker(pytest.mark.integration)

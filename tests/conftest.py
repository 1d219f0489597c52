"""Test configuration: fixture plugins by component, markers by directory.

tests/unit/ starts nothing and is marked ``unit``; tests/integration/ uses real
PostgreSQL servers and real service processes and is marked ``integration``.  The
default command runs both; ``-m unit`` or ``-m integration`` selects one.

Tests marked ``regression_suite`` (PostgreSQL's regression suite streamed into pagestore:
minutes each) run only when asked for: ``-m regression_suite``, their file or node id
named on the command line, or ``--with-regression-suite`` (everything else too).
scripts/test, CI's command, runs the whole suite that way.

Under pytest-xdist (``-n``) the tests marked ``slow`` or ``regression_suite`` come first
in the collection, so that ``--dist load --maxschedchunk 1`` (scripts/test), which hands
tests out in collection order as workers free up, starts the longest ones early instead
of leaving one of them to run alone at the end.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--with-regression-suite", action="store_true",
                     help="also run the tests marked regression_suite (minutes each)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).relative_to(TESTS_DIR)
        if rel.parts[0] == "unit":
            item.add_marker(pytest.mark.unit)
        elif rel.parts[0] == "integration":
            item.add_marker(pytest.mark.integration)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the long tests first
        items.sort(key=lambda item: not (item.get_closest_marker("slow")
                                         or item.get_closest_marker("regression_suite")))
    if "regression_suite" in (config.option.markexpr or "") or config.getoption(
            "--with-regression-suite"):
        return
    named = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    keep, drop = [], []
    for item in items:
        if item.get_closest_marker("regression_suite") is None or Path(str(item.fspath)) in named:
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ---------------------------------------------------------------- WAL record coverage
_WAL_COVERAGE = pytest.StashKey[Counter[str]]()


@pytest.fixture
def wal_coverage(request: pytest.FixtureRequest) -> Counter[str]:
    """Record kinds ("Heap/INSERT") the workloads of this session produced, from
    `pagestore redo-check` output; the summary at the end of the run lists them and the
    PostgreSQL 15 record types that never appeared."""
    return request.config.stash.setdefault(_WAL_COVERAGE, Counter())


def record_redo_check_coverage(coverage: Counter[str], redo_check_output: str) -> None:
    for kind, n in re.findall(r"^\s+seen\s+(\S+) (\d+)$", redo_check_output, re.MULTILINE):
        coverage[kind] += int(n)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    coverage = config.stash.get(_WAL_COVERAGE, None)
    if not coverage:
        return
    from pagestore.pg.rmgr import ALL_RECORD_KINDS

    never = [kind for kind in ALL_RECORD_KINDS if kind not in coverage]
    terminalreporter.section("WAL record types the workloads exercised")
    terminalreporter.write_line(f"{len(set(coverage) & set(ALL_RECORD_KINDS))} of "
                                f"{len(ALL_RECORD_KINDS)} PostgreSQL 15 record types:")
    for kind, n in sorted(coverage.items()):
        terminalreporter.write_line(f"  {kind:<34} {n}")
    terminalreporter.write_line(f"never appeared: {', '.join(never) or 'none'}")

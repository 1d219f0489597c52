from __future__ import annotations

import pytest

from gateway.session import CommandError, run_command
from pagestore.pg import wire


def test_set_is_a_noop() -> None:
    assert run_command("SET datestyle TO iso") == wire.command_complete("SELECT 1")


@pytest.mark.parametrize(("query", "match"), [
    ("hello", "cannot parse query"),
    ("   ", "cannot parse query"),
    ("drop table x", "unsupported command: drop"),
])
def test_refused_commands(query: str, match: str) -> None:
    with pytest.raises(CommandError, match=match):
        run_command(query)

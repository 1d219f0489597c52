"""Failpoints (pagestore.failpoints): configuration, each action, counts and the env var."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from pagestore import failpoints
from pagestore.errors import ConfigError
from pagestore.failpoints import FailpointError

NAME = "ingest-flush-start"


@pytest.fixture(autouse=True)
def _clear() -> None:
    yield
    for name in failpoints.FAILPOINTS:
        failpoints.configure(name, "off")


def test_off_does_nothing_and_counts_nothing() -> None:
    before = failpoints.hits(NAME)
    failpoints.check(NAME)
    assert failpoints.hits(NAME) == before and failpoints.active() == {}


def test_return_raises_every_time_until_off() -> None:
    failpoints.configure(NAME, "return")
    before = failpoints.hits(NAME)
    for _ in range(3):
        with pytest.raises(FailpointError, match=NAME):
            failpoints.check(NAME)
    assert failpoints.hits(NAME) == before + 3
    failpoints.configure(NAME, "off")
    failpoints.check(NAME)


def test_count_prefix_limits_the_hits() -> None:
    failpoints.configure(NAME, "2*return")
    assert failpoints.active() == {NAME: "2*return"}
    for _ in range(2):
        with pytest.raises(FailpointError):
            failpoints.check(NAME)
    failpoints.check(NAME)  # the third passes
    assert failpoints.active() == {}


def test_sleep_waits() -> None:
    failpoints.configure(NAME, "1*sleep(200)")
    t = time.monotonic()
    failpoints.check(NAME)
    assert time.monotonic() - t >= 0.2


def test_pause_holds_until_reconfigured() -> None:
    failpoints.configure(NAME, "pause")
    passed = threading.Event()
    worker = threading.Thread(target=lambda: (failpoints.check(NAME), passed.set()))
    worker.start()
    assert not passed.wait(0.3)  # held
    failpoints.configure(NAME, "off")
    assert passed.wait(10)
    worker.join()


def test_a_counted_pause_is_released_by_configuring_it_again() -> None:
    failpoints.configure(NAME, "1*pause")
    passed = threading.Event()
    worker = threading.Thread(target=lambda: (failpoints.check(NAME), passed.set()))
    worker.start()
    assert not passed.wait(0.3)
    assert failpoints.active() == {}  # its one hit is used: no longer armed, still paused
    failpoints.configure(NAME, "off")
    assert passed.wait(10)
    worker.join()


def test_async_pause_leaves_the_loop_running() -> None:
    async def run() -> None:
        failpoints.configure(NAME, "pause")
        paused = asyncio.create_task(failpoints.acheck(NAME))
        ticks = 0
        while failpoints.hits(NAME) == 0 or ticks < 5:  # the loop keeps turning
            await asyncio.sleep(0.01)
            ticks += 1
        assert not paused.done()
        failpoints.release_paused()
        await asyncio.wait_for(paused, 10)

    asyncio.run(run())


def test_kill_kills_the_process() -> None:
    code = ("from pagestore import failpoints; failpoints.configure('redo-apply', 'kill'); "
            "failpoints.check('redo-apply'); print('survived')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9 and "survived" not in proc.stdout


@pytest.mark.parametrize(("name", "action", "match"), [
    ("no-such-failpoint", "return", "unknown failpoint 'no-such-failpoint'"),
    (NAME, "explode", "invalid action 'explode'"),
    (NAME, "sleep(abc)", "invalid action"),
])
def test_bad_configuration_names_the_problem(name: str, action: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        failpoints.configure(name, action)


def test_environment_variable() -> None:
    failpoints.configure_from_env({failpoints.ENV_VAR: f" {NAME}=1*return ; redo-apply=sleep(5)"})
    assert failpoints.active() == {NAME: "1*return", "redo-apply": "sleep(5)"}
    with pytest.raises(ConfigError, match="expected name=action"):
        failpoints.configure_from_env({failpoints.ENV_VAR: "just-a-name"})

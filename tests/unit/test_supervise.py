"""Supervised loops (pagestore.supervise) and LSN waiters (pagestore.waiting)."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from pagestore.errors import Unavailable
from pagestore.lsn import Lsn
from pagestore.supervise import LoopState, SupervisedLoop
from pagestore.waiting import LsnWaiter


def test_a_failing_body_is_restarted_with_backoff_and_its_error_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []

    async def body(loop: SupervisedLoop) -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) <= 3:
            raise KeyError("bug")
        loop.detail = "working"
        await loop.wait_stop_requested()

    async def run() -> SupervisedLoop:
        loop = SupervisedLoop("test", "worker", body, tenant="t1", timeline="tl1",
                              backoff_start=0.05, backoff_max=0.2).start()
        while len(runs) < 4:
            await asyncio.sleep(0.01)
        st = loop.status()
        assert (st.state, st.detail, st.restarts) == ("running", "working", 3)
        assert st.last_error == "KeyError: 'bug'" and st.last_error_at > 0
        await loop.stop(grace=5)
        assert loop.state is LoopState.STOPPED and loop.done
        return loop

    with caplog.at_level(logging.WARNING, logger="pagestore.supervise"):
        asyncio.run(run())
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # doubling
    # Each failure is one log line; a traceback only the first time an error repeats.
    lines = [r for r in caplog.records if "worker loop failed" in r.getMessage()]
    assert len(lines) == 3
    assert lines[0].exc_info is not None and all(r.exc_info is None for r in lines[1:])
    assert "again (3 failures)" in lines[2].getMessage()


def test_expected_errors_have_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def body(loop: SupervisedLoop) -> None:
        raise Unavailable("peer down")

    async def run() -> None:
        loop = SupervisedLoop("test", "worker", body, backoff_start=0.01).start()
        while loop.restarts < 2:
            await asyncio.sleep(0.01)
        await loop.stop()

    with caplog.at_level(logging.WARNING, logger="pagestore.supervise"):
        asyncio.run(run())
    lines = [r for r in caplog.records if "worker loop failed" in r.getMessage()]
    assert lines and all(r.exc_info is None and r.levelno == logging.WARNING for r in lines)
    assert "failed again" in lines[1].getMessage()


def test_return_finishes_unless_restart_on_return() -> None:
    async def run() -> None:
        calls = 0

        async def body(loop: SupervisedLoop) -> None:
            nonlocal calls
            calls += 1

        once = SupervisedLoop("test", "once", body).start()
        await once.wait()
        assert once.state is LoopState.FINISHED and calls == 1

        again = SupervisedLoop("test", "again", body, restart_on_return=True,
                               backoff_start=0.01).start()
        while calls < 4:
            await asyncio.sleep(0.01)
        await again.stop()

        async def finishing(loop: SupervisedLoop) -> None:
            loop.finish()

        done = SupervisedLoop("test", "done", finishing, restart_on_return=True).start()
        await done.wait()
        assert done.state is LoopState.FINISHED

    asyncio.run(run())


def test_stop_cancels_a_body_that_does_not_end() -> None:
    async def run() -> None:
        async def stubborn(loop: SupervisedLoop) -> None:
            await asyncio.sleep(3600)

        loop = SupervisedLoop("test", "stubborn", stubborn).start()
        await asyncio.sleep(0.01)
        await asyncio.wait_for(loop.stop(grace=0.05), 5)
        assert loop.done and loop.state is LoopState.STOPPED

    asyncio.run(run())


def test_lsn_waiter_wakes_exactly_the_reached_targets() -> None:
    async def run() -> None:
        w = LsnWaiter(Lsn(0x100))
        assert await w.wait(0x100, 0)  # already there
        near = asyncio.create_task(w.wait(0x200, 60))
        far = asyncio.create_task(w.wait(0x300, 60))
        await asyncio.sleep(0.01)
        assert w.waiting == 2 and not near.done() and not far.done()
        w.advance(Lsn(0x250))
        assert await asyncio.wait_for(near, 5) is True
        await asyncio.sleep(0.01)
        assert not far.done() and w.waiting == 1
        w.advance(Lsn(0x200))  # backwards: ignored
        assert w.lsn == 0x250
        w.advance(Lsn(0x300))
        assert await asyncio.wait_for(far, 5) is True

    asyncio.run(run())


def test_lsn_waiter_timeout_leaves_nothing_behind() -> None:
    async def run() -> None:
        w = LsnWaiter()
        assert await w.wait(0x1000, 0.01) is False
        assert w.waiting == 0
        task = asyncio.create_task(w.wait(0x1000, 60))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert w.waiting == 0

    asyncio.run(run())


def test_log_lines_carry_the_context_ids_once() -> None:
    import io

    from pagestore.logs import ContextFilter, OneLineFormatter, tenant_var, timeline_var

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("test"))
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("test.context")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        t1, t2 = tenant_var.set("t1"), timeline_var.set("tl1")
        logger.warning("flushed layer %s", "x")
        logger.warning("timeline loaded tenant=%s timeline=%s", "t1", "tl1")
        tenant_var.reset(t1)
        timeline_var.reset(t2)
    finally:
        logger.removeHandler(handler)
    first, second = out.getvalue().splitlines()
    assert first.endswith("flushed layer x tenant=t1 timeline=tl1")
    assert second.endswith("timeline loaded tenant=t1 timeline=tl1")

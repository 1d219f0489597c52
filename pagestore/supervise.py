"""Supervised background loops: every long-running task of a service runs under one.

A ``SupervisedLoop`` runs its body (a coroutine function taking the loop) in a task and
keeps it running for the life of the process:

- the body may fail with anything: the loop catches it, logs it once (one line, with the
  tenant and timeline it works for; a traceback only for errors that are not
  PagestoreErrors, which are bugs), records it as ``last_error``, waits (backoff doubling
  from ``backoff_start`` to ``backoff_max``, reset once the body has run for
  ``healthy_after`` seconds without failing) and runs the body again;
- a body that returns is done (state ``finished``) unless ``restart_on_return``, when it
  is run again after ``backoff_start`` (e.g. a stream the peer ended);
- ``stop()`` asks the body to end (``stopping`` turns true, ``sleep`` returns early) and
  cancels it if it does not end within the grace given;
- ``status()`` says what the loop is doing: its state, the body's own ``detail`` line
  ("streaming", "idle", ...), restarts and the last error.  Services report it through
  their status RPCs, and `pagestore timeline status` shows it.

The tenant and timeline are set in the task's logging context (pagestore.logs), so every
line the body logs carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagestore.errors import PagestoreError
from pagestore.logs import request_var, tenant_var, timeline_var

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 30.0


class LoopState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"    # failed; waiting before the next run
    STOPPED = "stopped"    # stop() was called
    FINISHED = "finished"  # the body returned (and is not restarted)


@dataclass(frozen=True, slots=True)
class LoopStatus:
    service: str
    name: str
    state: str
    detail: str
    restarts: int
    last_error: str
    last_error_at: float  # Unix time; 0: none


def describe(err: BaseException) -> str:
    if isinstance(err, PagestoreError):
        return f"{type(err).__name__}: {err.message}"
    return f"{type(err).__name__}: {err}"


class SupervisedLoop:
    def __init__(self, service: str, name: str,
                 body: Callable[[SupervisedLoop], Awaitable[None]], *,
                 tenant: object = None, timeline: object = None,
                 restart_on_return: bool = False, backoff_start: float = BACKOFF_START,
                 backoff_max: float = BACKOFF_MAX, healthy_after: float = HEALTHY_AFTER) -> None:
        self.service = service
        self.name = name
        self._body = body
        self.tenant = tenant
        self.timeline = timeline
        self.restart_on_return = restart_on_return
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.state = LoopState.STARTING
        self.detail = ""
        self.restarts = 0
        self.last_error = ""
        self.last_error_at = 0.0
        self._stop = asyncio.Event()
        self._finish = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> SupervisedLoop:
        assert self._task is None, f"loop {self.name} started twice"
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-{self.timeline or ''}")
        return self

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stop_requested(self) -> None:
        await self._stop.wait()

    def finish(self) -> None:
        """Called by the body: when it returns, the loop ends (no restart)."""
        self._finish = True

    async def stop(self, grace: float = 0.0) -> None:
        """Ask the body to end; cancel it after ``grace`` seconds."""
        self._stop.set()
        task = self._task
        if task is None or task.done():
            self.state = LoopState.STOPPED
            return
        done, _ = await asyncio.wait({task}, timeout=grace) if grace > 0 else (set(), set())
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.state = LoopState.STOPPED

    async def wait(self) -> None:
        """Until the loop's task has ended (finished or stopped)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stop is requested; True if stop was requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    def note_error(self, err: BaseException | str) -> None:
        """Record an error the body handled itself (it goes on; no restart)."""
        self.last_error = err if isinstance(err, str) else describe(err)
        self.last_error_at = time.time()

    def status(self) -> LoopStatus:
        return LoopStatus(self.service, self.name, str(self.state), self.detail, self.restarts,
                          self.last_error, self.last_error_at)

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        request_var.set(None)  # the task inherited the context of whoever started it
        if self.tenant is not None:
            tenant_var.set(str(self.tenant))
        if self.timeline is not None:
            timeline_var.set(str(self.timeline))
        backoff = self.backoff_start
        while not self._stop.is_set():
            self.state = LoopState.RUNNING
            started = time.monotonic()
            try:
                await self._body(self)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # everything: the loop must outlive its body
                if time.monotonic() - started >= self.healthy_after:
                    backoff = self.backoff_start
                self.restarts += 1
                repeated = describe(e) == self.last_error
                self.note_error(e)
                if self._stop.is_set():
                    log.warning("%s loop failed while stopping: %s", self.name, describe(e))
                    break
                if repeated:
                    log.warning("%s loop failed again (%d failures): %s; restarting in %.1fs",
                                self.name, self.restarts, describe(e), backoff)
                elif isinstance(e, PagestoreError):
                    log.warning("%s loop failed: %s; restarting in %.1fs", self.name,
                                describe(e), backoff)
                else:
                    log.exception("%s loop failed unexpectedly; restarting in %.1fs",
                                  self.name, backoff)
                self.state = LoopState.BACKOFF
                if await self.sleep(backoff):
                    break
                backoff = min(backoff * 2, self.backoff_max)
                continue
            if self._finish or not self.restart_on_return or self._stop.is_set():
                self.state = LoopState.FINISHED if not self._stop.is_set() else LoopState.STOPPED
                return
            backoff = self.backoff_start
            self.state = LoopState.BACKOFF
            if await self.sleep(self.backoff_start):
                break
        self.state = LoopState.STOPPED

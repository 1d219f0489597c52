"""Failpoints: named places in the code where a test (or an operator reproducing a bug)
makes a fault happen on purpose, in the manner of Neon's use of the ``fail`` crate.

A failpoint is off unless configured.  Configure them

- at process start, with the environment variable ``PAGESTORE_FAILPOINTS``:
  ``name=action;name=action`` (`pagestore start` passes its own environment on to the
  services it starts);
- at run time, through the ``pagestore.v1.Admin`` gRPC service every service serves:
  ``pagestore failpoint SERVICE NAME ACTION`` (``off`` to clear).

Actions (the fail crate's spelling):

    off          nothing happens
    return       raise FailpointError at the point (an unexpected error, as a bug would)
    kill         the process dies at once with SIGKILL (no cleanup, as kill -9)
    sleep(MS)    wait MS milliseconds (asyncio.sleep at an async point)
    pause        wait until the failpoint is configured again
    N*ACTION     only the next N hits do ACTION; then the failpoint is off

Only the names in ``FAILPOINTS`` exist; configuring another is a ConfigError naming the
known ones, so a typo in a test cannot silently test nothing.  ``hits(name)`` counts the
times a failpoint fired, so a test can wait for the fault to have happened.

Rules: a failpoint that is off costs one dict lookup of an empty dict; ``check`` is for
threads and synchronous code, ``acheck`` for coroutines (its sleep and pause do not
block the event loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

from pagestore.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR = "PAGESTORE_FAILPOINTS"

#: Every failpoint, with where it is.  Documented in docs/operations.md.
FAILPOINTS: dict[str, str] = {
    "ingest-flush-start": "ingest: at the start of a layer flush, before the file is written",
    "ingest-flush-after-write": "ingest: after a layer file is written and linked, before "
                                "its catalog row is committed",
    "ingest-flush-after-commit": "ingest: after the catalog commit of a flush, before the "
                                 "flusher's in-memory state follows",
    "ingest-receiver-record": "ingest: in the WAL receiver, before each batch of WAL is decoded",
    "ingest-subscribe-snapshot": "ingest: in SubscribeWal, before the recent-WAL snapshot",
    "pageread-tail-batch": "pageread: in the tail follower, before each batch is added",
    "pageread-notify-reload": "pageread: in the layer listener, before it reloads a layer "
                              "map on a catalog notification",
    "redo-apply": "redo: before each redo request is applied",
    "redo-worker-batch": "redo: in a redo worker process, before it redoes a slice of a "
                         "batch (configured from PAGESTORE_FAILPOINTS when the worker starts)",
    "housekeeping-compact-partition": "housekeeping: between the L1 files of a compaction",
    "housekeeping-image-partition": "housekeeping: before each image layer is written",
    "housekeeping-before-swap": "housekeeping: after a job's files are written, before the "
                                "catalog swap",
    "housekeeping-after-swap": "housekeeping: after the catalog swap, before the replaced "
                               "files are unlinked",
    "housekeeping-gc-before-commit": "housekeeping: in GC, before the cutoff and removals "
                                     "are committed",
    "remote-upload": "any service: each put to remote storage fails (RemoteStorageError) "
                     "before it is sent",
    "remote-download": "any service: each get or download from remote storage fails "
                       "(RemoteStorageError) before it is sent",
}

_ACTION = re.compile(r"(?:(\d+)\*)?(off|return|kill|pause|sleep\((\d+)\))")


class FailpointError(Exception):
    """Raised by a failpoint configured to ``return``: stands for an unexpected error."""


@dataclass(slots=True)
class _Armed:
    action: str          # return, kill, sleep, pause
    sleep_ms: int = 0
    remaining: int | None = None  # None: every hit
    released: threading.Event | None = None  # for pause


_armed: dict[str, _Armed] = {}
_paused: dict[str, list[threading.Event]] = {}  # hits waiting in a pause, by name
_hits: dict[str, int] = {}
_lock = threading.Lock()


def configure(name: str, action: str) -> None:
    """Set failpoint ``name`` to ``action`` (see the module docstring)."""
    if name not in FAILPOINTS:
        raise ConfigError(f"unknown failpoint {name!r} (known: {', '.join(sorted(FAILPOINTS))})")
    m = _ACTION.fullmatch(action.strip())
    if m is None:
        raise ConfigError(f"failpoint {name}: invalid action {action!r} (expected off, return, "
                          "kill, pause, sleep(MS), optionally prefixed by N*)")
    count, verb, ms = m.group(1), m.group(2), m.group(3)
    if verb.startswith("sleep"):
        verb = "sleep"
    with _lock:
        _armed.pop(name, None)
        if verb != "off" and (count is None or int(count) > 0):
            _armed[name] = _Armed(verb, int(ms or 0), int(count) if count else None,
                                  threading.Event() if verb == "pause" else None)
        paused = _paused.pop(name, [])
    for released in paused:  # configuring a failpoint again lets its paused hits go on
        released.set()
    log.info("failpoint %s set to %s", name, action.strip())


def configure_from_env(environ: dict[str, str] | None = None) -> None:
    """Apply ``PAGESTORE_FAILPOINTS`` (``name=action;...``)."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "")
    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, eq, action = item.partition("=")
        if not eq:
            raise ConfigError(f"{ENV_VAR}: expected name=action, got {item!r}")
        configure(name.strip(), action)


def active() -> dict[str, str]:
    """The configured failpoints and their actions."""
    with _lock:
        return {n: (f"{a.remaining}*" if a.remaining is not None else "")
                + (f"sleep({a.sleep_ms})" if a.action == "sleep" else a.action)
                for n, a in _armed.items()}


def release_paused() -> None:
    """Let every paused failpoint go on (at shutdown: a pause must not hold the process)."""
    with _lock:
        for name in [n for n, a in _armed.items() if a.action == "pause"]:
            del _armed[name]
        paused = [e for events in _paused.values() for e in events]
        _paused.clear()
    for released in paused:
        released.set()


def hits(name: str) -> int:
    return _hits.get(name, 0)


def _take(name: str) -> _Armed | None:
    with _lock:
        armed = _armed.get(name)
        if armed is None:
            return None
        _hits[name] = _hits.get(name, 0) + 1
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                del _armed[name]
        if armed.released is not None:
            _paused.setdefault(name, []).append(armed.released)
    log.warning("failpoint %s hit: %s", name, armed.action)
    if armed.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if armed.action == "return":
        raise FailpointError(f"failpoint {name}")
    return armed


def check(name: str) -> None:
    """A failpoint in synchronous code (or a worker thread)."""
    if not _armed:
        return
    armed = _take(name)
    if armed is None:
        return
    if armed.action == "sleep":
        time.sleep(armed.sleep_ms / 1000)
    elif armed.action == "pause":
        assert armed.released is not None
        armed.released.wait()


async def acheck(name: str) -> None:
    """A failpoint in a coroutine: sleep and pause leave the event loop running."""
    if not _armed:
        return
    armed = _take(name)
    if armed is None:
        return
    if armed.action == "sleep":
        await asyncio.sleep(armed.sleep_ms / 1000)
    elif armed.action == "pause":
        assert armed.released is not None
        await asyncio.to_thread(armed.released.wait)

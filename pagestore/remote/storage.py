"""RemoteStorage: the one small interface every backend implements.

Keys are '/'-separated paths relative to the backend's prefix (``prefix_in_bucket``,
``prefix_in_container``, or the ``local_path`` directory); the backends add the prefix.
Operations:

    put(key, data)            store an object whole (replaces one of the same key)
    put_new(key, data)        store it only if no object of that key exists (False if one
                              does): S3 If-None-Match, Azure overwrite=False, O_EXCL
    put_file(key, path)       the same from a local file, streamed
    get(key, start, end)      the object's bytes, or the byte range [start, end)
    download(key, path)       stream an object into a local file (the caller renames it)
    list(prefix)              every object whose key starts with ``prefix``, sorted by key
    delete(key)               remove an object (a missing one is fine)
    head(key)                 the object's size, or None when it is not there

Every failure is a RemoteStorageError: ``permanent`` for what retrying cannot fix
(credentials refused, no such bucket), RemoteObjectNotFound for a missing object, plain
(transient) for the rest (connection dropped, 5xx, throttling).  ``retrying`` runs an
operation again on transient errors with backoff; the background loops retry anyway.

Failpoints ``remote-upload`` and ``remote-download`` fire in every put/get, so a test can
make the object store fail for a while (``3*return``) without a proxy.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pagestore import failpoints
from pagestore.errors import RemoteStorageError
from pagestore.failpoints import FailpointError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Backoff of ``retrying``: first wait, doubling up to the last.
RETRY_FIRST = 0.2
RETRY_MAX = 5.0


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str   # relative to the backend's prefix
    size: int


class RemoteStorage(abc.ABC):
    """A bucket, a container or a directory holding pagestore's remote objects."""

    kind: str = ""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the objects live, for logs and errors (no credentials)."""

    @abc.abstractmethod
    def check(self) -> None:
        """At start: the bucket/container/directory exists and the credentials work;
        a permanent RemoteStorageError that says which one is wrong otherwise."""

    # The backends implement these; the public methods add failpoints.
    @abc.abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def _put_new(self, key: str, data: bytes) -> bool: ...

    @abc.abstractmethod
    def _put_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def _get(self, key: str, start: int | None, end: int | None) -> bytes: ...

    @abc.abstractmethod
    def _download(self, key: str, path: Path) -> int: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[RemoteObject]: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def head(self, key: str) -> RemoteObject | None: ...

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release connections."""

    # ------------------------------------------------------------------ public
    def put(self, key: str, data: bytes) -> None:
        _failpoint("remote-upload", self, key)
        self._put(key, data)

    def put_new(self, key: str, data: bytes) -> bool:
        """Create the object; False (nothing written) when it exists already."""
        _failpoint("remote-upload", self, key)
        return self._put_new(key, data)

    def put_file(self, key: str, path: Path) -> None:
        _failpoint("remote-upload", self, key)
        self._put_file(key, path)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object, or its bytes [start, end) (both given, start < end)."""
        if (start is None) != (end is None) or (start is not None and end is not None
                                                 and not 0 <= start < end):
            raise ValueError(f"bad byte range [{start}, {end}) for {key}")
        _failpoint("remote-download", self, key)
        data = self._get(key, start, end)
        if start is not None and end is not None and len(data) != end - start:
            raise RemoteStorageError(
                f"{self.describe()}: ranged read of {key} [{start}, {end}) returned "
                f"{len(data)} bytes")
        return data

    def download(self, key: str, path: Path) -> int:
        """Write the object into ``path`` (created or truncated); returns its size."""
        _failpoint("remote-download", self, key)
        return self._download(key, path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def _failpoint(name: str, storage: RemoteStorage, key: str) -> None:
    try:
        failpoints.check(name)
    except FailpointError:
        raise RemoteStorageError(f"{storage.describe()}: {key}: injected failure "
                                 f"(failpoint {name})") from None


def join_prefix(prefix: str, key: str) -> str:
    """``prefix`` (leading '/' dropped, one trailing '/' ensured unless empty) + key."""
    p = prefix.strip("/")
    return f"{p}/{key}" if p else key


def retrying(op: Callable[[], T], what: str, *, attempts: int = 6,
             sleep: Callable[[float], None] = time.sleep,
             on_error: Callable[[RemoteStorageError], None] | None = None) -> T:
    """Run ``op``; on a transient RemoteStorageError wait (backoff) and run it again, up to
    ``attempts`` times in all.  Permanent errors and the last failure propagate.
    ``on_error`` hears of every failure (a status line can show it at once)."""
    delay = RETRY_FIRST
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except RemoteStorageError as e:
            if on_error is not None:
                on_error(e)
            if e.permanent or attempt == attempts:
                raise
            log.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s", what,
                        attempt, attempts, delay, e)
            sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
    raise AssertionError("unreachable")

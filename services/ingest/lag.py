"""IngestLag: how far a timeline's ingest is behind its WAL source, in bytes and seconds.

The source tells its end of WAL in every XLogData and keepalive message (``wal_end``).
Bytes behind = the newest such end minus the position ingest has received and decoded
(the receiver's received_lsn: it decodes what it receives at once).  Seconds behind =
how long the oldest WAL end the source reported and ingest has not reached yet has been
waiting: each reported end is kept with the time it was first seen and dropped once that
position reaches it.  Ends reported within ``SAMPLE_INTERVAL`` of the previous sample
move that sample forward but keep its time (the answer errs high by at most that
interval, and the list stays short).  Caught up: both are 0.
"""

from __future__ import annotations

import collections
import time

#: Seconds within which a newer reported end updates the last sample instead of adding one.
SAMPLE_INTERVAL = 0.05


class IngestLag:
    __slots__ = ("_samples", "source_end")

    def __init__(self) -> None:
        self.source_end = 0
        self._samples: collections.deque[list[float]] = collections.deque()  # [end, seen]

    def reported(self, wal_end: int, now: float | None = None) -> None:
        """The source says its WAL ends at ``wal_end``."""
        if wal_end <= self.source_end:
            return
        self.source_end = wal_end
        now = time.monotonic() if now is None else now
        if self._samples and now - self._samples[-1][1] < SAMPLE_INTERVAL:
            self._samples[-1][0] = wal_end
        else:
            self._samples.append([wal_end, now])

    def bytes_behind(self, position: int) -> int:
        return max(0, self.source_end - position)

    def seconds_behind(self, position: int, now: float | None = None) -> float:
        samples = self._samples
        while samples and samples[0][0] <= position:
            samples.popleft()
        if not samples:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - samples[0][1])

"""LsnWaiter: coroutines waiting for an LSN to reach a target (WaitForLsn, page reads).

One per timeline and LSN that others wait on (ingest's last_record_lsn, pageread's
readable LSN).  ``advance`` is called by whoever moves the LSN, on the event loop, and
wakes exactly the waiters whose target it reached: no polling, no task per wake-up.  The
LSN only moves forward; an older value is ignored.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from pagestore.lsn import Lsn


class LsnWaiter:
    def __init__(self, lsn: Lsn = Lsn.INVALID) -> None:
        self._lsn = Lsn(lsn)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # min-heap by target
        self._seq = itertools.count()

    @property
    def lsn(self) -> Lsn:
        return self._lsn

    @property
    def waiting(self) -> int:
        """Waiters not yet woken."""
        return len(self._waiters)

    def advance(self, lsn: int) -> None:
        if lsn <= self._lsn:
            return
        self._lsn = Lsn(lsn)
        heap = self._waiters
        while heap and heap[0][0] <= lsn:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)

    async def wait(self, target: int, timeout: float) -> bool:
        """Until the LSN is at least ``target``; False if ``timeout`` seconds passed first."""
        if self._lsn >= target:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (int(target), next(self._seq), fut)
        heapq.heappush(self._waiters, entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if not fut.done():
                fut.cancel()
            if entry in self._waiters:  # timed out or cancelled: do not keep it
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
        return True

"""Hand-built WAL records for the redo modules' unit tests: a block reference and a
decoded record over one relation, ending at END (what redo stamps as the page LSN)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from pagestore.keys import RelTag
from pagestore.lsn import Lsn
from pagestore.pg.xlogrecord import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_WILL_INIT,
    BlockReference,
    DecodedRecord,
    XLogRecordHeader,
)
from pagestore.redo.context import RedoContext

REL = RelTag(1663, 5, 16384)
END = Lsn(0x1_0000_2000)
CTX = RedoContext()


def block(block_id: int, blkno: int, data: bytes = b"", *, will_init: bool = False,
          rel: RelTag = REL) -> BlockReference:
    flags = rel.forknum | (BKPBLOCK_HAS_DATA if data else 0) | (
        BKPBLOCK_WILL_INIT if will_init else 0)
    return BlockReference(block_id, rel, blkno, flags, 0, 0, 0, b"", data)


def record(rmid: int, info: int, main: bytes, *blocks: BlockReference,
           xid: int = 0) -> DecodedRecord:
    hdr = XLogRecordHeader(0, xid, 0, info, rmid, 0)
    return DecodedRecord(lsn=Lsn(END - 0x100), end_lsn=END, header=hdr, blocks=tuple(blocks),
                         main_data=main, origin=None, toplevel_xid=None, raw=b"")


def record_of(rmid: int) -> Callable[..., DecodedRecord]:
    """``record`` for one rmgr: record_of(RmgrId.GIN)(info, main, *blocks)."""
    return functools.partial(record, rmid)

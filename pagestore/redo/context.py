"""What every per-rmgr redo routine receives, and the contract it keeps.

A resource manager module (pagestore/redo/heap.py, btree.py, ...) provides

    def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None
    def read_mode(rec: DecodedRecord, block_id: int) -> ReadMode      # optional

``redo_block`` applies to ``page`` exactly what PostgreSQL's redo routine for that
record type does to the buffer of block reference ``block_id`` when
XLogReadBufferForRedo(Extended) returned BLK_NEEDS_REDO (or, for blocks with
BKPBLOCK_WILL_INIT, what it does to the zero-filled buffer of XLogInitBufferForRedo),
including PageSetLSN(page, rec.end_lsn) where PostgreSQL calls it -- and nothing to
other blocks.  The dispatcher (pagestore/redo/apply.py) has already decided that:

- a block with an image to apply (BKPIMAGE_APPLY) is restored from it, not redone;
- a block whose page is missing or new (PageIsNew) is skipped (BLK_NOTFOUND), unless it
  has BKPBLOCK_WILL_INIT or its read mode is ZERO_ON_ERROR;
- a block whose page LSN is at or past the record's end LSN is skipped (BLK_DONE).

A record type the module does not implement raises UnsupportedWalRecord naming the
rmgr and info; a malformed record raises CorruptWalError.  Never guess.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ReadMode(enum.Enum):
    """How PostgreSQL reads the block before redo (ReadBufferMode in bufmgr.h)."""

    NORMAL = "normal"              # RBM_NORMAL: a missing or new page means BLK_NOTFOUND
    ZERO_ON_ERROR = "zero_on_error"  # RBM_ZERO_ON_ERROR: a missing page reads as zeros


@dataclass(frozen=True, slots=True)
class RedoContext:
    """Cluster settings that change what redo writes (from pg_control)."""

    data_checksums: bool = False
    wal_log_hints: bool = False

    @classmethod
    def from_control_file(cls, raw: bytes) -> RedoContext:
        from pagestore.pg.controlfile import ControlFile

        control = ControlFile.parse(raw)
        return cls(data_checksums=control.data_checksums, wal_log_hints=control.wal_log_hints)

    @property
    def hint_bits_logged(self) -> bool:
        """XLogHintBitIsNeeded(): data checksums or wal_log_hints are on."""
        return self.data_checksums or self.wal_log_hints

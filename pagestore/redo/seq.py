"""Sequence redo (src/backend/commands/sequence.c seq_redo): XLOG_SEQ_LOG rebuilds the
page from scratch: PageInit with the sequence magic in the special space, the logged
tuple as item 1, the LSN.  Block 0 is always initialised (XLogInitBufferForRedo)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.redo.bufpage import FIRST_OFFSET_NUMBER, page_add_item, page_init, page_set_lsn

if TYPE_CHECKING:
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

XLOG_SEQ_LOG = 0x00
SEQ_MAGIC = 0x1717
SEQUENCE_MAGIC = struct.Struct("<I")  # sequence_magic: magic u32
XL_SEQ_REC_SIZE = 12  # xl_seq_rec: RelFileNode


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if rec.rmgr_info != XLOG_SEQ_LOG:
        raise UnsupportedWalRecord(f"Sequence record at {rec.lsn} with info {rec.info:#04x}")
    item = rec.main_data[XL_SEQ_REC_SIZE:]
    page_init(page, SEQUENCE_MAGIC.size)
    SEQUENCE_MAGIC.pack_into(page, 8192 - 8, SEQ_MAGIC)  # special space (MAXALIGNed to 8)
    if page_add_item(page, item, FIRST_OFFSET_NUMBER) == 0:
        raise CorruptWalError(f"seq_redo: failed to add item to page (record at {rec.lsn})")
    page_set_lsn(page, rec.end_lsn)

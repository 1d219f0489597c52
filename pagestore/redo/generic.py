"""Generic WAL records (src/backend/access/transam/generic_xlog.c generic_redo): the
block data is a list of (offset u16, length u16, bytes) fragments copied into the page;
then the hole [pd_lower, pd_upper) is zeroed and the LSN set."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pagestore.errors import CorruptWalError
from pagestore.redo.bufpage import page_set_lsn, pd_lower, pd_upper

if TYPE_CHECKING:
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

FRAGMENT = struct.Struct("<HH")  # offset, length


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    blk = rec.block(block_id)
    assert blk is not None
    delta = blk.data
    pos = 0
    while pos < len(delta):
        if pos + FRAGMENT.size > len(delta):
            raise CorruptWalError(f"generic record at {rec.lsn}: truncated fragment header")
        offset, length = FRAGMENT.unpack_from(delta, pos)
        pos += FRAGMENT.size
        if pos + length > len(delta) or offset + length > len(page):
            raise CorruptWalError(f"generic record at {rec.lsn}: fragment out of bounds")
        page[offset:offset + length] = delta[pos:pos + length]
        pos += length
    lower, upper = pd_lower(page), pd_upper(page)
    if upper > lower:
        page[lower:upper] = bytes(upper - lower)
    page_set_lsn(page, rec.end_lsn)

"""The redo dispatcher: values -> pages.

``reconstruct`` turns a ValueChain (a base image or none, then values oldest first) into
the page as of the chain's LSN.  ``redo_block`` applies one WAL record to one block
following XLogReadBufferForRedoExtended (src/backend/access/transam/xlogutils.c):

- an image to apply (BKPIMAGE_APPLY) is restored, and stamped with the record's end LSN
  unless the restored page is new (PageIsNew);
- BKPBLOCK_WILL_INIT: the rmgr routine gets a zero-filled page (XLogInitBufferForRedo);
- otherwise a missing or new page is BLK_NOTFOUND (left alone) unless the rmgr reads the
  block with RBM_ZERO_ON_ERROR; a page whose LSN is at or past the record's end LSN is
  BLK_DONE (left alone); else the rmgr routine redoes it (BLK_NEEDS_REDO).

Every built-in rmgr whose records change relation pages has a module here (heap, btree,
hash, gin, gist, sequence, spgist, brin, generic); the others change no page, or only
metadata that ingest keeps (docs/redo.md lists every PostgreSQL 15 record type and what
pagestore does with it).  A record no module can redo (a custom rmgr, an unknown info)
raises UnsupportedWalRecord naming the rmgr and info: such a block is served only
through a full-page image, never guessed.
"""

from __future__ import annotations

import importlib
import struct
from typing import TYPE_CHECKING, Protocol

from pagestore import values
from pagestore.errors import CorruptionError, CorruptWalError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ, Key, rel_block_key
from pagestore.lsn import Lsn
from pagestore.pg.rmgr import RmgrId, rmgr_name
from pagestore.pg.xlogrecord import decode_record, restore_block_image
from pagestore.redo import slru, visibilitymap
from pagestore.redo.bufpage import page_get_lsn, page_is_new, page_set_lsn
from pagestore.redo.context import ReadMode, RedoContext

if TYPE_CHECKING:
    from pagestore.layers.layermap import ValueChain
    from pagestore.pg.xlogrecord import DecodedRecord


class RmgrRedo(Protocol):
    def redo_block(self, ctx: RedoContext, rec: DecodedRecord, block_id: int,
                   page: bytearray) -> None: ...


_MODULES = {
    RmgrId.HEAP: "pagestore.redo.heap",
    RmgrId.HEAP2: "pagestore.redo.heap",
    RmgrId.BTREE: "pagestore.redo.btree",
    RmgrId.SEQ: "pagestore.redo.seq",
    RmgrId.GENERIC: "pagestore.redo.generic",
    RmgrId.BRIN: "pagestore.redo.brin",
    RmgrId.GIST: "pagestore.redo.gist",
    RmgrId.HASH: "pagestore.redo.hash",
    RmgrId.GIN: "pagestore.redo.gin",
    RmgrId.SPGIST: "pagestore.redo.spgist",
}
_loaded: dict[int, object] = {}


def rmgr_module(rmid: int) -> object | None:
    mod = _loaded.get(rmid)
    if mod is None and rmid in _MODULES:
        mod = importlib.import_module(_MODULES[RmgrId(rmid)])
        _loaded[rmid] = mod
    return mod


def _unsupported(rec: DecodedRecord, why: str = "") -> UnsupportedWalRecord:
    return UnsupportedWalRecord(
        f"no redo for WAL record at {rec.lsn}: resource manager {rmgr_name(rec.rmid)}, "
        f"info {rec.info:#04x}{why} (it can only be served through a full-page image)")


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int,
               page: bytearray | None) -> bytearray | None:
    """The page of block ``block_id`` after ``rec`` (None: the block does not exist)."""
    blk = rec.block(block_id)
    if blk is None:
        raise CorruptWalError(f"WAL record at {rec.lsn} has no block reference {block_id}")
    if blk.apply_image:
        restored = bytearray(restore_block_image(blk, rec.lsn))
        if not page_is_new(restored):
            page_set_lsn(restored, rec.end_lsn)
            # A few rmgrs change a block after restoring its image (BLK_RESTORED): GiST
            # sets a split child's NSN, which the image could not hold yet.
            after = getattr(rmgr_module(rec.rmid), "after_image", None)
            if after is not None:
                after(ctx, rec, block_id, restored)
        return restored
    if rec.rmid == RmgrId.XLOG:
        if rec.rmgr_info == 0xA0:  # FPI_FOR_HINT: blocks without an image are skipped
            return page
        raise CorruptWalError(f"XLOG record at {rec.lsn} has block {block_id} without an "
                              "image to apply")
    mod = rmgr_module(rec.rmid)
    if mod is None:
        raise _unsupported(rec)
    redo = mod.redo_block  # type: ignore[attr-defined]
    if blk.will_init:
        page = bytearray(BLCKSZ)
    else:
        mode_fn = getattr(mod, "read_mode", None)
        mode = mode_fn(rec, block_id) if mode_fn is not None else ReadMode.NORMAL
        if page is None or page_is_new(page):
            if mode is not ReadMode.ZERO_ON_ERROR:
                return page  # BLK_NOTFOUND
            page = bytearray(BLCKSZ) if page is None else page
        elif page_get_lsn(page) >= rec.end_lsn:
            return page  # BLK_DONE
    if len(page) != BLCKSZ:
        raise CorruptionError(f"page of {blk.rel} block {blk.blkno} is {len(page)} bytes, "
                              f"not {BLCKSZ}")
    try:
        redo(ctx, rec, block_id, page)
    except (struct.error, IndexError, ValueError) as e:
        # A record whose contents do not match its type: an error, never a wrong page.
        raise CorruptWalError(
            f"malformed WAL record at {rec.lsn} ({rmgr_name(rec.rmid)} info {rec.info:#04x}) "
            f"for {blk.rel} block {blk.blkno}: {e}") from e
    return page


def apply_value(ctx: RedoContext, key: Key, lsn: Lsn, value: bytes,
                page: bytearray | None) -> bytearray | None:
    """``page`` (None: nonexistent) after one stored value."""
    tag = value[0] if value else -1
    if tag == values.TAG_IMAGE:
        return bytearray(value[1:])
    rec_value = values.decode_record_value(value)
    if isinstance(rec_value, values.PgRecord):
        rec = decode_record(rec_value.record, Lsn(0), lsn, check_crc=False)
        blk = rec.block(rec_value.block_id)
        if blk is None or rel_block_key(blk.rel, blk.blkno) != key:
            raise CorruptionError(f"value at {lsn} for key {key} refers to block "
                                  f"{rec_value.block_id}, which is not that key")
        return redo_block(ctx, rec, rec_value.block_id, page)
    if isinstance(rec_value, values.Materialize):
        # A copy of another key's chain (CREATE DATABASE ... FILE_COPY): its records
        # refer to the source key.
        source = Key.from_bytes(rec_value.source_key)
        base = bytearray(rec_value.image) if rec_value.image is not None else None
        for inner_lsn, inner in rec_value.values:
            base = apply_value(ctx, source, Lsn(inner_lsn), inner, base)
        return base
    if page is None:
        page = bytearray(BLCKSZ)
    if isinstance(rec_value, values.ClearVmBits):
        for blkno in (rec_value.heap_blkno_1, rec_value.heap_blkno_2):
            if blkno != values.NO_BLOCK:
                visibilitymap.vm_clear(page, blkno, rec_value.flags)
    elif isinstance(rec_value, values.TruncateVm):
        visibilitymap.vm_truncate(page, rec_value.trunc_byte, rec_value.trunc_offs)
    elif isinstance(rec_value, values.FsmTruncate):
        visibilitymap.fsm_truncate_avail(page, rec_value.first_removed_slot)
    elif isinstance(rec_value, values.ClogSetStatus):
        slru.clog_set_status(page, rec_value.xids, rec_value.status)
    elif isinstance(rec_value, values.SlruWriteU32):
        slru.write_u32(page, rec_value.writes)
    elif isinstance(rec_value, values.MultixactMembers):
        slru.multixact_members(page, rec_value.members)
    else:  # pragma: no cover - decode_record_value knows no other kinds
        raise CorruptionError(f"value at {lsn} for key {key} has an unknown kind")
    return page


def reconstruct(ctx: RedoContext, chain: ValueChain) -> bytes | None:
    """The page a chain builds; None when no version of the key exists."""
    page = bytearray(chain.image) if chain.image is not None else None
    if page is not None and chain.key.is_rel_block() and len(page) != BLCKSZ:
        raise CorruptionError(f"base image of key {chain.key} is {len(page)} bytes, not {BLCKSZ}")
    for lsn, value in chain.records:
        page = apply_value(ctx, chain.key, lsn, value, page)
    return bytes(page) if page is not None else None

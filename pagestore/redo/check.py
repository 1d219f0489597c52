"""The record-level oracle: replay WAL written with ``wal_consistency_checking = all`` and
compare our redo of every block with PostgreSQL's own after-image of it.

With wal_consistency_checking on, PostgreSQL sets XLR_CHECK_CONSISTENCY on each record
of the checked rmgrs and logs an image of every block the record touches
(xloginsert.c: include_image = needs_backup || XLR_CHECK_CONSISTENCY).  An image without
BKPIMAGE_APPLY is PostgreSQL's page *after* the record, for checking only
(verifyBackupPageConsistency in xlogrecovery.c).

So no base backup is needed: for each such block, start from the previous known state of
that block (the previous record's image of it: PostgreSQL's truth, so every record is
checked in isolation), redo the record with pagestore's redo, and compare with the image
under the rmgr's mask (pagestore.redo.masking).  The first block seen in the stream only
primes the state.  Rules: a record we cannot redo is reported as unsupported, never
skipped silently; the report names the record, the block and the first differing byte.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagestore.errors import PagestoreError, UnsupportedWalRecord
from pagestore.pg.rmgr import RmgrId, record_kind, rmgr_name
from pagestore.pg.xlogrecord import XLR_CHECK_CONSISTENCY, restore_block_image
from pagestore.redo import gist, masking
from pagestore.redo.apply import redo_block
from pagestore.redo.bufpage import page_is_new, page_set_lsn
from pagestore.redo.context import RedoContext

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from pagestore.keys import RelTag
    from pagestore.pg.xlogrecord import DecodedRecord

XLOG_PARAMETER_CHANGE = 0x60
WAL_LOG_HINTS_OFFSET = 24  # xl_parameter_change.wal_log_hints


@dataclass(frozen=True, slots=True)
class Mismatch:
    lsn: str
    rmgr: str
    info: int
    rel: str
    blkno: int
    block_id: int
    offset: int | None        # first differing byte after masking; None if not a page diff
    ours: bytes
    theirs: bytes
    error: str | None = None  # set when our redo raised instead of producing a page

    def describe(self, context: int = 16) -> str:
        head = (f"record {self.lsn} ({self.rmgr} info {self.info:#04x}) block {self.block_id} "
                f"({self.rel} blk {self.blkno})")
        if self.error is not None:
            return f"{head}: redo failed: {self.error}"
        assert self.offset is not None
        lo = max(0, self.offset - context)
        hi = self.offset + context
        return (f"{head}: first difference at byte {self.offset}\n"
                f"  ours   [{lo}:{hi}] {self.ours[lo:hi].hex(' ')}\n"
                f"  theirs [{lo}:{hi}] {self.theirs[lo:hi].hex(' ')}")


@dataclass(slots=True)
class CheckStats:
    records: int = 0
    checked_blocks: int = 0
    checked: Counter[str] = field(default_factory=Counter)      # "Heap/0x00" -> blocks
    unsupported: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    # Blocks equal but for a known divergence of PostgreSQL's own redo (below)
    postgres_divergences: Counter[str] = field(default_factory=Counter)
    # Every record, with or without block references, by pg_waldump's name for its type
    # ("Heap/INSERT", pagestore.pg.rmgr.record_kind): what the stream covered
    seen: Counter[str] = field(default_factory=Counter)


def _gist_clear_tuples_deleted(page: bytearray) -> None:
    gist.set_flags(page, gist.flags(page) & ~gist.F_TUPLES_DELETED)


#: Records whose redo in PostgreSQL 15 itself does not reproduce the primary's page, so
#: that PostgreSQL's own recovery with wal_consistency_checking fails on them ("FATAL:
#: inconsistent page found": seen with 15.18 replaying tests/workloads/gist.sql).  pagestore
#: follows PostgreSQL's redo (the standby is the oracle); here the after-image is compared
#: with that one difference set aside, and the count is reported, never hidden.
#: - Gist/DELETE: gistprunepage clears F_HAS_GARBAGE only, gistRedoDeleteRecord also sets
#:   F_TUPLES_DELETED.
POSTGRES_DIVERGENCES: dict[tuple[int, int], Callable[[bytearray], None]] = {
    (RmgrId.GIST, 0x10): _gist_clear_tuples_deleted,
}


def _kind(rec: DecodedRecord) -> str:
    return f"{rmgr_name(rec.rmid)}/{rec.rmgr_info:#04x}"


def check_records(records: Iterable[DecodedRecord], ctx: RedoContext,
                  stats: CheckStats | None = None) -> Iterator[Mismatch]:
    """Yield every block whose redo differs from PostgreSQL's after-image."""
    stats = stats if stats is not None else CheckStats()
    state: dict[tuple[RelTag, int], bytes] = {}
    wal_log_hints = ctx.wal_log_hints
    for rec in records:
        stats.records += 1
        stats.seen[record_kind(rec.rmid, rec.rmgr_info)] += 1
        if rec.rmid == RmgrId.XLOG and rec.rmgr_info == XLOG_PARAMETER_CHANGE:
            wal_log_hints = bool(rec.main_data[WAL_LOG_HINTS_OFFSET])
            ctx = RedoContext(data_checksums=ctx.data_checksums, wal_log_hints=wal_log_hints)
        check = bool(rec.info & XLR_CHECK_CONSISTENCY)
        for blk in rec.blocks:
            key = (blk.rel, blk.blkno)
            if not blk.has_image:
                state.pop(key, None)  # we no longer know this block's state
                continue
            image = restore_block_image(blk, rec.lsn)
            if blk.apply_image:
                page = bytearray(image)
                if not page_is_new(page):
                    page_set_lsn(page, rec.end_lsn)
                state[key] = bytes(page)
                continue
            before = state.get(key)
            state[key] = image
            if not check or (before is None and not blk.will_init):
                continue
            try:
                ours = redo_block(ctx, rec, blk.block_id,
                                  bytearray(before) if before is not None else None)
            except UnsupportedWalRecord:
                stats.unsupported[_kind(rec)] += 1
                continue
            except PagestoreError as e:
                stats.mismatches += 1
                yield Mismatch(str(rec.lsn), rmgr_name(rec.rmid), rec.info, str(blk.rel),
                               blk.blkno, blk.block_id, None, b"", image, error=e.message)
                continue
            stats.checked_blocks += 1
            stats.checked[_kind(rec)] += 1
            if ours is None:
                stats.mismatches += 1
                yield Mismatch(str(rec.lsn), rmgr_name(rec.rmid), rec.info, str(blk.rel),
                               blk.blkno, blk.block_id, None, b"", image,
                               error="our redo left the block nonexistent")
                continue
            if ours[10:] == image[10:]:
                # Equal but for pd_lsn and pd_checksum, which every mask hides (the check
                # image is taken before PageSetLSN): equal under any mask, no need to mask.
                continue
            try:
                a = masking.mask_page(rec.rmid, bytes(ours), blk.rel.forknum, blk.blkno)
            except PagestoreError as e:
                stats.mismatches += 1
                yield Mismatch(str(rec.lsn), rmgr_name(rec.rmid), rec.info, str(blk.rel),
                               blk.blkno, blk.block_id, None, bytes(ours), image,
                               error=f"our page cannot be masked: {e.message}")
                continue
            b = masking.mask_page(rec.rmid, image, blk.rel.forknum, blk.blkno)
            divergence = POSTGRES_DIVERGENCES.get((rec.rmid, rec.rmgr_info))
            if a != b and divergence is not None:
                aa, bb = bytearray(a), bytearray(b)
                divergence(aa)
                divergence(bb)
                if aa == bb:
                    stats.postgres_divergences[_kind(rec)] += 1
                    continue
            if a != b:
                stats.mismatches += 1
                yield Mismatch(str(rec.lsn), rmgr_name(rec.rmid), rec.info, str(blk.rel),
                               blk.blkno, blk.block_id, masking.first_difference(a, b), a, b)

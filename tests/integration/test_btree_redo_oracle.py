"""The record-level oracle for BTREE redo: PostgreSQL's own after-images.

A primary runs with ``wal_consistency_checking = all``, so every BTREE record carries an
image of each block it touches *after* the change (an image without BKPIMAGE_APPLY,
which PostgreSQL's startup process compares with its replayed page in
verifyBackupPageConsistency).  We take a base backup, run a btree-heavy workload (random
wide keys for leaf and internal splits and new roots, duplicates for deduplication and
posting list splits, deletes and VACUUM for posting list updates and page deletion,
killed items for simple deletion, REINDEX and CREATE INDEX), then replay the WAL from the
backup's start LSN onto pages read lazily from the backup, following
XLogReadBufferForRedoExtended: apply images are restored (for every rmgr); other blocks
of BTREE records are redone by pagestore.redo.btree unless the page is missing or new
(BLK_NOTFOUND) or already at or past the record (BLK_DONE); WILL_INIT blocks start from
a zero page.  After each BTREE record, each checked block must equal PostgreSQL's image
under btree_mask.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from pagestore.keys import BLCKSZ, RELSEG_SIZE, ForkNumber, RelTag
from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster
from pagestore.pg.walfiles import find_segments, read_wal_records
from pagestore.pg.xlogrecord import XLR_CHECK_CONSISTENCY, DecodedRecord, restore_block_image
from pagestore.redo import btree
from pagestore.redo.bufpage import page_get_lsn, page_is_new, page_set_lsn
from pagestore.redo.context import RedoContext
from pagestore.redo.masking import btree_mask
from tests.fixtures.postgres import PgFactory, pg_basebackup

RM_BTREE_ID = 11
PD_FLAGS_OFF = 10  # pd_lsn (8 bytes) and pd_checksum (2) come first

SETTINGS = {
    "wal_consistency_checking": "'all'",
    "full_page_writes": "on",
    "autovacuum": "off",
    "wal_keep_size": "'4GB'",
    "max_wal_size": "'4GB'",
    "shared_buffers": "'128MB'",
}

# Random, wide (~130-byte) text keys: few items per page, so a few thousand rows give
# a three-level tree with leaf and internal splits on both sides.
WIDE_KEY = "repeat(md5(random()::text), 4)"

# Variants of record types whose redo takes a different path.
MUST_SEE_VARIANTS = {"split at level > 0", "split with a posting list split",
                     "split with a right sibling", "NEWROOT at level >= 2",
                     "VACUUM updating posting lists", "VACUUM deleting 1-2 items",
                     "DELETE updating posting lists", "UNLINK_PAGE with a left sibling",
                     "UNLINK_PAGE of an internal page", "REUSE_PAGE"}

MUST_SEE = {"INSERT_LEAF", "INSERT_UPPER", "SPLIT_L", "SPLIT_R", "NEWROOT", "DEDUP",
            "INSERT_POST", "VACUUM", "DELETE", "MARK_PAGE_HALFDEAD", "UNLINK_PAGE",
            "UNLINK_PAGE_META", "META_CLEANUP", "INSERT_META"}




def run_workload(primary: PgCluster) -> None:
    sql = primary.psql
    # Random wide keys: leaf and internal splits (SPLIT_L and SPLIT_R), INSERT_UPPER,
    # NEWROOT as the tree grows to three levels, INSERT_META on the first root split.
    sql("CREATE TABLE wide (id int, k text)")
    sql("CREATE INDEX wide_k ON wide (k)")
    for _ in range(4):
        sql(f"INSERT INTO wide SELECT g, {WIDE_KEY} FROM generate_series(1, 1500) g")
    # Sequential wide keys: a tall, thin tree.  Deleting a middle range makes VACUUM
    # mark leaves half-dead and unlink them (MARK_PAGE_HALFDEAD, UNLINK_PAGE with a left
    # sibling) and their internal parents (UNLINK_PAGE with a half-dead leaf block);
    # deleting the left part shrinks a level to one page (UNLINK_PAGE_META moves the fast
    # root) and records the deleted pages (META_CLEANUP).
    sql("CREATE TABLE seqk (id int, k text)")
    sql("CREATE INDEX seqk_k ON seqk (k)")
    sql("INSERT INTO seqk SELECT g, lpad(g::text, 200, '0') FROM generate_series(1, 5000) g")
    sql("DELETE FROM seqk WHERE id BETWEEN 1500 AND 3500")
    sql("VACUUM seqk")
    sql("DELETE FROM seqk WHERE id < 4990")
    sql("VACUUM seqk")
    # Once an xid has gone by the deleted pages are recyclable: VACUUM puts them in the
    # FSM, and splits reuse them (REUSE_PAGE, right pages rebuilt over deleted ones).
    # The fast root is a lone internal page below the true root: splitting it inserts
    # into the root and moves the fast root back up (INSERT_META).
    sql("SELECT txid_current()")
    sql("VACUUM seqk")
    sql("INSERT INTO seqk SELECT g, lpad(g::text, 200, '0') FROM generate_series(5001, 7000) g")
    # VACUUM removing one or two items from a page (PageIndexTupleDelete path).
    sql("DELETE FROM wide WHERE id IN (17, 1234)")
    sql("VACUUM wide")
    # Duplicates: deduplication passes (DEDUP), then deletes + VACUUM remove TIDs from
    # posting lists (VACUUM with updates), then new rows land in freed heap space with
    # TIDs inside existing posting lists (INSERT_POST, and posting splits during page
    # splits).
    sql("CREATE TABLE dup (id int, k int, pad text)")
    sql("CREATE INDEX dup_k ON dup (k)")
    sql("INSERT INTO dup SELECT g, g % 7, 'x' FROM generate_series(1, 30000) g")
    sql("DELETE FROM dup WHERE id % 3 = 0")
    sql("VACUUM dup")
    sql("INSERT INTO dup SELECT g, g % 7, 'y' FROM generate_series(1, 8000) g")
    # Simple deletion: delete a key range, let an index scan mark the dead items
    # LP_DEAD (kill_prior_tuple), then fill those leaf pages so the insert deletes them
    # first (DELETE).
    sql("CREATE TABLE kill (id int, k int)")
    sql("CREATE INDEX kill_k ON kill (k)")
    sql("INSERT INTO kill SELECT g, g * 10 FROM generate_series(1, 20000) g")
    sql("DELETE FROM kill WHERE id BETWEEN 2000 AND 9000")
    sql("SET enable_seqscan = off; SET enable_bitmapscan = off; "
        "SELECT count(*) FROM kill WHERE k BETWEEN 20000 AND 90000")
    sql("INSERT INTO kill SELECT g, g * 10 + 1 FROM generate_series(2000, 9000) g")
    # Bottom-up deletion (DELETE) from non-HOT updates that leave the key unchanged.
    sql("CREATE TABLE churn (id int PRIMARY KEY, k int, v int)")
    sql("CREATE INDEX churn_v ON churn (v)")
    sql("INSERT INTO churn SELECT g, g, 0 FROM generate_series(1, 2000) g")
    for i in range(1, 6):
        sql(f"UPDATE churn SET v = {i} WHERE id % 4 = 0")
    # Bottom-up deletion inside posting lists (DELETE with updates): non-HOT updates
    # leave k unchanged, so its duplicates (posting lists from the index build) churn.
    sql("CREATE TABLE churn2 (id int, k int, v int)")
    sql("INSERT INTO churn2 SELECT g, g % 50, 0 FROM generate_series(1, 6000) g")
    sql("CREATE INDEX churn2_k ON churn2 (k)")
    sql("CREATE INDEX churn2_v ON churn2 (v)")
    for i in range(1, 5):
        sql(f"UPDATE churn2 SET v = {i} WHERE id % 3 = {i % 3}")
    # Index builds on existing data (full-page images), then records on top of them.
    sql("CREATE INDEX wide_id ON wide (id)")
    sql("REINDEX INDEX dup_k")
    sql(f"INSERT INTO wide SELECT g, {WIDE_KEY} FROM generate_series(1, 500) g")
    sql("INSERT INTO dup SELECT g, g % 7, 'z' FROM generate_series(1, 3000) g")
    sql("CHECKPOINT")


class BackupPages:
    """Pages of the base backup, read lazily; replayed pages replace them."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self.pages: dict[tuple[RelTag, int], bytearray | None] = {}

    def _path(self, rel: RelTag, segno: int) -> Path:
        d = self.datadir / "global" if rel.spcnode == 1664 else \
            self.datadir / "base" / str(rel.dbnode)
        name = str(rel.relnode) + ("" if rel.forknum == ForkNumber.MAIN
                                   else "_" + ForkNumber(rel.forknum).suffix)
        return d / (name if segno == 0 else f"{name}.{segno}")

    def get(self, rel: RelTag, blkno: int) -> bytearray | None:
        key = (rel, blkno)
        if key not in self.pages:
            page = None
            path = self._path(rel, blkno // RELSEG_SIZE)
            if rel.spcnode in (1663, 1664) and path.exists():
                with open(path, "rb") as f:
                    f.seek((blkno % RELSEG_SIZE) * BLCKSZ)
                    data = f.read(BLCKSZ)
                if len(data) == BLCKSZ:
                    page = bytearray(data)
            self.pages[key] = page
        return self.pages[key]

    def put(self, rel: RelTag, blkno: int, page: bytearray) -> None:
        self.pages[(rel, blkno)] = page


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int | None:
    if a == b:
        return None
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def describe(rec: DecodedRecord, blk_id: int, ours: bytearray, theirs: bytearray,
             off: int) -> str:
    blk = rec.block(blk_id)
    assert blk is not None
    lo = max(0, off - 16) & ~7
    return (f"BTREE {btree.RECORD_NAMES.get(rec.rmgr_info, hex(rec.rmgr_info))} at {rec.lsn}, "
            f"block {blk_id} ({blk.rel.spcnode}/{blk.rel.dbnode}/{blk.rel.relnode} "
            f"blk {blk.blkno}): first difference at byte {off}\n"
            f"  ours   [{lo}:{lo + 48}] {ours[lo:lo + 48].hex(' ', 8)}\n"
            f"  theirs [{lo}:{lo + 48}] {theirs[lo:lo + 48].hex(' ', 8)}")


def variant(rec: DecodedRecord) -> str | None:
    """The redo path a BTREE record takes, where a record type has more than one."""
    info, main = rec.rmgr_info, rec.main_data
    if info in (btree.XLOG_BTREE_SPLIT_L, btree.XLOG_BTREE_SPLIT_R):
        level, _first, _newitemoff, postingoff = btree.XL_BTREE_SPLIT.unpack_from(main)
        if postingoff:
            return "split with a posting list split"
        if level > 0:
            return "split at level > 0"
        return "split with a right sibling" if rec.block(2) is not None else None
    if info == btree.XLOG_BTREE_NEWROOT:
        return "NEWROOT at level >= 2" if btree.XL_BTREE_NEWROOT.unpack_from(main)[1] >= 2 \
            else None
    if info == btree.XLOG_BTREE_VACUUM:
        ndeleted, nupdated = btree.XL_BTREE_VACUUM.unpack_from(main)
        if nupdated:
            return "VACUUM updating posting lists"
        return "VACUUM deleting 1-2 items" if ndeleted <= 2 else None
    if info == btree.XLOG_BTREE_DELETE:
        return "DELETE updating posting lists" if btree.XL_BTREE_DELETE.unpack_from(main)[2] \
            else None
    if info in (btree.XLOG_BTREE_UNLINK_PAGE, btree.XLOG_BTREE_UNLINK_PAGE_META):
        if rec.block(3) is not None:
            return "UNLINK_PAGE of an internal page"
        return "UNLINK_PAGE with a left sibling" if rec.block(1) is not None else None
    if info == btree.XLOG_BTREE_REUSE_PAGE:
        return "REUSE_PAGE"
    return None


@dataclass
class Replay:
    """What a replay did: blocks redone and verified per record type, BTREE records
    with at least one verified block, record variants seen, and mismatch reports."""

    redone: collections.Counter[str] = field(default_factory=collections.Counter)
    verified: collections.Counter[str] = field(default_factory=collections.Counter)
    verified_records: int = 0
    unchecked: int = 0  # check images skipped as PostgreSQL would (no page, newer page)
    variants: collections.Counter[str] = field(default_factory=collections.Counter)
    mismatches: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"blocks redone per record type: {dict(self.redone)}\n"
                f"blocks verified against PostgreSQL's after-images: {dict(self.verified)}\n"
                f"BTREE records verified: {self.verified_records}; check images skipped: "
                f"{self.unchecked}\n"
                f"record variants: {dict(self.variants)}")


def replay(backup: Path, wal_dir: Path, start: Lsn) -> Replay:
    ctx = RedoContext()
    pages = BackupPages(backup)
    out = Replay()
    redone, verified, variants = out.redone, out.verified, out.variants
    for rec in read_wal_records(find_segments([wal_dir]), start):
        is_btree = rec.rmid == RM_BTREE_ID
        name = btree.RECORD_NAMES.get(rec.rmgr_info, hex(rec.rmgr_info))
        if is_btree and (v := variant(rec)) is not None:
            variants[v] += 1
        for blk in rec.blocks:
            if blk.apply_image:
                page = bytearray(restore_block_image(blk, rec.lsn))
                if not page_is_new(page):
                    page_set_lsn(page, rec.end_lsn)
                pages.put(blk.rel, blk.blkno, page)
                continue
            if not is_btree:
                continue
            if blk.will_init:
                page = bytearray(BLCKSZ)
            else:
                existing = pages.get(blk.rel, blk.blkno)
                if existing is None or page_is_new(existing):
                    continue  # BLK_NOTFOUND
                if page_get_lsn(existing) >= rec.end_lsn:
                    continue  # BLK_DONE
                page = bytearray(existing)
            btree.redo_block(ctx, rec, blk.block_id, page)
            pages.put(blk.rel, blk.blkno, page)
            redone[name] += 1
        if not is_btree or not rec.info & XLR_CHECK_CONSISTENCY:
            continue
        checked_any = False
        for blk in rec.blocks:
            if not blk.has_image or blk.apply_image:
                continue
            replayed = pages.get(blk.rel, blk.blkno)
            if replayed is None or page_get_lsn(replayed) > rec.end_lsn:
                out.unchecked += 1  # as verifyBackupPageConsistency
                continue
            ours = bytearray(replayed)
            theirs = bytearray(restore_block_image(blk, rec.lsn))
            if ours[PD_FLAGS_OFF:] != theirs[PD_FLAGS_OFF:]:
                # equal past pd_lsn and pd_checksum means equal after btree_mask
                btree_mask(ours, blk.blkno)
                btree_mask(theirs, blk.blkno)
            off = first_difference(ours[PD_FLAGS_OFF:], theirs[PD_FLAGS_OFF:])
            if off is not None:
                off += PD_FLAGS_OFF
                out.mismatches.append(describe(rec, blk.block_id, ours, theirs, off))
                # carry on from PostgreSQL's page so one bug is reported once
                page = bytearray(restore_block_image(blk, rec.lsn))
                page_set_lsn(page, rec.end_lsn)
                pages.put(blk.rel, blk.blkno, page)
            else:
                verified[name] += 1
                checked_any = True
        if checked_any:
            out.verified_records += 1
    return out


def test_btree_redo_matches_postgres(pg_factory: PgFactory, work_dir: Path) -> None:
    primary = pg_factory(settings=SETTINGS)
    primary.psql("CREATE TABLE before_backup (id int, k text)")
    primary.psql("CREATE INDEX before_backup_k ON before_backup (k)")
    primary.psql(f"INSERT INTO before_backup SELECT g, {WIDE_KEY} FROM generate_series(1, 2000) g")
    backup = work_dir / "backup"
    start = pg_basebackup(primary, backup)
    primary.psql(f"INSERT INTO before_backup SELECT g, {WIDE_KEY} FROM generate_series(1, 500) g")
    run_workload(primary)
    primary.stop()

    result = replay(backup, primary.datadir / "pg_wal", start)
    summary = result.summary()
    print(summary)
    assert not result.mismatches, (f"{len(result.mismatches)} mismatching pages; first ones:\n"
                                   + "\n".join(result.mismatches[:5]) + "\n" + summary)
    assert result.verified_records > 100_000, summary
    assert result.unchecked == 0, summary
    missing = MUST_SEE - set(result.verified)
    assert not missing, f"workload did not exercise {sorted(missing)}\n{summary}"
    missing = MUST_SEE_VARIANTS - set(result.variants)
    assert not missing, f"workload did not exercise {sorted(missing)}\n{summary}"

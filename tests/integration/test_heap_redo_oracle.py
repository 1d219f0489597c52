"""The record-level oracle for heap redo: PostgreSQL's own after-images.

A primary runs with ``wal_consistency_checking = all``, so every HEAP/HEAP2 record carries
an image of each block it touches *after* the change (without BKPIMAGE_APPLY unless it is
a real full-page write).  We take a base backup of the idle primary, run a heap workload
that produces every heap record type a PostgreSQL 15 primary writes, stop it, and replay
its WAL from the backup's start LSN: pages come lazily from the backup's relation files,
images to apply are restored, and HEAP/HEAP2 blocks are redone with
pagestore.redo.heap.redo_block under the dispatcher rules of pagestore/redo/context.py
(BLK_NOTFOUND / BLK_DONE / WILL_INIT / RBM_ZERO_ON_ERROR).  After each record with
XLR_CHECK_CONSISTENCY, each of its blocks with a check image is compared with our page,
both masked with the record's rm_mask (heap_mask), as verifyBackupPageConsistency in
xlogrecovery.c does.  Visibility-map pages are also compared bit for bit (only pd_lsn
and pd_checksum masked), which PostgreSQL's heap_mask cannot do.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pagestore.keys import ForkNumber, RelTag
from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster
from pagestore.pg.rmgr import RmgrId, rmgr_name
from pagestore.pg.walfiles import find_segments, read_wal_records
from pagestore.pg.xlogrecord import XLR_CHECK_CONSISTENCY, DecodedRecord, restore_block_image
from pagestore.redo import heap, masking
from pagestore.redo.bufpage import page_get_lsn, page_is_new, page_set_lsn
from pagestore.redo.context import ReadMode, RedoContext
from pagestore.redo.visibilitymap import vm_truncate
from tests.fixtures.postgres import pg_basebackup

BLCKSZ = 8192
RELSEG_SIZE = 131072
GLOBALTABLESPACE_OID = 1664
HEAP_RMGRS = (RmgrId.HEAP, RmgrId.HEAP2)
# xl_smgr_truncate: blkno u32, RelFileNode (spc u32, db u32, rel u32), flags i32
XL_SMGR_TRUNCATE = struct.Struct("<IIIIi")
XLOG_SMGR_TRUNCATE = 0x20
SMGR_TRUNCATE_HEAP = 0x01
SMGR_TRUNCATE_VM = 0x02
HEAPBLOCKS_PER_PAGE = (BLCKSZ - 24) * 4
XLOG_PARAMETER_CHANGE = 0x60
WAL_LOG_HINTS_AT = 24      # xl_parameter_change.wal_log_hints
CONTROL_WAL_LOG_HINTS = 176  # ControlFileData.wal_log_hints
CONTROL_CHECKSUM_VERSION = 252  # ControlFileData.data_checksum_version

REQUIRED = {"Heap/INSERT", "Heap2/MULTI_INSERT", "Heap/UPDATE", "Heap/HOT_UPDATE",
            "Heap/DELETE", "Heap/LOCK", "Heap2/PRUNE", "Heap2/VACUUM", "Heap2/FREEZE_PAGE",
            "Heap2/VISIBLE"}
# Also produced by this workload and checked when they appear (asserted below).
EXPECTED_TOO = {"Heap/INPLACE", "Heap/HEAP_CONFIRM", "Heap2/LOCK_UPDATED", "Heap/INSERT+INIT",
                "Heap2/MULTI_INSERT+INIT", "Heap/UPDATE+INIT"}


# --------------------------------------------------------------------------- workload

def _toast_value(n: int) -> str:
    # incompressible enough to be stored out of line
    return f"(SELECT string_agg(md5(random()::text || g2::text), '') FROM generate_series(1, {n}) g2)"


def run_heap_workload(primary: PgCluster, logical: bool = False) -> None:
    """Every kind of heap change a PostgreSQL 15 primary WAL-logs.  With ``logical``
    (wal_level = logical): a logical slot, REPLICA IDENTITY FULL (old tuples in DELETE and
    UPDATE records, no prefix/suffix compression), NEW_CID, heap TRUNCATE and REWRITE
    (VACUUM FULL of a catalog while a slot exists) records."""
    conninfo = primary.conninfo()
    with psycopg.connect(conninfo, autocommit=True) as a, \
            psycopg.connect(conninfo, autocommit=True) as b:
        def sql(*stmts: str, conn: psycopg.Connection[tuple[object, ...]] = a) -> None:
            for s in stmts:
                conn.execute(s)  # type: ignore[arg-type]

        if logical:
            sql("SELECT pg_create_logical_replication_slot('heap_oracle', 'test_decoding')")
        # Inserts (INSERT, INSERT+INIT), a table with room for HOT, TOAST.
        sql("CREATE TABLE t (id int PRIMARY KEY, k int, pad text, v text)",
            "CREATE TABLE h (id int PRIMARY KEY, k int, a text, b int, c text) "
            "WITH (fillfactor = 50)",
            "INSERT INTO t SELECT g, g, repeat('p', 60), md5(g::text) "
            "FROM generate_series(1, 3000) g",
            "INSERT INTO h SELECT g, g, repeat('a', 40) || g, g, repeat('c', 40) "
            "FROM generate_series(1, 1500) g",
            "CREATE TABLE big (id int PRIMARY KEY, v text)",
            f"INSERT INTO big SELECT g, {_toast_value(150)} FROM generate_series(1, 40) g")
        if logical:
            sql("ALTER TABLE t REPLICA IDENTITY FULL", "ALTER TABLE h REPLICA IDENTITY FULL")
        # COPY: multi-inserts into new pages and into pages with room.
        with a.cursor() as cur, cur.copy("COPY t (id, k, pad, v) FROM STDIN") as copy:
            for i in range(3001, 6001):
                copy.write_row((i, i, "q" * (i % 70), f"copy{i}"))
        sql("DELETE FROM t WHERE id BETWEEN 5000 AND 5200")
        with a.cursor() as cur, cur.copy("COPY h (id, k, a, b, c) FROM STDIN") as copy:
            for i in range(1501, 1800):
                copy.write_row((i, i, "x" * 30, i, "y" * 30))
        # COPY FREEZE into a table created in the same transaction (ALL_FROZEN_SET).
        a.execute("BEGIN")
        sql("CREATE TABLE cf (id int, v text)")
        with a.cursor() as cur, cur.copy("COPY cf FROM STDIN (FREEZE)") as copy:
            for i in range(1, 2001):
                copy.write_row((i, f"frozen{i}"))
        a.execute("COMMIT")

        # Updates: HOT on the same page (prefix/suffix from the old tuple), cross-page
        # (new pages with INIT_PAGE), key updates, and repeated HOT updates that make the
        # next access prune the page.
        sql("UPDATE h SET b = b + 1 WHERE id % 3 = 0",
            "UPDATE h SET c = c || 'z' WHERE id % 7 = 0",
            "UPDATE t SET v = v || repeat('u', 30) WHERE id % 5 = 0",
            "UPDATE t SET id = id + 100000 WHERE id % 97 = 0",
            "UPDATE big SET v = v || 'x' WHERE id % 4 = 0")
        for _ in range(12):
            sql("UPDATE h SET b = b + 1 WHERE id % 50 = 1")
        sql("SELECT count(*) FROM h", "SELECT count(*) FROM t")

        # Deletes, including an aborted transaction's inserts and a partition move.
        sql("DELETE FROM t WHERE id % 11 = 0", "DELETE FROM big WHERE id % 5 = 0",
            "BEGIN", "INSERT INTO h SELECT g, g, 'aborted', g, 'x' "
            "FROM generate_series(100001, 100300) g", "ROLLBACK")
        sql("CREATE TABLE p (id int, part int, v text) PARTITION BY LIST (part)",
            "CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)",
            "CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2)",
            "INSERT INTO p SELECT g, 1, 'v' || g FROM generate_series(1, 200) g",
            "UPDATE p SET part = 2 WHERE id % 3 = 0")

        # Speculative insertion (INSERT with IS_SPECULATIVE, then CONFIRM) and ON CONFLICT
        # DO UPDATE (LOCK, then UPDATE).
        sql("INSERT INTO h SELECT g, g, 'spec', g, 'spec' FROM generate_series(1790, 1830) g "
            "ON CONFLICT (id) DO NOTHING",
            "INSERT INTO h SELECT g, g, 'ups', g, 'ups' FROM generate_series(1, 60) g "
            "ON CONFLICT (id) DO UPDATE SET b = excluded.b + 1000")

        # Row locks: FOR UPDATE, FOR SHARE from two sessions (a multixact), FOR KEY SHARE
        # on a row another session has updated (LOCK_UPDATED along the update chain).
        sql("BEGIN", "SELECT * FROM t WHERE id < 200 FOR UPDATE", "COMMIT")
        sql("BEGIN", "SELECT * FROM t WHERE id BETWEEN 200 AND 400 FOR SHARE")
        sql("BEGIN", "SELECT * FROM t WHERE id BETWEEN 300 AND 500 FOR SHARE", conn=b)
        sql("COMMIT")
        sql("COMMIT", conn=b)
        sql("BEGIN", "SELECT * FROM h WHERE id BETWEEN 400 AND 420 FOR NO KEY UPDATE")
        sql("BEGIN", "SELECT * FROM h WHERE id BETWEEN 410 AND 430 FOR KEY SHARE", conn=b)
        sql("COMMIT", conn=b)
        sql("COMMIT")
        sql("BEGIN", "UPDATE h SET b = b + 1 WHERE id BETWEEN 500 AND 510")
        sql("BEGIN", "SELECT * FROM h WHERE id BETWEEN 500 AND 510 FOR KEY SHARE", conn=b)
        sql("COMMIT")
        sql("COMMIT", conn=b)

        # VACUUM: prune, LP_DEAD -> LP_UNUSED (index vacuuming forced), visibility map,
        # inplace pg_class updates.
        sql("VACUUM (INDEX_CLEANUP ON) t", "VACUUM (INDEX_CLEANUP ON) h",
            "VACUUM (INDEX_CLEANUP ON) big", "VACUUM p1", "VACUUM p2", "VACUUM cf")
        # Changes on all-visible pages (the *_ALL_VISIBLE_CLEARED flags), into reused
        # line pointers (non-presorted line pointer order for the next prune).
        sql("INSERT INTO t SELECT g, g, 'reuse', md5(g::text) FROM generate_series(6001, 6400) g",
            "UPDATE t SET k = k + 1 WHERE id % 13 = 0",
            "DELETE FROM t WHERE id % 17 = 0",
            "UPDATE h SET b = b + 1 WHERE id % 9 = 0")
        with a.cursor() as cur, cur.copy("COPY t (id, k, pad, v) FROM STDIN") as copy:
            for i in range(7001, 7400):
                copy.write_row((i, i, "r", f"copy{i}"))
        # A COPY into the all-visible last page of a small table.
        sql("CREATE TABLE mi (id int, v text)",
            "INSERT INTO mi SELECT g, 'mi' || g FROM generate_series(1, 50) g", "VACUUM mi")
        with a.cursor() as cur, cur.copy("COPY mi FROM STDIN") as copy:
            for i in range(51, 61):
                copy.write_row((i, f"mi{i}"))
        # Freeze, then lock rows on all-frozen pages (LOCK with ALL_FROZEN_CLEARED).
        sql("VACUUM (FREEZE, INDEX_CLEANUP ON) t", "VACUUM (FREEZE) h", "VACUUM (FREEZE) big",
            "VACUUM (FREEZE) cf")
        sql("BEGIN", "SELECT * FROM t WHERE id % 100 = 7 FOR UPDATE", "COMMIT",
            "BEGIN", "SELECT * FROM h WHERE id % 100 = 8 FOR KEY SHARE", "COMMIT")
        sql("BEGIN", "SELECT * FROM cf WHERE id % 300 = 1 FOR SHARE")
        sql("BEGIN", "SELECT * FROM cf WHERE id % 300 = 1 FOR SHARE", conn=b)
        sql("COMMIT")
        sql("COMMIT", conn=b)
        sql("UPDATE cf SET v = v || '!' WHERE id % 250 = 0", "DELETE FROM cf WHERE id % 400 = 0",
            "UPDATE t SET v = 'after freeze' WHERE id % 23 = 0")
        for _ in range(8):
            sql("UPDATE h SET b = b + 1 WHERE id % 40 = 3")
        sql("SELECT count(*) FROM h WHERE b > 0", "VACUUM t", "VACUUM h",
            "DELETE FROM t WHERE id > 6000", "VACUUM t")
        if logical:
            sql("CREATE TABLE tr (id int)", "INSERT INTO tr SELECT generate_series(1, 100)",
                "TRUNCATE tr", "VACUUM FULL pg_class",
                "SELECT count(*) FROM pg_logical_slot_get_changes('heap_oracle', NULL, 10)",
                "SELECT pg_drop_replication_slot('heap_oracle')")


# --------------------------------------------------------------------------- replay

def features(rec: DecodedRecord) -> list[str]:
    """The flag-driven paths of heap redo a record takes (for coverage assertions)."""
    op = rec.rmgr_info & heap.XLOG_HEAP_OPMASK
    md = rec.main_data
    out = []
    if rec.rmid == RmgrId.HEAP and op == heap.XLOG_HEAP_INSERT:
        flags = md[2]
        if flags & heap.XLH_INSERT_IS_SPECULATIVE:
            out.append("insert speculative")
        if flags & heap.XLH_INSERT_ALL_VISIBLE_CLEARED:
            out.append("insert all-visible cleared")
    elif rec.rmid == RmgrId.HEAP and op == heap.XLOG_HEAP_DELETE:
        if md[7] & heap.XLH_DELETE_IS_PARTITION_MOVE:
            out.append("delete partition move")
        if md[7] & heap.XLH_DELETE_ALL_VISIBLE_CLEARED:
            out.append("delete all-visible cleared")
    elif rec.rmid == RmgrId.HEAP and op in (heap.XLOG_HEAP_UPDATE, heap.XLOG_HEAP_HOT_UPDATE):
        flags = md[7]
        for bit, name in ((heap.XLH_UPDATE_PREFIX_FROM_OLD, "update prefix"),
                          (heap.XLH_UPDATE_SUFFIX_FROM_OLD, "update suffix"),
                          (heap.XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED, "update old all-visible cleared"),
                          (heap.XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED, "update new all-visible cleared")):
            if flags & bit:
                out.append(name)
        out.append("update across pages" if rec.block(1) is not None else "update same page")
    elif rec.rmid == RmgrId.HEAP and op == heap.XLOG_HEAP_LOCK:
        if md[7] & heap.XLH_LOCK_ALL_FROZEN_CLEARED:
            out.append("lock all-frozen cleared")
        if md[6] & heap.XLHL_XMAX_IS_MULTI:
            out.append("lock multixact")
    elif rec.rmid == RmgrId.HEAP2 and op == heap.XLOG_HEAP2_MULTI_INSERT:
        if md[0] & heap.XLH_INSERT_ALL_FROZEN_SET:
            out.append("multi-insert all-frozen set")
        if md[0] & heap.XLH_INSERT_ALL_VISIBLE_CLEARED:
            out.append("multi-insert all-visible cleared")
    return out


FEATURES = {"insert speculative", "insert all-visible cleared", "delete partition move",
            "delete all-visible cleared", "update prefix", "update suffix",
            "update old all-visible cleared", "update new all-visible cleared",
            "update across pages", "update same page", "lock all-frozen cleared",
            "lock multixact", "multi-insert all-frozen set", "multi-insert all-visible cleared"}




def redo_context(datadir: Path) -> RedoContext:
    raw = (datadir / "global" / "pg_control").read_bytes()
    (checksum_version,) = struct.unpack_from("<I", raw, CONTROL_CHECKSUM_VERSION)
    return RedoContext(data_checksums=checksum_version != 0,
                       wal_log_hints=bool(raw[CONTROL_WAL_LOG_HINTS]))


@dataclass
class Mismatch:
    rec: DecodedRecord
    blk_rel: RelTag
    blkno: int
    what: str

    def __str__(self) -> str:
        kind = heap.record_type_name(self.rec) if self.rec.rmid in HEAP_RMGRS else ""
        return (f"{rmgr_name(self.rec.rmid)} {kind} info {self.rec.info:#04x} record at "
                f"{self.rec.lsn} (end {self.rec.end_lsn}), {self.blk_rel} blk {self.blkno}: "
                f"{self.what}")


def describe_difference(ours: bytes, theirs: bytes, context: int = 24) -> str:
    off = masking.first_difference(ours, theirs)
    assert off is not None
    lo = max(0, off - context)
    hi = min(BLCKSZ, off + context)
    return (f"first difference at byte {off}\n"
            f"    ours   [{lo}:{hi}] {ours[lo:hi].hex(' ')}\n"
            f"    theirs [{lo}:{hi}] {theirs[lo:hi].hex(' ')}")


@dataclass
class Replay:
    """Pages of every relation fork, lazily read from a base backup, kept up to date by
    replaying WAL; heap blocks redone by pagestore, everything else by images only."""

    backup: Path
    ctx: RedoContext
    pages: dict[tuple[RelTag, int], bytearray | None] = field(default_factory=dict)
    unknown: set[tuple[RelTag, int]] = field(default_factory=set)
    truncated: dict[RelTag, int] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)
    redone: Counter[str] = field(default_factory=Counter)
    verified: Counter[str] = field(default_factory=Counter)
    verified_records: set[int] = field(default_factory=set)
    verified_features: Counter[str] = field(default_factory=Counter)
    vm_strict: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    def _path(self, rel: RelTag, segno: int) -> Path:
        suffix = ForkNumber(rel.forknum).suffix
        name = f"{rel.relnode}" + (f"_{suffix}" if suffix else "") + (f".{segno}" if segno else "")
        if rel.spcnode == GLOBALTABLESPACE_OID:
            return self.backup / "global" / name
        return self.backup / "base" / str(rel.dbnode) / name

    def get(self, rel: RelTag, blkno: int) -> bytearray | None:
        key = (rel, blkno)
        if key in self.pages:
            return self.pages[key]
        page: bytearray | None = None
        if blkno < self.truncated.get(rel, 1 << 32):
            path = self._path(rel, blkno // RELSEG_SIZE)
            try:
                with open(path, "rb") as f:
                    f.seek((blkno % RELSEG_SIZE) * BLCKSZ)
                    data = f.read(BLCKSZ)
                if len(data) == BLCKSZ:
                    page = bytearray(data)
            except FileNotFoundError:
                pass
        self.pages[key] = page
        return page

    def smgr_truncate(self, rec: DecodedRecord) -> None:
        blkno, spc, db, relnode, flags = XL_SMGR_TRUNCATE.unpack_from(rec.main_data)
        forks = []
        if flags & SMGR_TRUNCATE_HEAP:
            forks.append((RelTag(spc, db, relnode, ForkNumber.MAIN), blkno))
        if flags & SMGR_TRUNCATE_VM:
            vm = RelTag(spc, db, relnode, ForkNumber.VISIBILITYMAP)
            trunc_block = blkno // HEAPBLOCKS_PER_PAGE
            trunc_byte = (blkno % HEAPBLOCKS_PER_PAGE) // 4
            trunc_offs = (blkno % 4) * 2
            if trunc_byte or trunc_offs:
                page = self.get(vm, trunc_block)
                if page is not None and not page_is_new(page):
                    vm_truncate(page, trunc_byte, trunc_offs)
                trunc_block += 1
            forks.append((vm, trunc_block))
        for rel, nblocks in forks:
            self.truncated[rel] = min(self.truncated.get(rel, 1 << 32), nblocks)
            for key in [k for k in self.pages if k[0] == rel and k[1] >= nblocks]:
                self.pages[key] = None
                self.unknown.discard(key)

    def apply(self, rec: DecodedRecord) -> None:
        if rec.rmid == RmgrId.SMGR and rec.rmgr_info == XLOG_SMGR_TRUNCATE:
            self.smgr_truncate(rec)
        if rec.rmid == RmgrId.XLOG and rec.rmgr_info == XLOG_PARAMETER_CHANGE:
            self.ctx = RedoContext(data_checksums=self.ctx.data_checksums,
                                   wal_log_hints=bool(rec.main_data[WAL_LOG_HINTS_AT]))
        is_heap = rec.rmid in HEAP_RMGRS
        kind = f"{rmgr_name(rec.rmid)}/{heap.record_type_name(rec)}" if is_heap else ""
        if is_heap:
            self.seen[kind] += 1
            # visibilitymap_clear of the heap blocks the record changes: done before and
            # regardless of the heap page's own redo, extending the VM fork if needed.
            for clear in heap.vm_clears(rec):
                key = (clear.vm_rel, clear.vm_blkno)
                if key in self.unknown:
                    continue
                vm_page = self.get(clear.vm_rel, clear.vm_blkno)
                if vm_page is None:
                    vm_page = bytearray(BLCKSZ)
                    self.pages[key] = vm_page
                heap.vm_clear(vm_page, clear.heap_blkno, clear.flags)
        redone: set[int] = set()
        for blk in rec.blocks:
            key = (blk.rel, blk.blkno)
            if blk.apply_image:
                img = bytearray(restore_block_image(blk, rec.lsn))
                if not page_is_new(img):
                    page_set_lsn(img, rec.end_lsn)
                self.pages[key] = img
                self.unknown.discard(key)
                continue
            if not is_heap:
                if rec.rmid == RmgrId.XLOG:
                    continue  # FPI_FOR_HINT blocks without an image
                self.unknown.add(key)  # another rmgr's incremental change: not tracked
                continue
            if key in self.unknown:
                continue
            page = self.get(blk.rel, blk.blkno)
            if blk.will_init:
                page = bytearray(BLCKSZ)
            elif page is None or page_is_new(page):
                if heap.read_mode(rec, blk.block_id) is not ReadMode.ZERO_ON_ERROR:
                    continue  # BLK_NOTFOUND
                page = page if page is not None else bytearray(BLCKSZ)
            elif page_get_lsn(page) >= rec.end_lsn:
                continue  # BLK_DONE
            try:
                heap.redo_block(self.ctx, rec, blk.block_id, page)
            except Exception as e:
                self.mismatches.append(Mismatch(rec, blk.rel, blk.blkno,
                                                f"redo failed: {type(e).__name__}: {e}"))
                self.unknown.add(key)
                continue
            self.pages[key] = page
            redone.add(blk.block_id)
            self.redone[kind] += 1
        if is_heap and rec.info & XLR_CHECK_CONSISTENCY:
            self.check(rec, kind, redone)

    def check(self, rec: DecodedRecord, kind: str, redone: set[int]) -> None:
        """verifyBackupPageConsistency, plus a bit-exact comparison of VM pages."""
        for blk in rec.blocks:
            if not blk.has_image or blk.apply_image:
                continue
            key = (blk.rel, blk.blkno)
            if key in self.unknown:
                continue
            ours = self.pages.get(key)
            if ours is None or page_get_lsn(ours) > rec.end_lsn:
                continue
            theirs = restore_block_image(blk, rec.lsn)
            try:
                a = masking.mask_page(rec.rmid, ours, blk.rel.forknum, blk.blkno)
                b = masking.mask_page(rec.rmid, theirs, blk.rel.forknum, blk.blkno)
            except Exception as e:  # e.g. our page is new where PostgreSQL's is not
                self.mismatches.append(Mismatch(rec, blk.rel, blk.blkno,
                                                f"cannot mask: {type(e).__name__}: {e}"))
                self.pages[key] = bytearray(theirs)
                continue
            if a != b:
                self.mismatches.append(Mismatch(rec, blk.rel, blk.blkno,
                                                "masked pages differ: "
                                                + describe_difference(a, b)))
                self.pages[key] = bytearray(theirs)  # resynchronise: report each bug once
                continue
            if blk.rel.forknum == ForkNumber.VISIBILITYMAP:
                a = masking.mask_vm_page_strict(ours)
                b = masking.mask_vm_page_strict(theirs)
                if a != b:
                    self.mismatches.append(Mismatch(rec, blk.rel, blk.blkno,
                                                    "VM pages differ: "
                                                    + describe_difference(a, b)))
                    self.pages[key] = bytearray(theirs)
                    continue
                self.vm_strict += 1
            if blk.block_id in redone:
                self.verified[kind] += 1
                if rec.lsn not in self.verified_records:
                    self.verified_records.add(rec.lsn)
                    self.verified_features.update(features(rec))


def replay(backup: Path, start: Lsn, wal_dir: Path) -> Replay:
    r = Replay(backup, redo_context(backup))
    for rec in read_wal_records(find_segments([wal_dir]), start):
        r.apply(rec)
    return r


# --------------------------------------------------------------------------- the test

CONFIGS = {
    "default": {},
    "wal_log_hints": {"wal_log_hints": "on", "wal_compression": "lz4"},
    "logical": {"wal_level": "logical"},
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_heap_redo_matches_postgres_after_images(pg_factory, work_dir: Path,
                                                 config: str) -> None:
    settings = {"wal_consistency_checking": "'all'", "full_page_writes": "on",
                "autovacuum": "off", "wal_keep_size": "'4GB'", "max_wal_size": "'4GB'",
                **CONFIGS[config]}
    primary = pg_factory(settings=settings)
    start = pg_basebackup(primary, work_dir / "backup")
    run_heap_workload(primary, logical=config == "logical")
    primary.stop()

    r = replay(work_dir / "backup", start, primary.datadir / "pg_wal")
    assert r.ctx.wal_log_hints == (config == "wal_log_hints")

    summary = (f"heap records {dict(sorted(r.seen.items()))}\n"
               f"redone blocks {dict(sorted(r.redone.items()))}\n"
               f"verified blocks {dict(sorted(r.verified.items()))}\n"
               f"verified records {len(r.verified_records)}, VM pages bit-exact {r.vm_strict}\n"
               f"verified paths {dict(sorted(r.verified_features.items()))}")
    print(summary)
    if r.mismatches:
        shown = "\n".join(str(m) for m in r.mismatches[:20])
        pytest.fail(f"{len(r.mismatches)} mismatches with PostgreSQL's after-images:\n{shown}\n"
                    f"{summary}")
    verified = {k.removesuffix("+INIT") for k in r.verified} | set(r.verified)
    assert REQUIRED <= verified, f"not verified: {REQUIRED - verified}\n{summary}"
    assert EXPECTED_TOO <= verified, f"not verified: {EXPECTED_TOO - verified}\n{summary}"
    assert r.vm_strict > 0, summary
    expected = FEATURES - ({"update prefix", "update suffix"} if config == "logical" else set())
    assert expected <= set(r.verified_features), \
        f"paths not verified: {expected - set(r.verified_features)}\n{summary}"
    assert sum(r.verified.values()) > 1000, summary
    if config == "logical":
        # no block references: nothing to redo, but replay went through them
        assert {"Heap/TRUNCATE", "Heap2/NEW_CID", "Heap2/REWRITE"} <= set(r.seen), summary

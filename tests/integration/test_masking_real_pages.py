"""Masks on real PostgreSQL 15 pages.

1. Pages read from a stopped primary's data directory (a heap with updates, deletes and
   hint bits, btree indexes with a root, leaves and deleted pages, a frozen table and its
   visibility map, a sequence): masking is idempotent, keeps the page structure, hides what
   PostgreSQL hides and shows everything else.
2. The oracle: the same relations on a streaming standby that replayed the primary's WAL.
   After masking with the record's rmgr mask, primary and standby pages must be equal --
   the equality wal_consistency_checking relies on -- while their raw bytes differ (hint
   bits and killed index items are set on the primary without WAL).  Visibility map pages
   agree bit for bit under our strict rule.  Sequence pages differ even after masking:
   nextval WAL-logs 32 values ahead, so the primary's tuple is not the replayed one.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from pagestore.pg.cluster import PgCluster, as_server_user, free_port, give_to_server_user
from pagestore.pg.controlfile import ControlFile
from pagestore.pg.rmgr import RmgrId
from pagestore.redo import bufpage
from pagestore.redo import masking as m
from tests.fixtures.postgres import PgFactory
from tests.fixtures.util import wait_until

BLCKSZ = 8192
# PageHeaderData: lsn hi u32, lsn lo u32, checksum u16, flags u16, lower u16, upper u16,
# special u16, pagesize_version u16, prune_xid u32
HDR = struct.Struct("<IIHHHHHHI")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
# BTPageOpaqueData: prev, next, level, flags, cycleid
BTOPAQUE = struct.Struct("<IIIHH")
# BTMetaPageData (after the page header): magic, version, root, level
BTMETA = struct.Struct("<IIII")

WORKLOAD = [
    "CREATE TABLE t (id int PRIMARY KEY, v text)",
    "CREATE INDEX t_v ON t (v)",
    "INSERT INTO t SELECT g, repeat(chr(97 + g % 26), g % 13) FROM generate_series(1, 3000) g",
    # two commands in one transaction: the second update's tuples carry t_cid 1
    "BEGIN; UPDATE t SET v = v || 'u' WHERE id % 7 = 0; "
    "UPDATE t SET v = v || 'w' WHERE id % 5 = 0; COMMIT",
    "DELETE FROM t WHERE id % 11 = 0",
    "INSERT INTO t VALUES (100000, 'speculative') ON CONFLICT DO NOTHING",
    "INSERT INTO t VALUES (1, 'dup') ON CONFLICT (id) DO UPDATE SET v = 'upserted'",
    "CREATE TABLE f AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
    "VACUUM (FREEZE) f",
    "UPDATE f SET v = 'changed' WHERE id % 500 = 0",
    "CREATE TABLE d (id int)",
    "INSERT INTO d SELECT generate_series(1, 50000)",
    "CREATE INDEX d_id ON d (id)",
    "DELETE FROM d WHERE id > 2000",
    "VACUUM d",
    "CREATE SEQUENCE s",
    "SELECT nextval('s') FROM generate_series(1, 3)",
    # Primary only, no WAL: hint bits on every heap tuple, killed items on index leaves.
    "SELECT count(*) FROM t",
    "SELECT count(*) FROM f",
    "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off; "
    "SELECT count(*) FROM t WHERE v >= ''",
]

# relation -> rmgr whose mask applies to its main fork
RELATIONS = {"t": RmgrId.HEAP, "t_pkey": RmgrId.BTREE, "t_v": RmgrId.BTREE,
             "f": RmgrId.HEAP, "d": RmgrId.HEAP, "d_id": RmgrId.BTREE, "s": RmgrId.SEQ}


def run_workload(cluster: PgCluster) -> dict[str, str]:
    for sql in WORKLOAD:
        cluster.psql(sql)
    return {name: cluster.psql(f"SELECT pg_relation_filepath('{name}')") for name in RELATIONS}


def read_pages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data and len(data) % BLCKSZ == 0, path
    return [data[i:i + BLCKSZ] for i in range(0, len(data), BLCKSZ)]


def lp(page: bytes | bytearray, offnum: int) -> tuple[int, int, int]:
    word = U32.unpack_from(page, 24 + 4 * (offnum - 1))[0]
    return word & 0x7FFF, (word >> 15) & 3, word >> 17


def max_offset(page: bytes | bytearray) -> int:
    lower: int = HDR.unpack_from(page)[4]
    return max(0, (lower - 24) // 4)


def normal_items(page: bytes | bytearray) -> list[tuple[int, int, int]]:
    """(offnum, lp_off, lp_len) of every LP_NORMAL item."""
    return [(i, off, ln) for i in range(1, max_offset(page) + 1)
            for off, flags, ln in [lp(page, i)] if flags == bufpage.LP_NORMAL]


def bt_flags(page: bytes | bytearray) -> tuple[int, int]:
    special = HDR.unpack_from(page)[6]
    return special, BTOPAQUE.unpack_from(page, special)[3]


def test_masks_on_real_pages(pg_factory: PgFactory) -> None:
    primary = pg_factory(settings={"autovacuum": "off"})
    files = run_workload(primary)
    primary.psql("CHECKPOINT")
    primary.stop()
    pages = {name: read_pages(primary.datadir / path) for name, path in files.items()}

    # Every page: idempotent, structure kept (nothing PG15 masks here zeroes pd_lower).
    for name, rmid in RELATIONS.items():
        for blkno, page in enumerate(pages[name]):
            out = m.mask_page(rmid, page, blkno=blkno)
            assert m.mask_page(rmid, out, blkno=blkno) == out, (name, blkno)
            assert HDR.unpack_from(out)[4:8] == HDR.unpack_from(page)[4:8], (name, blkno)
            assert out[:10] == bytes(10)

    # Heap: hint bits hidden, data, xmin and xmax not.
    heap = pages["t"]
    unfrozen = [(b, i, off, ln) for b, page in enumerate(heap) for i, off, ln in normal_items(page)
                if U16.unpack_from(page, off + 20)[0] & m.HEAP_XMIN_FROZEN != m.HEAP_XMIN_FROZEN]
    assert len(unfrozen) > 2000
    hinted = sum(1 for b, _i, off, _ln in unfrozen
                 if U16.unpack_from(heap[b], off + 20)[0] & m.HEAP_XMIN_COMMITTED)
    assert hinted > 2000  # the primary's SELECT set them
    blkno, _i, off, ln = unfrozen[len(unfrozen) // 2]
    page = heap[blkno]
    base = m.mask_page(RmgrId.HEAP, page, blkno=blkno)
    flipped = bytearray(page)
    U16.pack_into(flipped, off + 20, U16.unpack_from(page, off + 20)[0] ^ m.HEAP_XMIN_COMMITTED)
    assert m.mask_page(RmgrId.HEAP, flipped, blkno=blkno) == base
    assert m.first_difference(m.mask_vm_page_strict(page),
                              m.mask_vm_page_strict(flipped)) == off + 21
    # Stale bytes in a tuple's MAXALIGN padding are hidden too.
    b2, _i2, off2, ln2 = next(u for u in unfrozen if u[3] % 8)
    padded = bytearray(heap[b2])
    padded[off2 + ln2] ^= 0xFF
    assert m.mask_page(RmgrId.HEAP, padded, blkno=b2) == m.mask_page(RmgrId.HEAP, heap[b2], blkno=b2)
    t_hoff = page[off + 22]
    for pos in (off + t_hoff, off + ln - 1, off, off + 4):  # data, last data byte, xmin, xmax
        changed = bytearray(page)
        changed[pos] ^= 0x01
        assert m.first_difference(base, m.mask_page(RmgrId.HEAP, changed, blkno=blkno)) == pos

    # A tuple written by the second command of its transaction has t_cid 1 on the primary.
    assert any(U32.unpack_from(p, off + 8)[0] == 1 for p in heap for _i, off, _ln in normal_items(p))

    # Btree: the t_pkey root is an internal page, its leaves are leaves.
    index = pages["t_pkey"]
    _magic, _version, root, level = BTMETA.unpack_from(index[0], 24)
    assert level >= 1
    leaf_blkno = next(b for b, p in enumerate(index) if b and bt_flags(p)[1] & m.BTP_LEAF)
    leaf = index[leaf_blkno]
    special, flags = bt_flags(leaf)
    noisy = bytearray(leaf)
    BTOPAQUE.pack_into(noisy, special, *BTOPAQUE.unpack_from(leaf, special)[:3],
                       flags | m.BTP_HAS_GARBAGE | m.BTP_SPLIT_END, 0x2A)
    word = U32.unpack_from(leaf, 28)[0]
    U32.pack_into(noisy, 28, word | bufpage.LP_DEAD << 15)  # kill item 2
    leaf_masked = m.mask_page(RmgrId.BTREE, leaf)
    assert noisy != leaf and m.mask_page(RmgrId.BTREE, noisy) == leaf_masked
    key = lp(leaf, 3)[0] + 8  # first byte of item 3's key (IndexTupleData is 8 bytes)
    changed = bytearray(leaf)
    changed[key] ^= 0x01
    assert m.first_difference(leaf_masked, m.mask_page(RmgrId.BTREE, changed)) == key
    internal = bytearray(index[root])
    assert not bt_flags(internal)[1] & m.BTP_LEAF
    root_masked = m.mask_page(RmgrId.BTREE, internal)
    U32.pack_into(internal, 28, U32.unpack_from(internal, 28)[0] | bufpage.LP_DEAD << 15)
    assert m.first_difference(root_masked, m.mask_page(RmgrId.BTREE, internal)) == 30

    # Deleted btree pages: PG15 keeps their header and safexid, hides their stale content.
    deleted = [(b, p) for b, p in enumerate(pages["d_id"]) if b and bt_flags(p)[1] & m.BTP_DELETED]
    assert len(deleted) > 50
    for blkno, page in deleted:
        special, flags = bt_flags(page)
        assert HDR.unpack_from(page)[4:6] == (32, special)
        assert flags & (1 << 8)  # BTP_HAS_FULLXID: BTDeletedPageData at offset 24
        out = m.mask_page(RmgrId.BTREE, page, blkno=blkno)
        assert out[32:special] == bytes(special - 32)
        assert page[32:special] != bytes(special - 32)  # the old tuples are still there
        xid, epoch = struct.unpack_from("<II", page, 24)
        lp_flag_bits = 0x18000 if flags & m.BTP_LEAF else 0  # safexid read as 2 lps on leaves
        assert struct.unpack_from("<II", out, 24) == (xid & ~lp_flag_bits, epoch & ~lp_flag_bits)
        assert out[special:special + 12] == page[special:special + 12]

    # Sequence: seq_mask hides no hint bits.
    (seq,) = pages["s"]
    special = HDR.unpack_from(seq)[6]
    assert U32.unpack_from(seq, special)[0] == 0x1717  # SEQ_MAGIC
    (_i, off, _ln), = normal_items(seq)
    hint = bytearray(seq)
    U16.pack_into(hint, off + 20, U16.unpack_from(seq, off + 20)[0] ^ m.HEAP_XMAX_INVALID)
    assert m.first_difference(m.mask_page(RmgrId.SEQ, seq),
                              m.mask_page(RmgrId.SEQ, hint)) == off + 21
    assert m.mask_page(RmgrId.HEAP, seq) == m.mask_page(RmgrId.HEAP, hint)

    # Visibility map: heap_mask (the mask of Heap2 VISIBLE) hides the whole bitmap.
    (vm,) = read_pages(primary.datadir / (files["f"] + "_vm"))
    assert HDR.unpack_from(vm)[4:7] == (24, BLCKSZ, BLCKSZ)
    assert vm[24:] != bytes(BLCKSZ - 24)
    assert m.mask_page(RmgrId.HEAP2, vm, forknum=2)[24:] == bytes(BLCKSZ - 24)
    strict = m.mask_vm_page_strict(vm)
    assert strict[10:] == vm[10:]
    bit = bytearray(vm)
    bit[25] ^= 0x04
    assert m.mask_page(RmgrId.HEAP2, bit, forknum=2) == m.mask_page(RmgrId.HEAP2, vm, forknum=2)
    assert m.first_difference(strict, m.mask_vm_page_strict(bit)) == 25


def make_standby(primary: PgCluster, base: Path) -> PgCluster:
    datadir = base / "standby" / "pgdata"
    datadir.parent.mkdir(parents=True)
    give_to_server_user(datadir.parent)
    subprocess.run(as_server_user(
        [primary.bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
         "-U", primary.user, "-D", str(datadir), "-X", "stream", "-R", "-c", "fast",
         "--no-sync"]), check=True, capture_output=True, timeout=300)
    standby = PgCluster(datadir=datadir, port=free_port(), bin_dir=primary.bin_dir,
                        logfile=base / "standby" / "postgres.log")
    standby.logfile.touch()
    give_to_server_user(standby.logfile)
    standby.set_port(standby.port)
    return standby


def test_primary_and_standby_agree_after_masking(pg_factory: PgFactory, work_dir: Path) -> None:
    primary = pg_factory(settings={"autovacuum": "off"})
    standby = make_standby(primary, work_dir)
    try:
        standby.start()
        files = run_workload(primary)
        primary.psql("CHECKPOINT")
        primary.stop()  # its shutdown checkpoint is streamed before the walsender exits
        ckpt = ControlFile.parse((primary.datadir / "global" / "pg_control").read_bytes())
        target = f"{ckpt.checkpoint_lsn >> 32:X}/{ckpt.checkpoint_lsn & 0xFFFFFFFF:X}"
        wait_until(lambda: standby.psql(
            f"SELECT pg_last_wal_replay_lsn() > '{target}'::pg_lsn") == "t",
            what=f"standby replay past {target}")
        standby.stop()  # a shutdown restartpoint at that checkpoint flushes every page
    finally:
        standby.stop("immediate")

    raw_differences = {"heap": 0, "btree": 0}
    for name, rmid in RELATIONS.items():
        ours = read_pages(primary.datadir / files[name])
        theirs = read_pages(standby.datadir / files[name])
        assert len(ours) == len(theirs), name
        for blkno, (p, s) in enumerate(zip(ours, theirs, strict=True)):
            mp = m.mask_page(rmid, p, blkno=blkno)
            ms = m.mask_page(rmid, s, blkno=blkno)
            if rmid == RmgrId.SEQ:
                # nextval logs the state 32 values ahead: only the tuple's data differs.
                (_i, off, ln), = normal_items(p)
                pos = m.first_difference(mp, ms)
                assert pos is not None and off + p[off + 22] <= pos < off + ln, pos
                continue
            assert m.first_difference(mp, ms) is None, (name, blkno, m.first_difference(mp, ms))
            if p != s:
                raw_differences["heap" if rmid == RmgrId.HEAP else "btree"] += 1
    assert raw_differences["heap"] > 10 and raw_differences["btree"] > 0, raw_differences

    compared = 0
    for name in ("t", "f", "d"):
        ours_vm = primary.datadir / (files[name] + "_vm")
        theirs_vm = standby.datadir / (files[name] + "_vm")
        if not (ours_vm.exists() and theirs_vm.exists()):
            continue
        for p, s in zip(read_pages(ours_vm), read_pages(theirs_vm), strict=True):
            assert m.first_difference(m.mask_vm_page_strict(p), m.mask_vm_page_strict(s)) is None
            compared += 1
    assert compared >= 2

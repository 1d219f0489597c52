"""WalIngest: decoded WAL records -> (key, lsn, value) for the key space.

Source of truth for what each record changes: PostgreSQL 15's redo routines (heapam.c,
xact.c, storage.c, dbcommands.c, clog.c, multixact.c, relmapper.c, xlog.c), summarised in
shared/reference/pg15-wal-facts.md section 3, and Neon's walingest.rs for the key-space
conventions.

Rules:
- Every value produced for a record is stamped with the record's end LSN (EndRecPtr).
- Values come out as (18-byte key, lsn, value): key bytes are the currency from here to
  the in-memory layer, the layer writer and the subscribers (no Key object per value).
- One value per block reference: the restored page image when the record carries an
  image to apply (BKPIMAGE_APPLY; its pd_lsn is set to the end LSN, as redo does),
  otherwise the record itself (values.pg_record, will_init from BKPBLOCK_WILL_INIT).
  Check-only images (wal_consistency_checking) are never applied.
- Heap records that clear visibility-map bits without registering the VM page produce
  ClearVmBits values on the VM page (facts sheet 3.12).
- Metadata keys (relation sizes and directories, database directory, SLRU segments,
  relmap, twophase, checkpoint, the newest commit timestamp) are kept current in
  ``TimelineState`` and written as whole images whenever they change; an empty image
  marks a removed key.
- A record whose rmgr or type this code does not know raises UnsupportedWalRecord naming
  the rmgr and info.  Nothing is guessed.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pagestore import metadata, values
from pagestore.errors import UnsupportedWalRecord
from pagestore.keys import (
    BLCKSZ,
    SLRU_PAGES_PER_SEGMENT,
    ForkNumber,
    Key,
    RelTag,
    SlruKind,
    checkpoint_key,
    commit_timestamp_key,
    dbdir_key,
    rel_block_key,
    rel_block_key_bytes,
    rel_size_key,
    relmap_key,
    slru_block_key,
    slru_dir_key,
    slru_segment_size_key,
    twophase_dir_key,
    twophase_file_key,
)
from pagestore.lsn import Lsn
from pagestore.pg.controlfile import CheckPoint
from pagestore.pg.rmgr import RmgrId, rmgr_name
from pagestore.pg.xlogrecord import BlockReference, DecodedRecord, restore_block_image
from pagestore.redo import heap as heap_redo
from pagestore.redo import visibilitymap as vm
from pagestore.redo.bufpage import new_page
from pagestore.reldir import RelDir
from pagestore.timestamps import COMMIT_TIMESTAMP

log = logging.getLogger(__name__)

# CLOG / multixact SLRU geometry (clog.c, multixact.c).
CLOG_XACTS_PER_PAGE = BLCKSZ * 4
MULTIXACT_OFFSETS_PER_PAGE = BLCKSZ // 4
MULTIXACT_MEMBERS_PER_PAGE = 1636
TRANSACTION_STATUS_COMMITTED = 1
TRANSACTION_STATUS_ABORTED = 2

ZERO_PAGE = bytes(BLCKSZ)
EMPTY_VM_PAGE = bytes(new_page(0))  # vm_extend: PageInit'd pages with no bits set

# Record type constants (info & 0xF0 unless noted).
XLOG_CHECKPOINT_SHUTDOWN = 0x00
XLOG_CHECKPOINT_ONLINE = 0x10
XLOG_NEXTOID = 0x30
XLOG_FPI_FOR_HINT = 0xA0
XLOG_FPI = 0xB0
XLOG_NO_EFFECT = {0x20, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xD0}  # NOOP..END_OF_RECOVERY, OVERWRITE

XACT_OPMASK = 0x70
XLOG_XACT_HAS_INFO = 0x80
XLOG_XACT_COMMIT = 0x00
XLOG_XACT_PREPARE = 0x10
XLOG_XACT_ABORT = 0x20
XLOG_XACT_COMMIT_PREPARED = 0x30
XLOG_XACT_ABORT_PREPARED = 0x40
XLOG_XACT_ASSIGNMENT = 0x50
XLOG_XACT_INVALIDATIONS = 0x60
XACT_XINFO_HAS_DBINFO = 1 << 0
XACT_XINFO_HAS_SUBXACTS = 1 << 1
XACT_XINFO_HAS_RELFILENODES = 1 << 2
XACT_XINFO_HAS_INVALS = 1 << 3
XACT_XINFO_HAS_TWOPHASE = 1 << 4
XACT_XINFO_HAS_DROPPED_STATS = 1 << 8

XLOG_SMGR_CREATE = 0x10
XLOG_SMGR_TRUNCATE = 0x20
SMGR_TRUNCATE_HEAP = 0x01
SMGR_TRUNCATE_VM = 0x02
SMGR_TRUNCATE_FSM = 0x04

XLOG_DBASE_CREATE_FILE_COPY = 0x00
XLOG_DBASE_CREATE_WAL_LOG = 0x10
XLOG_DBASE_DROP = 0x20

XLOG_CLOG_ZEROPAGE = 0x00
XLOG_CLOG_TRUNCATE = 0x10

XLOG_MULTIXACT_ZERO_OFF_PAGE = 0x00
XLOG_MULTIXACT_ZERO_MEM_PAGE = 0x10
XLOG_MULTIXACT_CREATE_ID = 0x20
XLOG_MULTIXACT_TRUNCATE_ID = 0x30

XLOG_RELMAP_UPDATE = 0x00
XLOG_RUNNING_XACTS = 0x10


# Main-data structs (little-endian).
I32 = struct.Struct("<i")
U32 = struct.Struct("<I")
I64 = struct.Struct("<q")
REL_FILE_NODE = struct.Struct("<III")
SMGR_CREATE = struct.Struct("<IIIi")        # RelFileNode, forkNum
SMGR_TRUNCATE = struct.Struct("<IIIIi")     # blkno, RelFileNode, flags
DBASE_FILE_COPY = struct.Struct("<IIII")    # db_id, tablespace_id, src_db_id, src_tablespace_id
DBASE_DROP_HEAD = struct.Struct("<Ii")      # db_id, ntablespaces
RELMAP_UPDATE_HEAD = struct.Struct("<IIi")  # dbid, tsid, nbytes
MULTIXACT_CREATE_HEAD = struct.Struct("<IIi")  # mid, moff, nmembers
MULTIXACT_MEMBER = struct.Struct("<II")     # xid, status
MULTIXACT_TRUNCATE = struct.Struct("<IIIII")  # oldestMultiDB, startTruncOff, endTruncOff, startTruncMemb, endTruncMemb
CLOG_TRUNCATE = struct.Struct("<iII")       # pageno, oldestXact, oldestXactDb
RUNNING_XACTS_HEAD = struct.Struct("<ii?3xIII")  # xcnt, subxcnt, overflow, nextXid, oldestRunningXid, latestCompletedXid

PD_LSN = struct.Struct("<II")   # PageXLogRecPtr: xlogid (high), xrecoff (low)
PD_UPPER = struct.Struct("<H")

PageReader = Callable[[Key, Lsn], bytes]


@dataclass(slots=True)
class TimelineState:
    """The metadata a timeline has at the last ingested LSN (kept in memory by ingest,
    rebuilt from layer files on restart)."""

    dbdir: dict[tuple[int, int], bool] = field(default_factory=dict)
    reldirs: dict[tuple[int, int], RelDir] = field(default_factory=dict)
    relsizes: dict[RelTag, int] = field(default_factory=dict)
    slru_dirs: dict[SlruKind, set[int]] = field(default_factory=lambda: {k: set() for k in SlruKind})
    slru_sizes: dict[tuple[SlruKind, int], int] = field(default_factory=dict)
    twophase: set[int] = field(default_factory=set)
    checkpoint: CheckPoint | None = None
    control: bytes | None = None
    #: The newest commit timestamp so far (TimestampTz; pagestore.timestamps), or None.
    commit_timestamp: int | None = None


_RM_XLOG, _RM_HEAP, _RM_HEAP2 = int(RmgrId.XLOG), int(RmgrId.HEAP), int(RmgrId.HEAP2)
_COMMIT_TIMESTAMP_KEY = commit_timestamp_key()

#: What ingest produces: (18-byte key, LSN, value).
Values = list[tuple[bytes, int, bytes]]


@dataclass(slots=True)
class _Batch:
    """The values one record produces."""

    lsn: Lsn
    out: Values
    meta: dict[Key, bytes] = field(default_factory=dict)
    blocks: set[bytes] = field(default_factory=set)

    def put(self, key: Key, value: bytes) -> None:
        self.put_raw(key.to_bytes(), value)

    def put_raw(self, kb: bytes, value: bytes) -> None:
        if kb in self.blocks:
            raise UnsupportedWalRecord(f"the WAL record ending at {self.lsn} changes key "
                                       f"{kb.hex().upper()} twice")
        self.blocks.add(kb)
        self.out.append((kb, self.lsn, value))

    def put_meta(self, key: Key, data: bytes) -> None:
        self.meta[key] = data


class WalIngest:
    """Turns decoded records into values, keeping ``state`` current.

    ``read_page(key, lsn)`` returns a self-sufficient value (an image or a Materialize
    chain) for a key as of an LSN; it is needed only for CREATE DATABASE ... STRATEGY
    FILE_COPY, which copies every page of the source database.
    """

    def __init__(self, state: TimelineState, read_page: PageReader | None = None) -> None:
        self.state = state
        self.read_page = read_page
        self._pre_initialized_offsets_page: int | None = None

    # ------------------------------------------------------------------ entry
    def ingest(self, rec: DecodedRecord, out: Values) -> None:
        batch = _Batch(rec.end_lsn, out)
        rmid = rec.header.xl_rmid
        relsizes = self.state.relsizes
        extents: dict[RelTag, int] = {}
        for blk in rec.blocks:
            if self._put_block(batch, rec, blk):
                rel = blk.rel
                nblocks = blk.blkno + 1
                size = relsizes.get(rel)
                if size is None or nblocks > size:  # else _extend_rel has nothing to do
                    extents[rel] = max(extents.get(rel, 0), nblocks)
        # Sizes after every block is in place, so a gap filler never shadows a block ref.
        for rel, nblocks in extents.items():
            self._extend_rel(batch, rel, nblocks)
        if rmid == _RM_HEAP or rmid == _RM_HEAP2:
            self._heap_vm_clears(batch, rec)
        handler = _HANDLERS.get(rmid)
        if handler is None:
            if rmid >= 128 or rmid > RmgrId.LOGICALMSG:
                raise UnsupportedWalRecord(
                    f"unsupported WAL record at {rec.lsn}: resource manager {rec.rmgr_name} "
                    f"(id {rmid}), info {rec.info:#04x}")
        else:
            handler(self, batch, rec)
        st = self.state
        if st.checkpoint is not None and rec.xid and st.checkpoint.advance_next_xid(rec.xid):
            batch.put_meta(checkpoint_key(), st.checkpoint.pack())
        for key, data in batch.meta.items():
            out.append((key.to_bytes(), batch.lsn, values.image(data)))

    # ------------------------------------------------------------------ blocks
    def _put_block(self, batch: _Batch, rec: DecodedRecord, blk: BlockReference) -> bool:
        """Store the value for one block reference; False if redo ignores the block."""
        if rec.header.xl_rmid == _RM_XLOG and not blk.apply_image:
            info = rec.rmgr_info
            if info == XLOG_FPI_FOR_HINT:
                return False  # redo skips blocks without an image
            raise UnsupportedWalRecord(
                f"WAL record at {rec.lsn} (XLOG info {rec.info:#04x}) has block "
                f"{blk.block_id} without an image to apply")
        key = rel_block_key_bytes(blk.rel, blk.blkno)
        if blk.apply_image:
            page = bytearray(restore_block_image(blk, rec.lsn))
            if PD_UPPER.unpack_from(page, 14)[0] != 0:  # !PageIsNew: redo stamps the LSN
                PD_LSN.pack_into(page, 0, batch.lsn >> 32, batch.lsn & 0xFFFF_FFFF)
            batch.put_raw(key, values.image(bytes(page)))
        else:
            batch.put_raw(key, values.pg_record(rec.raw, blk.block_id, blk.will_init))
        return True

    def _ensure_rel(self, batch: _Batch, rel: RelTag) -> bool:
        """Create the relation fork (size 0) if unknown; True if it was created."""
        st = self.state
        if rel in st.relsizes:
            return False
        dbkey = (rel.spcnode, rel.dbnode)
        if dbkey not in st.dbdir:
            st.dbdir[dbkey] = False
            batch.put_meta(dbdir_key(), metadata.encode_dbdir(st.dbdir))
        for key, value in st.reldirs.setdefault(dbkey, RelDir()).add(
                *dbkey, (rel.relnode, rel.forknum)).items():
            batch.put_meta(key, value)
        st.relsizes[rel] = 0
        batch.put_meta(rel_size_key(rel), metadata.encode_nblocks(0))
        return True

    def _extend_rel(self, batch: _Batch, rel: RelTag, nblocks: int) -> None:
        st = self.state
        self._ensure_rel(batch, rel)
        old = st.relsizes[rel]
        if nblocks <= old:
            return
        # Redo extends the file with zero pages up to the block it reads (XLogReadBufferExtended).
        for gap in range(old, nblocks - 1):
            gkey = rel_block_key_bytes(rel, gap)
            if gkey not in batch.blocks:
                batch.put_raw(gkey, values.image(ZERO_PAGE))
        st.relsizes[rel] = nblocks
        batch.put_meta(rel_size_key(rel), metadata.encode_nblocks(nblocks))

    def _set_rel_size(self, batch: _Batch, rel: RelTag, nblocks: int) -> None:
        self.state.relsizes[rel] = nblocks
        batch.put_meta(rel_size_key(rel), metadata.encode_nblocks(nblocks))

    def _drop_rel(self, batch: _Batch, rel: RelTag) -> None:
        st = self.state
        if rel not in st.relsizes:
            return
        del st.relsizes[rel]
        batch.put_meta(rel_size_key(rel), b"")
        dbkey = (rel.spcnode, rel.dbnode)
        rels = st.reldirs.get(dbkey)
        if rels is not None:
            for key, value in rels.discard(*dbkey, (rel.relnode, rel.forknum)).items():
                batch.put_meta(key, value)

    # ------------------------------------------------------------------ heap / VM
    def _heap_vm_clears(self, batch: _Batch, rec: DecodedRecord) -> None:
        """The VM bits heap records clear without registering the VM page (heapam.c
        redo calls visibilitymap_clear): a ClearVmBits value on that VM page, or, when
        the page does not exist yet, the PageInit'd pages vm_extend adds up to it (whose
        bits are clear already)."""
        clears = heap_redo.vm_clears(rec)
        if not clears:
            return
        by_page: dict[tuple[RelTag, int], list[heap_redo.VmClear]] = {}
        for c in clears:
            by_page.setdefault((c.vm_rel, c.vm_blkno), []).append(c)
        st = self.state
        for (vm_rel, vm_blk), items in sorted(by_page.items()):
            self._ensure_rel(batch, vm_rel)
            size = st.relsizes[vm_rel]
            if vm_blk >= size:
                for blk in range(size, vm_blk + 1):
                    batch.put(rel_block_key(vm_rel, blk), values.image(EMPTY_VM_PAGE))
                self._set_rel_size(batch, vm_rel, vm_blk + 1)
                continue
            flags = 0
            for c in items:
                flags |= c.flags
            blk1 = items[0].heap_blkno
            blk2 = items[1].heap_blkno if len(items) > 1 and items[1].heap_blkno != blk1 \
                else values.NO_BLOCK
            batch.put(rel_block_key(vm_rel, vm_blk), values.clear_vm_bits(blk1, blk2, flags))

    # ------------------------------------------------------------------ rmgrs
    def _xlog(self, batch: _Batch, rec: DecodedRecord) -> None:
        info = rec.rmgr_info
        st = self.state
        if info in (XLOG_CHECKPOINT_SHUTDOWN, XLOG_CHECKPOINT_ONLINE):
            ckpt = CheckPoint.unpack(rec.main_data)
            cur = st.checkpoint
            if cur is None:
                st.checkpoint = ckpt
            elif info == XLOG_CHECKPOINT_SHUTDOWN:
                ckpt.redo = cur.redo
                st.checkpoint = ckpt
            else:
                # An online checkpoint only advances nextXid/multi/offset/oldest* (xlog_redo).
                if _xid_follows(ckpt.next_xid, cur.next_xid):
                    cur.next_xid = ckpt.next_xid
                if _mxid_follows(ckpt.next_multi, cur.next_multi):
                    cur.next_multi = ckpt.next_multi
                if _mxid_follows(ckpt.next_multi_offset, cur.next_multi_offset):
                    cur.next_multi_offset = ckpt.next_multi_offset
                if _mxid_follows(ckpt.oldest_xid, cur.oldest_xid):
                    cur.oldest_xid, cur.oldest_xid_db = ckpt.oldest_xid, ckpt.oldest_xid_db
                if _mxid_follows(ckpt.oldest_multi, cur.oldest_multi):
                    cur.oldest_multi, cur.oldest_multi_db = ckpt.oldest_multi, ckpt.oldest_multi_db
                cur.time = ckpt.time
                cur.redo = 0  # not a shutdown checkpoint (see below)
            assert st.checkpoint is not None
            if info == XLOG_CHECKPOINT_SHUTDOWN:
                # Neon's convention: redo = the end of a shutdown checkpoint record, so a
                # backup at exactly that LSN knows the system was shut down cleanly.
                st.checkpoint.redo = int(batch.lsn)
            batch.put_meta(checkpoint_key(), st.checkpoint.pack())
        elif info == XLOG_NEXTOID:
            if st.checkpoint is not None:
                st.checkpoint.next_oid = U32.unpack_from(rec.main_data, 0)[0]
                batch.put_meta(checkpoint_key(), st.checkpoint.pack())
        elif info in (XLOG_FPI, XLOG_FPI_FOR_HINT) or info in XLOG_NO_EFFECT:
            return
        else:
            _unsupported(rec)

    def _xact(self, batch: _Batch, rec: DecodedRecord) -> None:
        op = rec.info & XACT_OPMASK
        st = self.state
        if op in (XLOG_XACT_ASSIGNMENT, XLOG_XACT_INVALIDATIONS):
            return
        if op == XLOG_XACT_PREPARE:
            data = rec.main_data
            xid = U32.unpack_from(data, 8)[0]  # xl_xact_prepare.xid
            st.twophase.add(xid)
            batch.put_meta(twophase_dir_key(), metadata.encode_u32_set(st.twophase))
            batch.put_meta(twophase_file_key(xid), bytes(data))
            return
        if op not in (XLOG_XACT_COMMIT, XLOG_XACT_ABORT, XLOG_XACT_COMMIT_PREPARED,
                      XLOG_XACT_ABORT_PREPARED):
            _unsupported(rec)
        if op == XLOG_XACT_COMMIT or op == XLOG_XACT_COMMIT_PREPARED:
            # xl_xact_commit.xact_time; the key keeps the newest (monotone in LSN).
            (xact_time,) = COMMIT_TIMESTAMP.unpack_from(rec.main_data, 0)
            if st.commit_timestamp is None or xact_time > st.commit_timestamp:
                st.commit_timestamp = xact_time
                batch.put_meta(_COMMIT_TIMESTAMP_KEY, COMMIT_TIMESTAMP.pack(xact_time))
        parsed = _parse_commit_abort(rec, is_commit=op in (XLOG_XACT_COMMIT,
                                                           XLOG_XACT_COMMIT_PREPARED))
        xid = parsed.twophase_xid if op in (XLOG_XACT_COMMIT_PREPARED,
                                           XLOG_XACT_ABORT_PREPARED) else rec.xid
        status = (TRANSACTION_STATUS_COMMITTED if op in (XLOG_XACT_COMMIT,
                                                         XLOG_XACT_COMMIT_PREPARED)
                  else TRANSACTION_STATUS_ABORTED)
        by_page: dict[int, list[int]] = {}
        for x in (xid, *parsed.subxacts):
            by_page.setdefault(x // CLOG_XACTS_PER_PAGE, []).append(x)
        for pageno, xids in sorted(by_page.items()):
            segno, blk = divmod(pageno, SLRU_PAGES_PER_SEGMENT)
            batch.put(slru_block_key(SlruKind.CLOG, segno, blk), values.clog_set_status(status, xids))
        for spc, db, relnode in parsed.rels:
            for fork in ForkNumber:
                self._drop_rel(batch, RelTag(spc, db, relnode, fork))
        if op in (XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_ABORT_PREPARED):
            if xid in st.twophase:
                st.twophase.discard(xid)
                batch.put_meta(twophase_dir_key(), metadata.encode_u32_set(st.twophase))
                batch.put_meta(twophase_file_key(xid), b"")
        if st.checkpoint is not None:
            changed = False
            for x in (xid, *parsed.subxacts):
                changed |= st.checkpoint.advance_next_xid(x)
            if changed:
                batch.put_meta(checkpoint_key(), st.checkpoint.pack())

    def _smgr(self, batch: _Batch, rec: DecodedRecord) -> None:
        info = rec.rmgr_info
        st = self.state
        if info == XLOG_SMGR_CREATE:
            spc, db, relnode, fork = SMGR_CREATE.unpack_from(rec.main_data, 0)
            self._ensure_rel(batch, RelTag(spc, db, relnode, fork))
        elif info == XLOG_SMGR_TRUNCATE:
            blkno, spc, db, relnode, flags = SMGR_TRUNCATE.unpack_from(rec.main_data, 0)
            main = RelTag(spc, db, relnode, ForkNumber.MAIN)
            self._ensure_rel(batch, main)
            if flags & SMGR_TRUNCATE_HEAP and st.relsizes[main] > blkno:
                self._set_rel_size(batch, main, blkno)
            fsm = main.with_fork(ForkNumber.FSM)
            if flags & SMGR_TRUNCATE_FSM and fsm in st.relsizes:
                logpage, slot = divmod(blkno, vm.FSM_SLOTS_PER_PAGE)
                if slot > 0:
                    fsm_blk = vm.fsm_logical_to_physical(logpage, 0)
                    if fsm_blk < st.relsizes[fsm]:
                        batch.put(rel_block_key(fsm, fsm_blk), values.fsm_truncate(slot))
                        if st.relsizes[fsm] > fsm_blk + 1:
                            self._set_rel_size(batch, fsm, fsm_blk + 1)
                else:
                    new = vm.fsm_logical_to_physical(logpage, 0)
                    if st.relsizes[fsm] > new:
                        self._set_rel_size(batch, fsm, new)
            vm_rel = main.with_fork(ForkNumber.VISIBILITYMAP)
            if flags & SMGR_TRUNCATE_VM and vm_rel in st.relsizes:
                trunc_block, trunc_byte, trunc_offs = vm.vm_map_position(blkno)
                if trunc_byte or trunc_offs:
                    if trunc_block < st.relsizes[vm_rel]:
                        batch.put(rel_block_key(vm_rel, trunc_block),
                                  values.truncate_vm(trunc_byte, trunc_offs))
                        if st.relsizes[vm_rel] > trunc_block + 1:
                            self._set_rel_size(batch, vm_rel, trunc_block + 1)
                elif st.relsizes[vm_rel] > trunc_block:
                    self._set_rel_size(batch, vm_rel, trunc_block)
        else:
            _unsupported(rec)

    def _dbase(self, batch: _Batch, rec: DecodedRecord) -> None:
        info = rec.rmgr_info
        st = self.state
        if info == XLOG_DBASE_CREATE_WAL_LOG:
            return  # the RELMAP_UPDATE, SMGR_CREATE and FPI records that follow do the work
        if info == XLOG_DBASE_CREATE_FILE_COPY:
            db, spc, src_db, src_spc = DBASE_FILE_COPY.unpack_from(rec.main_data, 0)
            self._copy_database(batch, rec, (src_spc, src_db), (spc, db))
        elif info == XLOG_DBASE_DROP:
            db, ntablespaces = DBASE_DROP_HEAD.unpack_from(rec.main_data, 0)
            spcs = struct.unpack_from(f"<{ntablespaces}I", rec.main_data, DBASE_DROP_HEAD.size)
            for spc in spcs:
                dbkey = (spc, db)
                dropped = st.reldirs.pop(dbkey, RelDir())
                for relnode, fork in dropped.entries():
                    rel = RelTag(spc, db, relnode, fork)
                    if st.relsizes.pop(rel, None) is not None:
                        batch.put_meta(rel_size_key(rel), b"")
                for key in dropped.all_values(*dbkey):
                    batch.put_meta(key, b"")
                if st.dbdir.pop(dbkey, None) is not None:
                    batch.put_meta(relmap_key(*dbkey), b"")
                    batch.put_meta(dbdir_key(), metadata.encode_dbdir(st.dbdir))
        else:
            _unsupported(rec)

    def _copy_database(self, batch: _Batch, rec: DecodedRecord, src: tuple[int, int],
                       dst: tuple[int, int]) -> None:
        st = self.state
        if self.read_page is None:
            raise UnsupportedWalRecord(
                f"CREATE DATABASE STRATEGY FILE_COPY at {rec.lsn} needs a page reader")
        has_relmap = st.dbdir.get(src, False)
        st.dbdir[dst] = has_relmap
        batch.put_meta(dbdir_key(), metadata.encode_dbdir(st.dbdir))
        if has_relmap:
            batch.put_meta(relmap_key(*dst),
                           values.image_bytes(self.read_page(relmap_key(*src), rec.lsn)))
        rels = RelDir.of(st.reldirs[src].entries() if src in st.reldirs else [])
        st.reldirs[dst] = rels
        for key, value in rels.all_values(*dst).items():
            batch.put_meta(key, value)
        for relnode, fork in rels.entries():
            src_rel = RelTag(src[0], src[1], relnode, fork)
            dst_rel = RelTag(dst[0], dst[1], relnode, fork)
            n = st.relsizes.get(src_rel, 0)
            for blkno in range(n):
                batch.put(rel_block_key(dst_rel, blkno),
                          self.read_page(rel_block_key(src_rel, blkno), rec.lsn))
            self._set_rel_size(batch, dst_rel, n)

    def _clog(self, batch: _Batch, rec: DecodedRecord) -> None:
        info = rec.rmgr_info
        if info == XLOG_CLOG_ZEROPAGE:
            (pageno,) = I32.unpack_from(rec.main_data, 0)
            self._zero_slru_page(batch, SlruKind.CLOG, pageno)
        elif info == XLOG_CLOG_TRUNCATE:
            pageno, _oldest, _db = CLOG_TRUNCATE.unpack_from(rec.main_data, 0)
            self._truncate_slru(batch, SlruKind.CLOG, pageno // SLRU_PAGES_PER_SEGMENT,
                                wraparound_pages=0x1_0000_0000 // CLOG_XACTS_PER_PAGE)
        else:
            _unsupported(rec)

    def _multixact(self, batch: _Batch, rec: DecodedRecord) -> None:
        info = rec.rmgr_info
        st = self.state
        if info == XLOG_MULTIXACT_ZERO_OFF_PAGE:
            (pageno,) = I32.unpack_from(rec.main_data, 0)
            if self._pre_initialized_offsets_page != pageno:
                self._zero_slru_page(batch, SlruKind.MULTIXACT_OFFSETS, pageno)
            self._pre_initialized_offsets_page = None
        elif info == XLOG_MULTIXACT_ZERO_MEM_PAGE:
            (pageno,) = I32.unpack_from(rec.main_data, 0)
            self._zero_slru_page(batch, SlruKind.MULTIXACT_MEMBERS, pageno)
        elif info == XLOG_MULTIXACT_CREATE_ID:
            self._pre_initialized_offsets_page = None
            mid, moff, nmembers = MULTIXACT_CREATE_HEAD.unpack_from(rec.main_data, 0)
            members = [MULTIXACT_MEMBER.unpack_from(rec.main_data, MULTIXACT_CREATE_HEAD.size + 8 * i)
                       for i in range(nmembers)]
            self._record_new_multixact(batch, mid, moff, members)
            if st.checkpoint is not None:
                ck = st.checkpoint
                nxt = (mid + 1) & 0xFFFF_FFFF or 1
                if _mxid_follows(nxt, ck.next_multi):
                    ck.next_multi = nxt
                noff = (moff + nmembers) & 0xFFFF_FFFF
                if _mxid_follows(noff, ck.next_multi_offset):
                    ck.next_multi_offset = noff
                for xid, _status in members:
                    ck.advance_next_xid(xid)
                batch.put_meta(checkpoint_key(), ck.pack())
        elif info == XLOG_MULTIXACT_TRUNCATE_ID:
            oldest_db, _start_off, end_off, start_mem, end_mem = MULTIXACT_TRUNCATE.unpack_from(
                rec.main_data, 0)
            # PerformOffsetsTruncation: every segment before the page of end_off - 1.
            prev = (end_off - 1) & 0xFFFF_FFFF or 0xFFFF_FFFF
            off_seg = prev // MULTIXACT_OFFSETS_PER_PAGE // SLRU_PAGES_PER_SEGMENT
            self._truncate_slru(batch, SlruKind.MULTIXACT_OFFSETS, off_seg,
                                wraparound_pages=0x1_0000_0000 // MULTIXACT_OFFSETS_PER_PAGE)
            # PerformMembersTruncation: the segments from start's up to (not incl.) end's.
            seg_pages = MULTIXACT_MEMBERS_PER_PAGE * SLRU_PAGES_PER_SEGMENT
            max_seg = 0xFFFF_FFFF // seg_pages
            seg, end_seg = start_mem // seg_pages, end_mem // seg_pages
            doomed: list[int] = []
            while seg != end_seg and len(doomed) <= max_seg:
                doomed.append(seg)
                seg = (seg + 1) % (max_seg + 1)
            self._remove_slru_segments(batch, SlruKind.MULTIXACT_MEMBERS, doomed)
            if st.checkpoint is not None:
                st.checkpoint.oldest_multi, st.checkpoint.oldest_multi_db = end_off, oldest_db
                batch.put_meta(checkpoint_key(), st.checkpoint.pack())
        else:
            _unsupported(rec)

    def _record_new_multixact(self, batch: _Batch, mid: int, moff: int,
                              members: list[tuple[int, int]]) -> None:
        """multixact.c RecordNewMultiXact as 15.18 replays it (offsets[mid] and
        offsets[mid + 1], initialising the next offsets page if it is missing)."""
        kind = SlruKind.MULTIXACT_OFFSETS
        pageno, entry = divmod(mid, MULTIXACT_OFFSETS_PER_PAGE)
        nxt = (mid + 1) & 0xFFFF_FFFF or 1
        next_pageno, next_entry = divmod(nxt, MULTIXACT_OFFSETS_PER_PAGE)
        next_offset = (moff + len(members)) & 0xFFFF_FFFF or 1
        writes: dict[int, list[tuple[int, int]]] = {pageno: [(entry * 4, moff)]}
        writes.setdefault(next_pageno, []).append((next_entry * 4, next_offset))
        pre_init = (next_pageno != pageno
                    and not self._slru_page_exists(kind, next_pageno))
        for pg, ws in writes.items():
            segno, blk = divmod(pg, SLRU_PAGES_PER_SEGMENT)
            key = slru_block_key(kind, segno, blk)
            if pre_init and pg == next_pageno:
                # Replaying WAL of an older 15.x minor: the next page does not exist yet;
                # 15.18's redo creates it zeroed (and skips its later ZERO_OFF_PAGE).
                page = bytearray(BLCKSZ)
                for off, val in ws:
                    U32.pack_into(page, off, val)
                self._zero_slru_page(batch, kind, pg, image=bytes(page))
                self._pre_initialized_offsets_page = pg
            else:
                batch.put(key, values.slru_write_u32(ws))
        by_page: dict[int, list[tuple[int, int, int]]] = {}
        for i, (xid, status) in enumerate(members):
            off = (moff + i) & 0xFFFF_FFFF
            by_page.setdefault(off // MULTIXACT_MEMBERS_PER_PAGE, []).append((off, xid, status))
        for pg, ms in sorted(by_page.items()):
            segno, blk = divmod(pg, SLRU_PAGES_PER_SEGMENT)
            batch.put(slru_block_key(SlruKind.MULTIXACT_MEMBERS, segno, blk),
                      values.multixact_members(ms))

    def _relmap(self, batch: _Batch, rec: DecodedRecord) -> None:
        if rec.rmgr_info != XLOG_RELMAP_UPDATE:
            _unsupported(rec)
        dbid, tsid, nbytes = RELMAP_UPDATE_HEAD.unpack_from(rec.main_data, 0)
        data = bytes(rec.main_data[RELMAP_UPDATE_HEAD.size:RELMAP_UPDATE_HEAD.size + nbytes])
        st = self.state
        dbkey = (tsid, dbid)
        batch.put_meta(relmap_key(*dbkey), data)
        if not st.dbdir.get(dbkey):
            st.dbdir[dbkey] = True
            batch.put_meta(dbdir_key(), metadata.encode_dbdir(st.dbdir))
        if dbkey not in st.reldirs:
            st.reldirs[dbkey] = RelDir()
            for key, value in st.reldirs[dbkey].all_values(*dbkey).items():
                batch.put_meta(key, value)

    def _standby(self, batch: _Batch, rec: DecodedRecord) -> None:
        if rec.rmgr_info == XLOG_RUNNING_XACTS and self.state.checkpoint is not None:
            _x, _s, _o, _next, oldest_running, _latest = RUNNING_XACTS_HEAD.unpack_from(
                rec.main_data, 0)
            if self.state.checkpoint.oldest_active_xid != oldest_running:
                self.state.checkpoint.oldest_active_xid = oldest_running
                batch.put_meta(checkpoint_key(), self.state.checkpoint.pack())

    def _no_metadata(self, batch: _Batch, rec: DecodedRecord) -> None:
        return None

    # ------------------------------------------------------------------ SLRU helpers
    def _slru_page_exists(self, kind: SlruKind, pageno: int) -> bool:
        segno, blk = divmod(pageno, SLRU_PAGES_PER_SEGMENT)
        return blk < self.state.slru_sizes.get((kind, segno), 0)

    def _zero_slru_page(self, batch: _Batch, kind: SlruKind, pageno: int,
                        image: bytes = ZERO_PAGE) -> None:
        st = self.state
        segno, blk = divmod(pageno, SLRU_PAGES_PER_SEGMENT)
        batch.put(slru_block_key(kind, segno, blk), values.image(image))
        if segno not in st.slru_dirs[kind]:
            st.slru_dirs[kind].add(segno)
            batch.put_meta(slru_dir_key(kind), metadata.encode_u32_set(st.slru_dirs[kind]))
        size = st.slru_sizes.get((kind, segno), 0)
        if blk >= size:
            for gap in range(size, blk):
                batch.put(slru_block_key(kind, segno, gap), values.image(ZERO_PAGE))
            st.slru_sizes[(kind, segno)] = blk + 1
            batch.put_meta(slru_segment_size_key(kind, segno), metadata.encode_nblocks(blk + 1))

    def _truncate_slru(self, batch: _Batch, kind: SlruKind, cutoff_segno: int,
                       wraparound_pages: int) -> None:
        """Remove the segments that lie wholly before ``cutoff_segno`` (modulo wraparound)."""
        st = self.state
        total_segs = max(1, wraparound_pages // SLRU_PAGES_PER_SEGMENT)
        removed = []
        for segno in sorted(st.slru_dirs[kind]):
            diff = (segno - cutoff_segno) % total_segs
            if diff >= total_segs // 2:  # segno precedes cutoff
                removed.append(segno)
        self._remove_slru_segments(batch, kind, removed)

    def _remove_slru_segments(self, batch: _Batch, kind: SlruKind, segnos: list[int]) -> None:
        st = self.state
        removed = [s for s in segnos if s in st.slru_dirs[kind]]
        if not removed:
            return
        for segno in removed:
            st.slru_dirs[kind].discard(segno)
            st.slru_sizes.pop((kind, segno), None)
            batch.put_meta(slru_segment_size_key(kind, segno), b"")
        batch.put_meta(slru_dir_key(kind), metadata.encode_u32_set(st.slru_dirs[kind]))


@dataclass(frozen=True, slots=True)
class ParsedXact:
    subxacts: tuple[int, ...]
    rels: tuple[tuple[int, int, int], ...]
    twophase_xid: int


def _parse_commit_abort(rec: DecodedRecord, is_commit: bool) -> ParsedXact:
    """ParseCommitRecord / ParseAbortRecord (xactdesc.c)."""
    data = rec.main_data
    pos = 8  # xact_time
    xinfo = 0
    if rec.info & XLOG_XACT_HAS_INFO:
        (xinfo,) = U32.unpack_from(data, pos)
        pos += 4
    if xinfo & XACT_XINFO_HAS_DBINFO:
        pos += 8
    subxacts: tuple[int, ...] = ()
    if xinfo & XACT_XINFO_HAS_SUBXACTS:
        (n,) = I32.unpack_from(data, pos)
        subxacts = struct.unpack_from(f"<{n}I", data, pos + 4)
        pos += 4 + 4 * n
    rels: list[tuple[int, int, int]] = []
    if xinfo & XACT_XINFO_HAS_RELFILENODES:
        (n,) = I32.unpack_from(data, pos)
        pos += 4
        for _ in range(n):
            rels.append(REL_FILE_NODE.unpack_from(data, pos))
            pos += REL_FILE_NODE.size
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS:
        (n,) = I32.unpack_from(data, pos)
        pos += 4 + 12 * n
    if is_commit and xinfo & XACT_XINFO_HAS_INVALS:
        (n,) = I32.unpack_from(data, pos)
        pos += 4 + 16 * n
    twophase_xid = 0
    if xinfo & XACT_XINFO_HAS_TWOPHASE:
        (twophase_xid,) = U32.unpack_from(data, pos)
    return ParsedXact(tuple(subxacts), tuple(rels), twophase_xid)


def _xid_follows(a: int, b: int) -> bool:
    """FullTransactionId a > b."""
    return a > b


def _mxid_follows(a: int, b: int) -> bool:
    """a follows b modulo 2^32 (MultiXactIdPrecedes(b, a), TransactionIdPrecedes)."""
    return 0 < (a - b) & 0xFFFF_FFFF < 0x8000_0000


def _unsupported(rec: DecodedRecord) -> None:
    raise UnsupportedWalRecord(
        f"unsupported WAL record at {rec.lsn}: resource manager {rmgr_name(rec.rmid)}, "
        f"info {rec.info:#04x}")


_HANDLERS: dict[int, Callable[[WalIngest, _Batch, DecodedRecord], None]] = {
    RmgrId.XLOG: WalIngest._xlog,
    RmgrId.XACT: WalIngest._xact,
    RmgrId.SMGR: WalIngest._smgr,
    RmgrId.CLOG: WalIngest._clog,
    RmgrId.DBASE: WalIngest._dbase,
    RmgrId.TBLSPC: WalIngest._no_metadata,
    RmgrId.MULTIXACT: WalIngest._multixact,
    RmgrId.RELMAP: WalIngest._relmap,
    RmgrId.STANDBY: WalIngest._standby,
    RmgrId.HEAP2: WalIngest._no_metadata,
    RmgrId.HEAP: WalIngest._no_metadata,
    RmgrId.BTREE: WalIngest._no_metadata,
    RmgrId.HASH: WalIngest._no_metadata,
    RmgrId.GIN: WalIngest._no_metadata,
    RmgrId.GIST: WalIngest._no_metadata,
    RmgrId.SEQ: WalIngest._no_metadata,
    RmgrId.SPGIST: WalIngest._no_metadata,
    RmgrId.BRIN: WalIngest._no_metadata,
    RmgrId.COMMIT_TS: WalIngest._no_metadata,
    RmgrId.REPLORIGIN: WalIngest._no_metadata,
    RmgrId.GENERIC: WalIngest._no_metadata,
    RmgrId.LOGICALMSG: WalIngest._no_metadata,
}

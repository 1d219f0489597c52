"""WalStreamDecoder: raw WAL bytes in, decoded records out (sans-IO).

Source of truth: src/include/access/xlog_internal.h (XLogPageHeaderData,
XLogLongPageHeaderData, XLP_* flags) and XLogDecodeNextRecord / XLogReaderValidatePageHeader
in src/backend/access/transam/xlogreader.c; shared/reference/pg15-wal-facts.md section 1.

The caller feeds contiguous WAL bytes that begin at ``start_lsn`` (from segment files or
a replication stream) and polls for records.  Rules:

- ``start_lsn`` must be a record boundary or a page boundary.  Starting at a page
  boundary whose page begins with the continuation of an earlier record
  (XLP_FIRST_IS_CONTRECORD) skips that continuation, as pg_waldump does.
- Every page header is validated (magic, flags, pageaddr, and for long headers the
  segment size, block size and system identifier); every continuation must carry
  XLP_FIRST_IS_CONTRECORD with the exact remaining length; every record's CRC-32C and
  xl_prev link are checked.  A violation raises CorruptWalError naming the LSN.
- What looks like the end of written WAL (a zero record length, an all-zero page header,
  a recycled page whose pageaddr is older) raises EndOfWal, a separate exception, so a
  reader of files can stop there while a streaming reader treats it as an error.
- XLOG_SWITCH consumes the rest of its segment; its end LSN is the next segment start.
- Records are returned with ``end_lsn`` = EndRecPtr (MAXALIGNed end), the LSN redo
  stamps on pages and the LSN pagestore stores values at.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NamedTuple

from pagestore.errors import CorruptWalError
from pagestore.lsn import Lsn
from pagestore.pg.rmgr import RM_MAX_BUILTIN_ID, RM_MIN_CUSTOM_ID, RmgrId
from pagestore.pg.xlogrecord import (
    SIZE_OF_XLOG_RECORD,
    XLOG_RECORD,
    XLR_RMGR_INFO_MASK,
    DecodedRecord,
    XLogRecordHeader,
    decode_record,
    decode_record_py,
    walcore,
)

XLOG_BLCKSZ = 8192
WAL_SEGMENT_SIZE = 16 * 1024 * 1024
XLOG_PAGE_MAGIC = 0xD110  # PostgreSQL 15

# XLogPageHeaderData: xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64,
# xlp_rem_len u32, padding[4]
PAGE_HEADER = struct.Struct("<HHIQI4x")
SIZE_OF_SHORT_PHD = PAGE_HEADER.size  # 24
# XLogLongPageHeaderData: the short header, then xlp_sysid u64, xlp_seg_size u32,
# xlp_xlog_blcksz u32
LONG_PAGE_HEADER = struct.Struct("<HHIQI4xQII")
SIZE_OF_LONG_PHD = LONG_PAGE_HEADER.size  # 40

XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_BKP_REMOVABLE = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008
XLP_ALL_FLAGS = 0x000F

XLOG_SWITCH = 0x40
#: MaxAllocSize - 1: xlogreader.c cannot allocate a larger record buffer, so PostgreSQL
#: never writes one.  Checked from the first four bytes, before anything is buffered.
MAX_RECORD_LENGTH = 0x3FFFFFFF

U32 = struct.Struct("<I")
#: How many whole on-page records the compiled core decodes per call.
SCAN_BATCH = 64


class EndOfWal(Exception):
    """The bytes at ``lsn`` are not written WAL (zeros, or a recycled segment)."""

    def __init__(self, lsn: Lsn, reason: str) -> None:
        super().__init__(f"end of WAL at {lsn}: {reason}")
        self.lsn = lsn
        self.reason = reason


class PageHeader(NamedTuple):
    xlp_magic: int
    xlp_info: int
    xlp_tli: int
    xlp_pageaddr: int
    xlp_rem_len: int


class LongPageHeader(NamedTuple):
    xlp_magic: int
    xlp_info: int
    xlp_tli: int
    xlp_pageaddr: int
    xlp_rem_len: int
    xlp_sysid: int
    xlp_seg_size: int
    xlp_xlog_blcksz: int


def maxalign(n: int) -> int:
    return (n + 7) & ~7


def page_header_size(lsn: int, segment_size: int = WAL_SEGMENT_SIZE) -> int:
    """The size of the page header at a page start (40 on a segment's first page)."""
    return SIZE_OF_LONG_PHD if lsn % segment_size == 0 else SIZE_OF_SHORT_PHD


class WalStreamDecoder:
    def __init__(self, start_lsn: Lsn, *, segment_size: int = WAL_SEGMENT_SIZE,
                 system_id: int | None = None, prev_lsn: Lsn | None = None,
                 compiled: bool = True) -> None:
        """``compiled=False`` runs the pure-Python reference even where the compiled core
        is built (the differential tests compare the two)."""
        if start_lsn % 8 != 0:
            raise ValueError(f"WAL decoding must start at a record or page boundary, not {start_lsn}")
        self.segment_size = segment_size
        self.system_id = system_id
        self.timeline: int | None = None
        self._buf = bytearray()
        self._off = 0
        self._pos = int(start_lsn)       # LSN of self._buf[self._off]
        self._rec: bytearray | None = None
        self._rec_lsn = 0
        self._rec_len = 0
        self._rec_checked = False
        self._skip_cont = 0               # continuation bytes to skip at the start
        self._skip_to: int | None = None  # after XLOG_SWITCH: the next segment start
        self._started = False             # a record has been decoded
        self._prev_lsn = prev_lsn
        # Records the compiled core decoded ahead (``poll`` hands them out in order).
        self._ready: deque[DecodedRecord] = deque()
        use_core = compiled and walcore is not None
        self._scan = walcore.scan if use_core and walcore is not None else None
        self._decode = decode_record if use_core else decode_record_py

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._off > (1 << 20) and self._off * 2 > len(self._buf):
            del self._buf[:self._off]
            self._off = 0
        self._buf += data

    @property
    def lsn(self) -> Lsn:
        """The LSN of the next byte the decoder will consume (the start of the next
        record ``poll`` returns, when one is decoded already)."""
        if self._ready:
            return self._ready[0].lsn
        return Lsn(self._pos)

    @property
    def buffered_end(self) -> Lsn:
        """The LSN just past the last byte fed."""
        return Lsn(self._pos + len(self._buf) - self._off)

    def _avail(self) -> int:
        return len(self._buf) - self._off

    def _consume(self, n: int) -> None:
        self._off += n
        self._pos += n

    # ------------------------------------------------------------------ pages
    def _read_page_header(self) -> bool:
        pos = self._pos
        long_header = pos % self.segment_size == 0
        size = SIZE_OF_LONG_PHD if long_header else SIZE_OF_SHORT_PHD
        if self._avail() < size:
            return False
        buf, off = self._buf, self._off
        hdr = PageHeader._make(PAGE_HEADER.unpack_from(buf, off))
        where = Lsn(pos)
        if hdr.xlp_magic != XLOG_PAGE_MAGIC:
            if hdr.xlp_magic == 0 and hdr.xlp_pageaddr == 0:
                raise EndOfWal(where, "the page is zeroed")
            raise CorruptWalError(f"invalid magic number {hdr.xlp_magic:04X} in WAL page at "
                                  f"{where} (PostgreSQL 15 writes {XLOG_PAGE_MAGIC:04X})")
        if hdr.xlp_info & ~XLP_ALL_FLAGS:
            raise CorruptWalError(f"invalid info bits {hdr.xlp_info:04X} in WAL page at {where}")
        if bool(hdr.xlp_info & XLP_LONG_HEADER) != long_header:
            raise CorruptWalError(
                f"WAL page at {where}: XLP_LONG_HEADER is "
                f"{'set' if hdr.xlp_info & XLP_LONG_HEADER else 'missing'} at segment offset "
                f"{pos % self.segment_size}")
        if hdr.xlp_pageaddr != pos:
            if hdr.xlp_pageaddr < pos and hdr.xlp_pageaddr % XLOG_BLCKSZ == 0:
                raise EndOfWal(where, f"the page holds older WAL (pageaddr {Lsn(hdr.xlp_pageaddr)})")
            raise CorruptWalError(f"unexpected pageaddr {Lsn(hdr.xlp_pageaddr)} in WAL page at {where}")
        if long_header:
            lhdr = LongPageHeader._make(LONG_PAGE_HEADER.unpack_from(buf, off))
            if lhdr.xlp_seg_size != self.segment_size:
                raise CorruptWalError(f"WAL segment at {where} has segment size "
                                      f"{lhdr.xlp_seg_size}, expected {self.segment_size}")
            if lhdr.xlp_xlog_blcksz != XLOG_BLCKSZ:
                raise CorruptWalError(f"WAL segment at {where} has block size "
                                      f"{lhdr.xlp_xlog_blcksz}, expected {XLOG_BLCKSZ}")
            if self.system_id is None:
                self.system_id = lhdr.xlp_sysid
            elif lhdr.xlp_sysid != self.system_id:
                raise CorruptWalError(f"WAL segment at {where} belongs to database system "
                                      f"{lhdr.xlp_sysid}, expected {self.system_id}")
        if self.timeline is not None and hdr.xlp_tli < self.timeline:
            raise CorruptWalError(f"WAL page at {where} has timeline {hdr.xlp_tli}, lower "
                                  f"than the previous page's {self.timeline}")
        self.timeline = hdr.xlp_tli
        self._consume(size)
        cont = bool(hdr.xlp_info & XLP_FIRST_IS_CONTRECORD)
        if hdr.xlp_info & XLP_FIRST_IS_OVERWRITE_CONTRECORD and self._rec is not None:
            # The writer abandoned the record we were assembling; a new one starts here.
            self._rec = None
            return True
        if self._rec is not None:
            expected = self._rec_len - len(self._rec)
            if not cont:
                raise CorruptWalError(f"there is no contrecord flag at {where} (record at "
                                      f"{Lsn(self._rec_lsn)} continues)")
            if hdr.xlp_rem_len != expected or hdr.xlp_rem_len == 0:
                raise CorruptWalError(f"invalid contrecord length {hdr.xlp_rem_len} (expected "
                                      f"{expected}) at {where}")
        elif cont:
            if self._started or self._skip_cont:
                if not self._started and hdr.xlp_rem_len == self._skip_cont:
                    return True  # still inside the record we are skipping at the start
                raise CorruptWalError(f"unexpected contrecord at {where}: no record continues here")
            self._skip_cont = hdr.xlp_rem_len
        return True

    # ------------------------------------------------------------------ records
    def poll(self) -> DecodedRecord | None:
        """The next complete record, or None if more bytes are needed."""
        ready = self._ready
        if ready:
            return ready.popleft()
        while True:
            if self._skip_to is not None:
                n = min(self._skip_to - self._pos, self._avail())
                self._consume(n)
                if self._pos < self._skip_to:
                    return None
                self._skip_to = None
            page_off = self._pos % XLOG_BLCKSZ
            if page_off == 0:
                if not self._read_page_header():
                    return None
                continue
            room = XLOG_BLCKSZ - page_off
            if self._skip_cont:
                n = min(self._skip_cont, room, self._avail())
                if n == 0:
                    return None
                self._consume(n)
                self._skip_cont -= n
                continue
            if self._rec is None:
                if self._scan is not None:
                    # The compiled core takes the whole on-page records; it stops where
                    # this code must decide (page header, multi-page record, any error).
                    prev = -1 if self._prev_lsn is None else int(self._prev_lsn)
                    before = self._pos
                    recs, self._off, self._pos, prev = self._scan(
                        self._buf, self._off, self._pos, prev, SCAN_BATCH)
                    if recs:
                        self._prev_lsn = Lsn(prev)
                        self._started = True
                        ready.extend(recs)
                        return ready.popleft()
                    if self._pos != before:
                        continue  # it only skipped alignment padding: start over
                aligned = maxalign(self._pos)
                if aligned != self._pos:
                    n = min(aligned - self._pos, self._avail())
                    self._consume(n)
                    if self._pos != aligned:
                        return None
                    continue
                if self._avail() < 4:
                    return None
                (tot_len,) = U32.unpack_from(self._buf, self._off)
                if tot_len == 0:
                    raise EndOfWal(Lsn(self._pos), "record length is zero")
                if tot_len < SIZE_OF_XLOG_RECORD or tot_len > MAX_RECORD_LENGTH:
                    raise CorruptWalError(f"invalid record length at {Lsn(self._pos)}: "
                                          f"wanted {SIZE_OF_XLOG_RECORD}, got {tot_len}")
                if tot_len <= room and self._avail() >= tot_len:
                    # Fast path: the whole record is on this page and buffered.
                    start = self._pos
                    raw = bytes(self._buf[self._off:self._off + tot_len])
                    self._consume(tot_len)
                    return self._finish(raw, start)
                self._rec = bytearray()
                self._rec_lsn = self._pos
                self._rec_len = tot_len
                self._rec_checked = False
            n = min(self._rec_len - len(self._rec), room, self._avail())
            if n == 0:
                return None
            self._rec += self._buf[self._off:self._off + n]
            self._consume(n)
            if not self._rec_checked and len(self._rec) >= SIZE_OF_XLOG_RECORD:
                # Before assembling the rest of a long record (possibly many pages of it)
                # its header must be sane, as ValidXLogRecordHeader checks.
                self._check_header(self._rec, self._rec_lsn)
                self._rec_checked = True
            if len(self._rec) == self._rec_len:
                raw = bytes(self._rec)
                self._rec = None
                return self._finish(raw, self._rec_lsn)

    def _check_header(self, raw: bytes | bytearray, start: int) -> None:
        hdr = XLogRecordHeader._make(XLOG_RECORD.unpack_from(raw, 0))
        if not (hdr.xl_rmid <= RM_MAX_BUILTIN_ID or hdr.xl_rmid >= RM_MIN_CUSTOM_ID):
            raise CorruptWalError(f"invalid resource manager ID {hdr.xl_rmid} at {Lsn(start)} "
                                  f"(record length {hdr.xl_tot_len})")
        if self._prev_lsn is not None and hdr.xl_prev != self._prev_lsn:
            raise CorruptWalError(f"record with incorrect prev-link {Lsn(hdr.xl_prev)} at "
                                  f"{Lsn(start)} (previous record starts at {self._prev_lsn}; "
                                  f"record length {hdr.xl_tot_len})")

    def _finish(self, raw: bytes, start: int) -> DecodedRecord:
        end = maxalign(self._pos)
        rmid = raw[17]
        info = raw[16]
        is_switch = rmid == RmgrId.XLOG and info & XLR_RMGR_INFO_MASK == XLOG_SWITCH
        if is_switch:
            end = (self._pos + self.segment_size - 1) // self.segment_size * self.segment_size
        rec = self._decode(raw, Lsn(start), Lsn(end))
        if self._prev_lsn is not None and rec.header.xl_prev != self._prev_lsn:
            raise CorruptWalError(f"record with incorrect prev-link {Lsn(rec.header.xl_prev)} at "
                                  f"{Lsn(start)} (previous record starts at {self._prev_lsn})")
        self._prev_lsn = Lsn(start)
        self._started = True
        if is_switch:
            self._skip_to = end
        return rec

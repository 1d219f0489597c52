"""One PostgreSQL 15 WAL record: XLogRecord header, block references, main data.

Source of truth: src/include/access/xlogrecord.h (XLogRecord, XLogRecordBlockHeader,
XLogRecordBlockImageHeader, XLogRecordDataHeader{Short,Long}) and DecodeXLogRecord in
src/backend/access/transam/xlogreader.c; summarised in shared/reference/pg15-wal-facts.md
sections 2.1-2.5.

Rules:
- ``decode_record`` takes the reassembled record bytes (page headers already removed)
  and checks everything DecodeXLogRecord checks, plus the CRC-32C; any violation is a
  CorruptWalError naming the record's LSN.  It never guesses.
- Block images are kept as stored (compressed, hole removed); ``restore_block_image``
  rebuilds the 8192-byte page (pglz, lz4 or zstd; PG15's bimg_info bits).
- An image without BKPIMAGE_APPLY is a wal_consistency_checking image: it is for
  verification only and must never be applied (``BlockReference.apply_image``).
- ``decode_record_py`` is the reference.  ``decode_record`` is the compiled core
  (pagestore/pg/_walcore.c, built by setup.py) when it is built and not switched off with
  PAGESTORE_PURE_PYTHON=1; it hands every record it would not accept to the reference,
  so errors are the reference's, word for word.  tests/unit/test_walcore.py holds the two
  equal on real WAL and under fuzzing.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import crc32c

from pagestore.errors import CorruptWalError
from pagestore.keys import BLCKSZ, RelTag
from pagestore.lsn import Lsn
from pagestore.pg.rmgr import rmgr_name

if TYPE_CHECKING:
    from types import ModuleType

Buffer = bytes | bytearray | memoryview

# XLogRecord: xl_tot_len u32, xl_xid u32, xl_prev u64, xl_info u8, xl_rmid u8, pad[2], xl_crc u32
XLOG_RECORD = struct.Struct("<IIQBB2xI")
SIZE_OF_XLOG_RECORD = XLOG_RECORD.size  # 24
XL_CRC_OFFSET = 20

XLR_INFO_MASK = 0x0F
XLR_RMGR_INFO_MASK = 0xF0
XLR_SPECIAL_REL_UPDATE = 0x01
XLR_CHECK_CONSISTENCY = 0x02

XLR_MAX_BLOCK_ID = 32
XLR_BLOCK_ID_DATA_SHORT = 255
XLR_BLOCK_ID_DATA_LONG = 254
XLR_BLOCK_ID_ORIGIN = 253
XLR_BLOCK_ID_TOPLEVEL_XID = 252

BKPBLOCK_FORK_MASK = 0x0F
BKPBLOCK_HAS_IMAGE = 0x10
BKPBLOCK_HAS_DATA = 0x20
BKPBLOCK_WILL_INIT = 0x40
BKPBLOCK_SAME_REL = 0x80

BKPIMAGE_HAS_HOLE = 0x01
BKPIMAGE_APPLY = 0x02
BKPIMAGE_COMPRESS_PGLZ = 0x04
BKPIMAGE_COMPRESS_LZ4 = 0x08
BKPIMAGE_COMPRESS_ZSTD = 0x10
BKPIMAGE_COMPRESSED = BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD

# XLogRecordBlockHeader after the id byte: fork_flags u8, data_length u16
BLOCK_HEADER = struct.Struct("<BH")
# XLogRecordBlockImageHeader: length u16, hole_offset u16, bimg_info u8
BLOCK_IMAGE_HEADER = struct.Struct("<HHB")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
# RelFileNode: spcNode u32, dbNode u32, relNode u32
REL_FILE_NODE = struct.Struct("<III")


class XLogRecordHeader(NamedTuple):
    xl_tot_len: int
    xl_xid: int
    xl_prev: int
    xl_info: int
    xl_rmid: int
    xl_crc: int


# BlockReference and DecodedRecord are built for every record on the ingest and read
# paths: plain slotted dataclasses (a frozen one's __init__ costs ~6x more).  Treat them
# as immutable all the same.
@dataclass(slots=True)
class BlockReference:
    """One block a record references (DecodedBkpBlock)."""

    block_id: int
    rel: RelTag          # includes the fork number
    blkno: int
    fork_flags: int
    bimg_info: int
    hole_offset: int
    hole_length: int
    image: bytes          # as stored: hole removed, maybe compressed; b"" if none
    data: bytes           # per-block data; b"" if none

    @property
    def has_image(self) -> bool:
        return bool(self.fork_flags & BKPBLOCK_HAS_IMAGE)

    @property
    def apply_image(self) -> bool:
        return self.has_image and bool(self.bimg_info & BKPIMAGE_APPLY)

    @property
    def will_init(self) -> bool:
        return bool(self.fork_flags & BKPBLOCK_WILL_INIT)

    @property
    def has_data(self) -> bool:
        return bool(self.fork_flags & BKPBLOCK_HAS_DATA)

    @property
    def image_compressed(self) -> bool:
        return bool(self.bimg_info & BKPIMAGE_COMPRESSED)


@dataclass(slots=True)
class DecodedRecord:
    """A decoded WAL record.  ``lsn`` is where it starts; ``end_lsn`` is EndRecPtr: the
    MAXALIGNed position after it (the next segment's start for XLOG_SWITCH), which redo
    stamps into the pages it changes and which pagestore uses as the values' LSN."""

    lsn: Lsn
    end_lsn: Lsn
    header: XLogRecordHeader
    blocks: tuple[BlockReference, ...]
    main_data: bytes
    origin: int | None
    toplevel_xid: int | None
    raw: bytes

    @property
    def rmid(self) -> int:
        return self.header.xl_rmid

    @property
    def info(self) -> int:
        return self.header.xl_info

    @property
    def rmgr_info(self) -> int:
        """xl_info without the XLR_* flag bits: the record type within its rmgr."""
        return self.header.xl_info & XLR_RMGR_INFO_MASK

    @property
    def xid(self) -> int:
        return self.header.xl_xid

    @property
    def rmgr_name(self) -> str:
        return rmgr_name(self.header.xl_rmid)

    def block(self, block_id: int) -> BlockReference | None:
        for b in self.blocks:
            if b.block_id == block_id:
                return b
        return None


def record_crc(raw: Buffer) -> int:
    """CRC-32C of a record as PostgreSQL computes it: body, then header up to xl_crc."""
    mv = memoryview(raw)
    return int(crc32c.crc32c(mv[:XL_CRC_OFFSET], crc32c.crc32c(mv[SIZE_OF_XLOG_RECORD:])))


def decode_record_py(raw: bytes, lsn: Lsn, end_lsn: Lsn, *,
                     check_crc: bool = True) -> DecodedRecord:
    """Decode one reassembled record; raise CorruptWalError on any inconsistency.  The
    reference implementation (see ``decode_record``)."""
    if len(raw) < SIZE_OF_XLOG_RECORD:
        raise CorruptWalError(f"WAL record at {lsn} is {len(raw)} bytes, shorter than its header")
    hdr = XLogRecordHeader._make(XLOG_RECORD.unpack_from(raw, 0))
    if hdr.xl_tot_len != len(raw):
        raise CorruptWalError(
            f"WAL record at {lsn}: xl_tot_len {hdr.xl_tot_len} but {len(raw)} bytes assembled")
    if check_crc:
        crc = record_crc(raw)
        if crc != hdr.xl_crc:
            raise CorruptWalError(
                f"incorrect resource manager data checksum in WAL record at {lsn}: "
                f"computed {crc:08X}, stored {hdr.xl_crc:08X}")

    def bad(why: str) -> CorruptWalError:
        return CorruptWalError(f"invalid WAL record at {lsn}: {why}")

    pos = SIZE_OF_XLOG_RECORD
    end = len(raw)
    datatotal = 0
    main_len = 0
    origin: int | None = None
    toplevel: int | None = None
    last_rel: RelTag | None = None
    last_id = -1
    # (block_id, rel, blkno, fork_flags, data_len, img_len, hole_offset, hole_length, bimg_info)
    pending: list[tuple[int, RelTag, int, int, int, int, int, int, int]] = []
    while end - pos > datatotal:
        block_id = raw[pos]
        pos += 1
        if block_id == XLR_BLOCK_ID_DATA_SHORT:
            if pos + 1 > end:
                raise bad("main data header runs past the record")
            main_len = raw[pos]
            pos += 1
            datatotal += main_len
            break
        if block_id == XLR_BLOCK_ID_DATA_LONG:
            if pos + 4 > end:
                raise bad("main data header runs past the record")
            (main_len,) = U32.unpack_from(raw, pos)
            pos += 4
            datatotal += main_len
            break
        if block_id == XLR_BLOCK_ID_ORIGIN:
            if pos + 2 > end:
                raise bad("origin header runs past the record")
            (origin,) = U16.unpack_from(raw, pos)
            pos += 2
            continue
        if block_id == XLR_BLOCK_ID_TOPLEVEL_XID:
            if pos + 4 > end:
                raise bad("toplevel xid header runs past the record")
            (toplevel,) = U32.unpack_from(raw, pos)
            pos += 4
            continue
        if block_id > XLR_MAX_BLOCK_ID:
            raise bad(f"invalid block_id {block_id}")
        if block_id <= last_id:
            raise bad(f"out-of-order block_id {block_id}")
        last_id = block_id
        if pos + BLOCK_HEADER.size > end:
            raise bad(f"block {block_id} header runs past the record")
        fork_flags, data_len = BLOCK_HEADER.unpack_from(raw, pos)
        pos += BLOCK_HEADER.size
        has_data = bool(fork_flags & BKPBLOCK_HAS_DATA)
        if has_data != (data_len > 0):
            raise bad(f"BKPBLOCK_HAS_DATA is {'set' if has_data else 'not set'} but "
                      f"data length is {data_len} (block {block_id})")
        datatotal += data_len
        img_len = hole_offset = hole_length = bimg_info = 0
        if fork_flags & BKPBLOCK_HAS_IMAGE:
            if pos + BLOCK_IMAGE_HEADER.size > end:
                raise bad(f"block {block_id} image header runs past the record")
            img_len, hole_offset, bimg_info = BLOCK_IMAGE_HEADER.unpack_from(raw, pos)
            pos += BLOCK_IMAGE_HEADER.size
            compressed = bool(bimg_info & BKPIMAGE_COMPRESSED)
            if compressed and bimg_info & BKPIMAGE_HAS_HOLE:
                if pos + 2 > end:
                    raise bad(f"block {block_id} hole length runs past the record")
                (hole_length,) = U16.unpack_from(raw, pos)
                pos += 2
            elif not compressed:
                hole_length = BLCKSZ - img_len
            datatotal += img_len
            has_hole = bool(bimg_info & BKPIMAGE_HAS_HOLE)
            if has_hole and (hole_offset == 0 or hole_length == 0 or img_len == BLCKSZ):
                raise bad(f"BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length "
                          f"{hole_length} block image length {img_len} (block {block_id})")
            if not has_hole and (hole_offset != 0 or hole_length != 0):
                raise bad(f"BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length "
                          f"{hole_length} (block {block_id})")
            if compressed and img_len == BLCKSZ:
                raise bad(f"compressed block image length {img_len} (block {block_id})")
            if not has_hole and not compressed and img_len != BLCKSZ:
                raise bad(f"block image length {img_len} without hole or compression "
                          f"(block {block_id})")
        if fork_flags & BKPBLOCK_SAME_REL:
            if last_rel is None:
                raise bad(f"BKPBLOCK_SAME_REL set but no previous rel (block {block_id})")
            rel = RelTag(last_rel.spcnode, last_rel.dbnode, last_rel.relnode,
                         fork_flags & BKPBLOCK_FORK_MASK)
        else:
            if pos + REL_FILE_NODE.size > end:
                raise bad(f"block {block_id} relfilenode runs past the record")
            spc, db, relnode = REL_FILE_NODE.unpack_from(raw, pos)
            pos += REL_FILE_NODE.size
            rel = RelTag(spc, db, relnode, fork_flags & BKPBLOCK_FORK_MASK)
        last_rel = rel
        if pos + 4 > end:
            raise bad(f"block {block_id} block number runs past the record")
        (blkno,) = U32.unpack_from(raw, pos)
        pos += 4
        pending.append((block_id, rel, blkno, fork_flags, data_len, img_len, hole_offset,
                        hole_length, bimg_info))
    if end - pos != datatotal:
        raise bad(f"record length {hdr.xl_tot_len} does not match its headers "
                  f"({pos} header bytes + {datatotal} data bytes)")
    blocks = []
    for (block_id, rel, blkno, fork_flags, data_len, img_len, hole_offset, hole_length,
         bimg_info) in pending:
        image = raw[pos:pos + img_len]
        pos += img_len
        data = raw[pos:pos + data_len]
        pos += data_len
        blocks.append(BlockReference(block_id, rel, blkno, fork_flags, bimg_info, hole_offset,
                                     hole_length, image, data))
    main_data = raw[pos:pos + main_len]
    return DecodedRecord(lsn=lsn, end_lsn=end_lsn, header=hdr, blocks=tuple(blocks),
                         main_data=main_data, origin=origin, toplevel_xid=toplevel, raw=raw)


# --------------------------------------------------------------------------- compiled core

PURE_PYTHON_ENV = "PAGESTORE_PURE_PYTHON"


def _load_walcore() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from pagestore.pg import _walcore
    except ImportError:
        return None
    _walcore.configure(DecodedRecord, BlockReference, RelTag, XLogRecordHeader, Lsn)
    return _walcore


#: The compiled core, or None: not built (no compiler at install time) or switched off by
#: PAGESTORE_PURE_PYTHON=1.  ``pagestore --version`` and the services' start log say which.
walcore = _load_walcore()


def decode_record(raw: bytes, lsn: Lsn, end_lsn: Lsn, *, check_crc: bool = True) -> DecodedRecord:
    """Decode one reassembled record; raise CorruptWalError on any inconsistency."""
    if walcore is not None and type(raw) is bytes:
        rec: DecodedRecord | None = walcore.decode_record(raw, lsn, end_lsn, check_crc)
        if rec is not None:
            return rec
    return decode_record_py(raw, lsn, end_lsn, check_crc=check_crc)


def decoder_implementation() -> str:
    """'compiled' or 'pure-python': which WAL decoder this process runs."""
    return "compiled" if walcore is not None else "pure-python"


# --------------------------------------------------------------------------- images

def pglz_decompress(source: Buffer, rawsize: int) -> bytes:
    """PostgreSQL's pglz format (src/common/pg_lzcompress.c); None-free: raises ValueError."""
    src = bytes(source)
    out = bytearray()
    sp = 0
    slen = len(src)
    while sp < slen and len(out) < rawsize:
        ctrl = src[sp]
        sp += 1
        for _ in range(8):
            if sp >= slen or len(out) >= rawsize:
                break
            if ctrl & 1:
                if sp + 2 > slen:
                    raise ValueError("pglz: truncated match tag")
                length = (src[sp] & 0x0F) + 3
                off = ((src[sp] & 0xF0) << 4) | src[sp + 1]
                sp += 2
                if length == 18:
                    if sp >= slen:
                        raise ValueError("pglz: truncated extended length")
                    length += src[sp]
                    sp += 1
                if off == 0 or off > len(out):
                    raise ValueError("pglz: match offset outside the output")
                length = min(length, rawsize - len(out))
                start = len(out) - off
                if off >= length:
                    out += out[start:start + length]
                else:
                    for i in range(length):
                        out.append(out[start + i])
            else:
                out.append(src[sp])
                sp += 1
            ctrl >>= 1
    if len(out) != rawsize:
        raise ValueError(f"pglz: decompressed {len(out)} bytes, expected {rawsize}")
    return bytes(out)


def restore_block_image(block: BlockReference, lsn: Lsn) -> bytes:
    """The full 8192-byte page image of a block reference (RestoreBlockImage)."""
    if not block.has_image:
        raise CorruptWalError(f"block {block.block_id} of WAL record at {lsn} has no image")
    raw_len = BLCKSZ - block.hole_length
    image: bytes
    try:
        if block.bimg_info & BKPIMAGE_COMPRESS_PGLZ:
            image = pglz_decompress(block.image, raw_len)
        elif block.bimg_info & BKPIMAGE_COMPRESS_LZ4:
            import lz4.block

            image = lz4.block.decompress(block.image, uncompressed_size=raw_len)
        elif block.bimg_info & BKPIMAGE_COMPRESS_ZSTD:
            import zstandard

            image = zstandard.ZstdDecompressor().decompress(block.image,
                                                            max_output_size=raw_len)
        else:
            image = block.image
    except Exception as e:  # every codec has its own error types
        raise CorruptWalError(f"could not decompress image of block {block.block_id} in WAL "
                              f"record at {lsn}: {e}") from e
    if len(image) != raw_len:
        raise CorruptWalError(f"image of block {block.block_id} in WAL record at {lsn} is "
                              f"{len(image)} bytes, expected {raw_len}")
    if block.hole_length:
        return (image[:block.hole_offset] + bytes(block.hole_length)
                + image[block.hole_offset:])
    return image

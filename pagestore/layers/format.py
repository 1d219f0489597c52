"""The layer file format shared by delta and image layers: header, blocks, index, summary.

A layer file is written once and never changed.  Its sections, in file order:

    offset 0          header block    HEADER + CRC32C
    data_offset       data blocks     DATA_BLOCK_HEADER + payload + CRC32C, each
    index_offset      index blocks    INDEX_ENTRY * n + CRC32C, each
    summary_offset    summary block   SUMMARY_ENTRY per index block
                                      + DATA_BLOCK_REF per data block + CRC32C
    file_size         (end of file)

- Values are packed in (key, lsn) order into data blocks of about ``data_block_size``
  bytes (64 KiB); a value at least that large gets a block of its own.  A block is stored
  zstd-compressed when that makes it smaller, else raw; its header says which and gives
  the uncompressed length.
- The index has one fixed-size entry per value, sorted by (key, lsn): the key's 18 bytes
  and the LSN big-endian come first, so entries compare as bytes in (key, lsn) order
  (the "ordkey").  It is cut into blocks of ``index_block_entries`` entries (1000).
- The summary lists each index block's first ordkey, offset and entry count, and each
  data block's offset and stored size.  A reader loads it (and the header) when it opens
  the file; a lookup is then a bisect in memory, one index block and one data block.
- Every block ends with the CRC32C (Castagnoli) of the bytes before it.  A checksum
  mismatch, a bad magic, an unsupported version, a truncated file or an offset outside
  its section is a CorruptLayerError naming the file and the block; never a wrong value.
- Integers are big-endian throughout (keys and LSNs must be, to sort as bytes; the rest
  follow so one convention covers the file).

Writing goes to ``<final name>.<random>.___temp`` in the target directory; ``finish()``
writes the header last, fsyncs the file, links it to its final name, removes the
temporary name and fsyncs the directory.  The file's whole CRC32C (what the catalog
records) is computed while writing, without reading the file back.

Neon's equivalent is pageserver/src/tenant/storage_layer/{delta,image}_layer.rs (a
summary block, values, a disk B-tree index); this format is simpler but keeps the same
promises: immutable, self-describing, one-key lookups without reading the whole file.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import secrets
import struct
import threading
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Self

import crc32c
import zstandard

from pagestore.errors import CorruptLayerError
from pagestore.keys import KEY_SIZE, Key
from pagestore.layers.desc import LEVEL_L0, LayerDesc
from pagestore.layers.names import (
    TEMP_SUFFIX,
    LayerKind,
    LayerName,
    is_temp_layer_file_name,
    parse_layer_name,
)
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

log = logging.getLogger(__name__)

LAYER_MAGIC = b"PSLAYER\x00"
FORMAT_VERSION = 1

DEFAULT_DATA_BLOCK_SIZE = 64 * 1024
DEFAULT_INDEX_BLOCK_ENTRIES = 1000
DEFAULT_ZSTD_LEVEL = 1
DEFAULT_DATA_CACHE_BLOCKS = 32
DEFAULT_INDEX_CACHE_BLOCKS = 16

#: The largest value (and data block) the 32-bit length fields can describe.
MAX_VALUE_SIZE = 0xFFFF_FFFF

# magic 8s, format_version u16, kind u8 (KIND_CODES), flags u8 (reserved, 0),
# key_start 18s, key_end 18s, lsn_start u64, lsn_end u64 (exclusive),
# entry_count u64, key_count u64 (distinct keys), data_block_count u32,
# index_block_count u32, data_offset u64, index_offset u64, summary_offset u64,
# file_size u64 -- followed by the CRC32C of these bytes
HEADER = struct.Struct(">8sHBB18s18sQQQQIIQQQQ")
# crc32c u32: the trailer of every block
CRC = struct.Struct(">I")
HEADER_BLOCK_SIZE = HEADER.size + CRC.size

# codec u8 (Codec), raw_len u32 (uncompressed payload length) -- then the payload, then CRC
DATA_BLOCK_HEADER = struct.Struct(">BI")
# key 18s, lsn u64, flags u8 (FLAG_WILL_INIT), data_block u32, value_offset u32
# (in the uncompressed block), value_len u32
INDEX_ENTRY = struct.Struct(">18sQBIII")
# first_key 18s, first_lsn u64, index_block_offset u64, entry_count u32
SUMMARY_ENTRY = struct.Struct(">18sQQI")
# data_block_offset u64, data_block_size u32 (on disk, header and CRC included)
DATA_BLOCK_REF = struct.Struct(">QI")
# lsn u64: the LSN half of an ordkey
LSN_BE = struct.Struct(">Q")

ORDKEY_SIZE = KEY_SIZE + LSN_BE.size
FLAG_WILL_INIT = 0x01

KIND_CODES = {LayerKind.DELTA: 1, LayerKind.IMAGE: 2}
_KINDS_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}


class Codec(enum.IntEnum):
    """How a data block's payload is stored."""

    RAW = 0
    ZSTD = 1


class LayerHeader(NamedTuple):
    """The fields of HEADER, in order."""

    magic: bytes
    format_version: int
    kind: int
    flags: int
    key_start: bytes
    key_end: bytes
    lsn_start: int
    lsn_end: int
    entry_count: int
    key_count: int
    data_block_count: int
    index_block_count: int
    data_offset: int
    index_offset: int
    summary_offset: int
    file_size: int


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A finished layer file, as the catalog registers it.

    ``checksum`` is the CRC32C of the whole file; an image layer at LSN L has the LSN
    range [L, L + 1), like its name.
    """

    kind: LayerKind
    file_name: str
    path: Path
    key_start: Key
    key_end: Key
    lsn_start: Lsn
    lsn_end: Lsn
    file_size: int
    checksum: int
    entry_count: int

    def desc(self, level: int = LEVEL_L0) -> LayerDesc:
        """The descriptor the catalog registers for this file."""
        return LayerDesc(self.kind.value, level, self.key_start.to_bytes(),
                         self.key_end.to_bytes(), self.lsn_start, self.lsn_end,
                         self.file_name, self.file_size, self.checksum)


# ------------------------------------------------------------------------ checksums

_CRC32C_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reflected


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    total = 0
    i = 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: Sequence[int]) -> tuple[int, ...]:
    return tuple(_gf2_times(matrix, row) for row in matrix)


@functools.cache
def _zeros_operator(log2_bytes: int) -> tuple[int, ...]:
    """The GF(2) matrix that feeds 2**log2_bytes zero bytes through a CRC32C register."""
    if log2_bytes == 0:
        op: tuple[int, ...] = (_CRC32C_POLY, *(1 << n for n in range(31)))  # one zero bit
        for _ in range(3):
            op = _gf2_square(op)
        return op
    return _gf2_square(_zeros_operator(log2_bytes - 1))


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C(A + B) from CRC32C(A), CRC32C(B) and len(B): zlib's crc32_combine."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_zeros_operator(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


def file_checksum(path: Path, chunk_size: int = 1024 * 1024) -> int:
    """CRC32C of a whole file (to check a copy against ``LayerInfo.checksum``)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            crc = crc32c.crc32c(chunk, crc)
    return crc


def ordkey(key_bytes: bytes, lsn: int) -> bytes:
    """The 26-byte (key, lsn) sort key of index entries."""
    return key_bytes + LSN_BE.pack(lsn)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- writer

def temp_writer(name: str) -> str | None:
    """The writer tag in a temporary file's name (``<final>.<writer>-<hex>.___temp``)."""
    if not is_temp_layer_file_name(name):
        return None
    tail = name[:-len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
    writer, sep, _ = tail.rpartition("-")
    return writer if sep else None


def sweep_unregistered(directory: Path, registered: set[str], *, writer: str,
                       owns: Callable[[LayerName], bool]) -> list[str]:
    """Remove what ``writer`` left behind in a timeline directory: its temporary files (a
    write that crashed or was aborted) and complete layer files no catalog row names
    that ``owns`` says are its own (a crash between linking a file and committing its
    row, or between committing a swap and unlinking the files it replaced).  Ingest and
    housekeeping both write into timeline directories: each sweeps only its own files,
    as the caller of ``owns`` knows them (ingest: L0 deltas above disk_consistent_lsn;
    housekeeping: anything at or below it).  The caller must be the only writer of its
    kind for the directory and read ``registered`` in the same snapshot as the LSNs
    ``owns`` compares with.  Returns the names removed."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        name = path.name
        if not path.is_file() or name in registered:
            continue
        if is_temp_layer_file_name(name):
            if temp_writer(name) != writer:
                continue
            why = "temporary"
        else:
            try:
                layer_name = parse_layer_name(name)
            except ValueError:
                continue  # not a layer file: leave it
            if not owns(layer_name):
                continue
            why = "not registered"
        path.unlink(missing_ok=True)
        removed.append(name)
        log.info("removed leftover layer file %s (%s)", path, why)
    if removed:
        fsync_directory(directory)
    return removed


class _WriterState(enum.Enum):
    OPEN = "open"
    FINISHED = "finished"
    ABORTED = "aborted"


class LayerFileWriter:
    """Streams (key, lsn, flags, value) entries, in ascending (key, lsn) order, to a
    temporary file; ``finish()`` completes the file and moves it to its final name.

    Data blocks go to disk as they fill; the index (INDEX_ENTRY.size bytes per entry)
    stays in memory until ``finish()``.  Not thread-safe: one writer, one thread.
    """

    def __init__(self, directory: Path, kind: LayerKind, file_name: str,
                 key_start: Key, key_end: Key, lsn_start: int, lsn_end: int, *,
                 data_block_size: int = DEFAULT_DATA_BLOCK_SIZE,
                 index_block_entries: int = DEFAULT_INDEX_BLOCK_ENTRIES,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL, writer: str = "tool") -> None:
        if not 0 < data_block_size <= MAX_VALUE_SIZE:
            raise ValueError(f"data_block_size must be in 1..{MAX_VALUE_SIZE}, "
                             f"got {data_block_size}")
        if index_block_entries < 1:
            raise ValueError(f"index_block_entries must be positive, got {index_block_entries}")
        self.directory = Path(directory)
        self.kind = kind
        self.file_name = file_name
        self.path = self.directory / file_name
        self.key_start = key_start
        self.key_end = key_end
        self.lsn_start = Lsn(lsn_start)
        self.lsn_end = Lsn(lsn_end)
        self._key_start_bytes = key_start.to_bytes()
        self._key_end_bytes = key_end.to_bytes()
        self._block_target = data_block_size
        self._index_block_entries = index_block_entries
        self._cctx = zstandard.ZstdCompressor(level=zstd_level)

        self._buf = bytearray()       # the data block being filled
        self._buf_entries = 0         # entries pointing into it
        self._block_refs = bytearray()  # DATA_BLOCK_REF per written data block
        self._block_count = 0
        self._index = bytearray()     # INDEX_ENTRY per entry, in order
        self._entry_count = 0
        self._key_count = 0
        self._last_ordkey = b""
        self._pos = HEADER_BLOCK_SIZE  # file offset of the next write
        self._body_crc = 0             # CRC32C of everything after the header block

        if not writer.isidentifier():
            raise ValueError(f"writer tag {writer!r} must be an identifier")
        self.temp_path = (self.directory
                          / f"{file_name}.{writer}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o644)
        try:
            self._file = open(fd, "wb", buffering=1024 * 1024)  # closed by finish/abort
        except BaseException:
            os.close(fd)
            self.temp_path.unlink(missing_ok=True)
            raise
        self._state = _WriterState.OPEN
        self._file.write(bytes(HEADER_BLOCK_SIZE))  # placeholder, rewritten by finish()

    # -------------------------------------------------------------- context manager
    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Leaving the block without finish() (normally or by an exception) discards
        # the file; abort() is a no-op after a successful finish().
        self.abort()

    # ---------------------------------------------------------------------- writing
    @property
    def entry_count(self) -> int:
        return self._entry_count

    def _check_open(self) -> None:
        if self._state is not _WriterState.OPEN:
            raise ValueError(f"{self.kind} layer writer for {self.file_name} is "
                             f"{self._state.value}")

    def _put(self, key: Key, lsn: int, flags: int, value: bytes) -> None:
        self.put_raw(key.to_bytes(), lsn, flags, value)

    def put_raw(self, key_bytes: bytes, lsn: int, flags: int, value: bytes) -> None:
        """Add one entry with the key in its 18-byte form and the index flags as they are
        (FLAG_WILL_INIT): the hot path of ingest flushes and compaction."""
        if self._state is not _WriterState.OPEN:
            self._check_open()
        if not self._key_start_bytes <= key_bytes < self._key_end_bytes:
            raise ValueError(f"{self.kind} layer {self.file_name}: key "
                             f"{Key.from_bytes(key_bytes)} is outside the layer's key range "
                             f"[{self.key_start}, {self.key_end})")
        if not self.lsn_start <= lsn < self.lsn_end:
            raise ValueError(f"{self.kind} layer {self.file_name}: LSN {Lsn(lsn)} of key "
                             f"{Key.from_bytes(key_bytes)} is outside the layer's LSN range "
                             f"[{self.lsn_start}, {self.lsn_end})")
        ok = key_bytes + LSN_BE.pack(lsn)
        if ok <= self._last_ordkey:
            self._refuse_order(Key.from_bytes(key_bytes), lsn, ok)
        n = len(value)
        if n > MAX_VALUE_SIZE:
            raise ValueError(f"{self.kind} layer {self.file_name}: value of key "
                             f"{Key.from_bytes(key_bytes)} at {Lsn(lsn)} is {n} bytes, over "
                             f"the {MAX_VALUE_SIZE}-byte limit")
        if n >= self._block_target and self._buf_entries:
            self._flush_block()  # a big value gets a block of its own
        self._index += INDEX_ENTRY.pack(key_bytes, lsn, flags, self._block_count,
                                        len(self._buf), n)
        self._buf += value
        self._buf_entries += 1
        if key_bytes != self._last_ordkey[:KEY_SIZE]:
            self._key_count += 1
        self._last_ordkey = ok
        self._entry_count += 1
        if len(self._buf) >= self._block_target:
            self._flush_block()

    def _refuse_order(self, key: Key, lsn: int, ok: bytes) -> None:
        prev_key = Key.from_bytes(self._last_ordkey[:KEY_SIZE])
        (prev_lsn,) = LSN_BE.unpack_from(self._last_ordkey, KEY_SIZE)
        what = "a duplicate of" if ok == self._last_ordkey else "not after"
        raise ValueError(f"{self.kind} layer {self.file_name}: (key {key}, LSN {Lsn(lsn)}) is "
                         f"{what} the previous put (key {prev_key}, LSN {Lsn(prev_lsn)}); "
                         "puts must be in strictly ascending (key, LSN) order")

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._body_crc = crc32c.crc32c(data, self._body_crc)
        self._pos += len(data)

    def _flush_block(self) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        self._buf_entries = 0
        compressed = self._cctx.compress(raw)
        if len(compressed) < len(raw):
            head, payload = DATA_BLOCK_HEADER.pack(Codec.ZSTD, len(raw)), compressed
        else:
            head, payload = DATA_BLOCK_HEADER.pack(Codec.RAW, len(raw)), raw
        size = len(head) + len(payload) + CRC.size
        self._block_refs += DATA_BLOCK_REF.pack(self._pos, size)
        self._write(head)
        self._write(payload)
        self._write(CRC.pack(crc32c.crc32c(payload, crc32c.crc32c(head))))
        self._block_count += 1

    def narrow_key_end(self, key_end: Key) -> None:
        """End the layer's key range at ``key_end`` instead (compaction cuts a partition
        where its size is reached): the final name and the header follow.  ``key_end``
        must lie above every key written and not above the range given at the start."""
        self._check_open()
        kb = key_end.to_bytes()
        if not (self._last_ordkey[:KEY_SIZE] < kb <= self._key_end_bytes
                and self._key_start_bytes < kb):
            raise ValueError(f"{self.kind} layer {self.file_name}: cannot end its key range "
                             f"at {key_end}")
        self.key_end = key_end
        self._key_end_bytes = kb
        lsn_end = self.lsn_end if self.kind is LayerKind.DELTA else self.lsn_start + 1
        self.file_name = LayerName(self.kind, self.key_start, key_end, self.lsn_start,
                                   Lsn(lsn_end)).file_name
        self.path = self.directory / self.file_name

    def finish(self, *, replace: bool = False) -> LayerInfo:
        """Complete the file, make it durable and give it its final name.

        An existing file of that name is a FileExistsError unless ``replace``.  On any
        failure nothing is left under either name and the writer is aborted.
        """
        self._check_open()
        linked = False
        try:
            if self._buf_entries:
                self._flush_block()
            data_offset = HEADER_BLOCK_SIZE
            index_offset = self._pos
            summary = bytearray()
            step = self._index_block_entries * INDEX_ENTRY.size
            index_block_count = 0
            for start in range(0, len(self._index), step):
                block = bytes(self._index[start:start + step])
                first_key, first_lsn = block[:KEY_SIZE], LSN_BE.unpack_from(block, KEY_SIZE)[0]
                summary += SUMMARY_ENTRY.pack(first_key, first_lsn, self._pos,
                                              len(block) // INDEX_ENTRY.size)
                self._write(block)
                self._write(CRC.pack(crc32c.crc32c(block)))
                index_block_count += 1
            summary_offset = self._pos
            summary += self._block_refs
            self._write(bytes(summary))
            self._write(CRC.pack(crc32c.crc32c(summary)))
            file_size = self._pos
            header = HEADER.pack(
                LAYER_MAGIC, FORMAT_VERSION, KIND_CODES[self.kind], 0,
                self._key_start_bytes, self._key_end_bytes, self.lsn_start, self.lsn_end,
                self._entry_count, self._key_count, self._block_count, index_block_count,
                data_offset, index_offset, summary_offset, file_size)
            header_block = header + CRC.pack(crc32c.crc32c(header))
            self._file.seek(0)
            self._file.write(header_block)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            checksum = crc32c_combine(crc32c.crc32c(header_block), self._body_crc,
                                      file_size - HEADER_BLOCK_SIZE)
            if replace:
                os.replace(self.temp_path, self.path)
            else:
                os.link(self.temp_path, self.path)  # fails if the name exists
                os.unlink(self.temp_path)
            linked = True
            fsync_directory(self.directory)
        except BaseException:
            if linked:
                self.path.unlink(missing_ok=True)
            self.abort()
            raise
        self._state = _WriterState.FINISHED
        self._index = bytearray()
        log.info("wrote %s layer %s: %d entries, %d keys, %d data blocks, %d bytes",
                 self.kind, self.file_name, self._entry_count, self._key_count,
                 self._block_count, file_size)
        return LayerInfo(self.kind, self.file_name, self.path, self.key_start, self.key_end,
                         self.lsn_start, self.lsn_end, file_size, checksum, self._entry_count)

    def abort(self) -> None:
        """Discard the file being written.  Idempotent; a no-op after finish()."""
        if self._state is not _WriterState.OPEN:
            return
        self._state = _WriterState.ABORTED
        try:
            self._file.close()
        except OSError:
            log.warning("closing temporary layer file %s failed", self.temp_path,
                        exc_info=True)
        self.temp_path.unlink(missing_ok=True)
        self._index = bytearray()
        self._buf = bytearray()
        log.debug("aborted %s layer %s", self.kind, self.file_name)


# --------------------------------------------------------------------------- reader

_TLS = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompression context per thread (a context is not thread-safe)."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_TLS, "dctx", None)
    if dctx is None:
        dctx = _TLS.dctx = zstandard.ZstdDecompressor()
    return dctx


Buffer = bytes | memoryview


class ByteSource(Protocol):
    """Where a reader's bytes come from: a local file (FileSource), or a layer file in
    remote storage read with ranged GETs (pagestore.remote.ondemand.LayerSource)."""

    def size(self) -> int: ...

    def pread(self, size: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


class FileSource:
    """A local file read with ``os.pread``."""

    __slots__ = ("fd",)

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pread(self, size: int, offset: int) -> bytes:
        if self.fd < 0:
            raise ValueError("the file is closed")
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # A reader dropped from a map's cache while a read still used it is closed when
        # the last reference goes (LayerMap.replace).
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1


class LayerFileReader:
    """Reads one layer file (``os.pread`` on a local file, or a given ByteSource);
    opening verifies the header and summary.

    Index blocks and uncompressed data blocks are verified when read and kept in small
    per-reader LRU caches.  Lookups are safe from several threads; ``close()`` is not
    meant to race with them.
    """

    def __init__(self, path: Path, expected_kind: LayerKind | None = None, *,
                 data_cache_blocks: int = DEFAULT_DATA_CACHE_BLOCKS,
                 index_cache_blocks: int = DEFAULT_INDEX_CACHE_BLOCKS,
                 source: ByteSource | None = None) -> None:
        self.path = Path(path)
        self._src: ByteSource = source if source is not None else FileSource(self.path)
        self._closed = False
        try:
            self._open(expected_kind)
        except BaseException:
            self._src.close()
            self._closed = True
            raise
        self._index_block = functools.lru_cache(maxsize=index_cache_blocks)(
            self._read_index_block)
        self._data_block = functools.lru_cache(maxsize=data_cache_blocks)(
            self._read_data_block)

    def _corrupt(self, what: str) -> CorruptLayerError:
        return CorruptLayerError(f"layer file {self.path}: {what}")

    def _pread(self, size: int, offset: int, what: str) -> bytes:
        if self._closed:
            raise ValueError(f"layer file {self.path} is closed")
        data = self._src.pread(size, offset)
        if len(data) != size:
            raise self._corrupt(f"{what} at offset {offset} is truncated: "
                                f"read {len(data)} of {size} bytes")
        return data

    def _check_crc(self, block: bytes, what: str, offset: int) -> memoryview:
        """The block without its CRC trailer, once the trailer matches."""
        body = memoryview(block)[:len(block) - CRC.size]
        (stored,) = CRC.unpack_from(block, len(block) - CRC.size)
        computed = crc32c.crc32c(body)
        if computed != stored:
            raise self._corrupt(f"{what} at offset {offset} ({len(block)} bytes): checksum "
                                f"mismatch (stored {stored:08X}, computed {computed:08X})")
        return body

    def _open(self, expected_kind: LayerKind | None) -> None:
        actual_size = self._src.size()
        raw = self._src.pread(min(HEADER_BLOCK_SIZE, actual_size), 0) if actual_size else b""
        if len(raw) >= len(LAYER_MAGIC) and raw[:len(LAYER_MAGIC)] != LAYER_MAGIC:
            raise self._corrupt(f"bad magic {raw[:len(LAYER_MAGIC)]!r} at offset 0 "
                                f"(expected {LAYER_MAGIC!r}): not a pagestore layer file")
        if len(raw) < HEADER_BLOCK_SIZE:
            raise self._corrupt(f"truncated: {actual_size} bytes, shorter than the "
                                f"{HEADER_BLOCK_SIZE}-byte header block")
        h = LayerHeader._make(HEADER.unpack_from(self._check_crc(raw, "header block", 0)))
        if h.format_version != FORMAT_VERSION:
            raise self._corrupt(f"unsupported format version {h.format_version} "
                                f"(this build reads version {FORMAT_VERSION})")
        kind = _KINDS_BY_CODE.get(h.kind)
        if kind is None or h.flags != 0:
            raise self._corrupt(f"header: unknown layer kind {h.kind} or flags {h.flags:#x}")
        if expected_kind is not None and kind is not expected_kind:
            raise self._corrupt(f"header: the file holds a layer of kind {kind!s}, "
                                f"expected {expected_kind!s}")
        if actual_size != h.file_size:
            raise self._corrupt(
                f"truncated: {actual_size} bytes, the header says {h.file_size}"
                if actual_size < h.file_size else
                f"{actual_size} bytes, the header says {h.file_size}: trailing bytes")
        summary_size = (h.index_block_count * SUMMARY_ENTRY.size
                        + h.data_block_count * DATA_BLOCK_REF.size + CRC.size)
        if not (h.data_offset == HEADER_BLOCK_SIZE <= h.index_offset <= h.summary_offset
                and h.summary_offset + summary_size == h.file_size
                and h.summary_offset - h.index_offset
                == h.entry_count * INDEX_ENTRY.size + h.index_block_count * CRC.size
                and h.key_start < h.key_end and h.lsn_start < h.lsn_end):
            raise self._corrupt(
                f"header: inconsistent layout (data at {h.data_offset}, index at "
                f"{h.index_offset}, summary at {h.summary_offset}, file size {h.file_size}, "
                f"{h.entry_count} entries, {h.index_block_count} index blocks, "
                f"{h.data_block_count} data blocks)")
        self.header = h
        self.kind = kind
        self.key_start = Key.from_bytes(h.key_start)
        self.key_end = Key.from_bytes(h.key_end)
        self.lsn_start = Lsn(h.lsn_start)
        self.lsn_end = Lsn(h.lsn_end)

        block = self._pread(summary_size, h.summary_offset, "summary block")
        summary = self._check_crc(block, "summary block", h.summary_offset)
        firsts: list[bytes] = []
        index_blocks: list[tuple[int, int]] = []
        expected_offset = h.index_offset
        total = 0
        previous = b""
        for i in range(h.index_block_count):
            _, _, offset, count = SUMMARY_ENTRY.unpack_from(summary, i * SUMMARY_ENTRY.size)
            first = bytes(summary[i * SUMMARY_ENTRY.size:i * SUMMARY_ENTRY.size + ORDKEY_SIZE])
            if offset != expected_offset or count == 0 or first <= previous:
                raise self._corrupt(
                    f"summary block at offset {h.summary_offset}: entry {i} (index block at "
                    f"offset {offset}, {count} entries) is out of place")
            firsts.append(first)
            index_blocks.append((offset, count))
            expected_offset += count * INDEX_ENTRY.size + CRC.size
            total += count
            previous = first
        if expected_offset != h.summary_offset or total != h.entry_count:
            raise self._corrupt(f"summary block at offset {h.summary_offset}: index blocks "
                                f"hold {total} entries, the header says {h.entry_count}")
        self._firsts = firsts
        self._index_blocks = index_blocks
        self._block_refs = summary[h.index_block_count * SUMMARY_ENTRY.size:]
        log.debug("opened %s layer %s: %d entries", kind, self.path, h.entry_count)

    # ------------------------------------------------------------------- properties
    @property
    def entry_count(self) -> int:
        return self.header.entry_count

    @property
    def key_count(self) -> int:
        """Distinct keys in the file."""
        return self.header.key_count

    @property
    def file_size(self) -> int:
        return self.header.file_size

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------------ blocks
    def _read_index_block(self, i: int) -> bytes:
        offset, count = self._index_blocks[i]
        what = f"index block {i}"
        block = self._pread(count * INDEX_ENTRY.size + CRC.size, offset, what)
        self._check_crc(block, what, offset)
        if block[:ORDKEY_SIZE] != self._firsts[i]:
            raise self._corrupt(f"{what} at offset {offset} does not start with the entry "
                                "the summary lists")
        return block

    def _read_data_block(self, n: int) -> Buffer:
        if not 0 <= n < self.header.data_block_count:
            raise self._corrupt(f"an index entry refers to data block {n}; the file has "
                                f"{self.header.data_block_count}")
        offset, size = DATA_BLOCK_REF.unpack_from(self._block_refs, n * DATA_BLOCK_REF.size)
        what = f"data block {n}"
        if (offset < self.header.data_offset or offset + size > self.header.index_offset
                or size < DATA_BLOCK_HEADER.size + CRC.size):
            raise self._corrupt(f"{what}: offset {offset} and size {size} are outside the "
                                f"data section [{self.header.data_offset}, "
                                f"{self.header.index_offset})")
        body = self._check_crc(self._pread(size, offset, what), what, offset)
        codec, raw_len = DATA_BLOCK_HEADER.unpack_from(body)
        payload = body[DATA_BLOCK_HEADER.size:]
        if codec == Codec.RAW:
            if len(payload) != raw_len:
                raise self._corrupt(f"{what} at offset {offset}: {len(payload)} raw bytes, "
                                    f"the block header says {raw_len}")
            return payload
        if codec != Codec.ZSTD:
            raise self._corrupt(f"{what} at offset {offset}: unknown codec {codec}")
        try:
            data: bytes = _decompressor().decompress(payload, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise self._corrupt(f"{what} at offset {offset}: zstd: {exc}") from None
        if len(data) != raw_len:
            raise self._corrupt(f"{what} at offset {offset}: decompressed to {len(data)} "
                                f"bytes, the block header says {raw_len}")
        return data

    def _value(self, block: Buffer, n: int, offset: int, length: int) -> bytes:
        end = offset + length
        if end > len(block):
            raise self._corrupt(f"an index entry points past the end of data block {n} "
                                f"({offset}+{length} > {len(block)} bytes)")
        return bytes(block[offset:end])

    # ----------------------------------------------------------------------- lookups
    def lookup(self, lo: bytes, hi: bytes) -> list[tuple[int, int, bytes]]:
        """(lsn, flags, value) of every entry whose ordkey is in [lo, hi), in order."""
        return self._range(lo, hi, False)

    def lookup_keyed(self, lo: bytes, hi: bytes) -> list[tuple[bytes, int, int, bytes]]:
        """(key bytes, lsn, flags, value) of every entry whose ordkey is in [lo, hi), in
        order: many keys' versions in one pass (LayerMap.get_many)."""
        return self._range(lo, hi, True)

    def _range(self, lo: bytes, hi: bytes, keyed: bool) -> list[tuple[Any, ...]]:
        firsts = self._firsts
        i = bisect_right(firsts, lo) - 1
        if i < 0:
            i = 0
        n_blocks = len(firsts)
        size = INDEX_ENTRY.size
        out: list[tuple[Any, ...]] = []
        first_block = True
        while i < n_blocks and firsts[i] < hi:
            block = self._index_block(i)
            count = self._index_blocks[i][1]
            j = 0
            if first_block:
                first_block = False
                end = count  # lower bound of lo among this block's entries
                while j < end:
                    mid = (j + end) >> 1
                    if block[mid * size:mid * size + ORDKEY_SIZE] < lo:
                        j = mid + 1
                    else:
                        end = mid
            pos = j * size
            while j < count:
                if block[pos:pos + ORDKEY_SIZE] >= hi:
                    return out
                key, lsn, flags, n, offset, length = INDEX_ENTRY.unpack_from(block, pos)
                value = self._value(self._data_block(n), n, offset, length)
                out.append((key, lsn, flags, value) if keyed else (lsn, flags, value))
                j += 1
                pos += size
            i += 1
        return out

    def lookup_newest(self, lo: bytes, hi: bytes) -> list[tuple[int, int, bytes]]:
        """Like ``lookup`` for one key's versions in [lo, hi), but only those a read
        needs: walking down from the newest, up to and including the first one flagged
        will_init (or all of them when none is).  Older versions are not touched, not even
        their index entries past the one that stops the walk."""
        firsts = self._firsts
        i = bisect_right(firsts, hi) - 1  # the index block where entries below hi end
        if i < 0:
            return []
        size = INDEX_ENTRY.size
        block = self._index_block(i)
        count = self._index_blocks[i][1]
        j, end = 0, count  # entries of block i below hi: [0, j)
        while j < end:
            mid = (j + end) >> 1
            if block[mid * size:mid * size + ORDKEY_SIZE] < hi:
                j = mid + 1
            else:
                end = mid
        found: list[tuple[int, int, int, int, int]] = []
        while True:
            while j > 0:
                j -= 1
                pos = j * size
                if block[pos:pos + ORDKEY_SIZE] < lo:
                    return self._values_of(found)
                _, lsn, flags, n, offset, length = INDEX_ENTRY.unpack_from(block, pos)
                found.append((lsn, flags, n, offset, length))
                if flags & FLAG_WILL_INIT:
                    return self._values_of(found)
            if i == 0 or firsts[i] <= lo:
                return self._values_of(found)
            i -= 1
            block = self._index_block(i)
            j = self._index_blocks[i][1]

    def _values_of(self, found: list[tuple[int, int, int, int, int]]
                   ) -> list[tuple[int, int, bytes]]:
        """(lsn, flags, value) of index entries collected newest first, oldest first."""
        return [(lsn, flags, self._value(self._data_block(n), n, offset, length))
                for lsn, flags, n, offset, length in reversed(found)]

    def iter_entries(self, *, values: bool = True) -> Iterator[tuple[bytes, int, int, bytes]]:
        """Every (key bytes, lsn, flags, value) in (key, lsn) order, reading each block
        once and bypassing the caches (for compaction and scans).  With ``values=False``
        no data block is read and the value is b""."""
        size = INDEX_ENTRY.size
        current_n = -1
        current: Buffer = b""
        for i in range(len(self._index_blocks)):
            block = self._read_index_block(i)
            for pos in range(0, self._index_blocks[i][1] * size, size):
                key, lsn, flags, n, offset, length = INDEX_ENTRY.unpack_from(block, pos)
                value = b""
                if values:
                    if n != current_n:
                        current, current_n = self._read_data_block(n), n
                    value = self._value(current, n, offset, length)
                yield key, lsn, flags, value

    def iter_keys(self) -> Iterator[Key]:
        """Distinct keys in order (reads the index only)."""
        previous = b""
        for key, _, _, _ in self.iter_entries(values=False):
            if key != previous:
                previous = key
                yield Key.from_bytes(key)

    def desc(self, level: int = LEVEL_L0) -> LayerDesc:
        """A descriptor of this file (its whole-file checksum computed by reading it)."""
        h = self.header
        return LayerDesc(self.kind.value, level, h.key_start, h.key_end, self.lsn_start,
                         self.lsn_end, self.path.name, h.file_size, file_checksum(self.path))

    def verify(self) -> None:
        """Read and check every block; CorruptLayerError on the first bad one."""
        for _ in self.iter_entries():
            pass

    # ------------------------------------------------------------------------ closing
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._src.close()
        self._index_block.cache_clear()
        self._data_block.cache_clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

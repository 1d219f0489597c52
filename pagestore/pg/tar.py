"""Streaming TAR: a sans-IO reader for base backups and a small writer.

Mirrors the archive PostgreSQL's BASE_BACKUP writes (src/port/tar.c tarCreateHeader,
src/include/pgtar.h, src/backend/backup/basebackup.c), which is POSIX ustar
(IEEE Std 1003.1-2008, "pax" chapter, ustar Interchange Format): 512-byte blocks, a header
block per member, content padded to a block boundary, two zero blocks at the end.

Rules:
- No I/O in the reader.  ``TarReader.feed(data)`` accepts bytes cut anywhere;
  ``next_event()`` returns a ``TarMember`` (a header), ``TarChunk`` (content), or
  ``TarEnd`` (the two zero blocks), or None when it needs more bytes.  Content is handed
  out as it arrives, never the whole archive: members up to ``whole_file_limit`` bytes come
  as one chunk, larger ones in the pieces that were fed.  ``finish()`` at end of input
  raises if the archive was cut short.
- Numbers are octal, or GNU base-256 (first byte 0x80) when they do not fit, exactly as
  print_tar_number/read_tar_number do.  The checksum is verified (unsigned sum, signed
  accepted as old tars wrote it).
- PostgreSQL writes plain ustar with names up to 99 bytes, directories and symlinks with a
  trailing slash, and one name with a leading ``./`` (``./pg_wal/archive_status/``);
  ``TarMember.path`` strips both.  For archives made by other tools the reader also
  understands the ustar prefix field, pax extended headers ('x' per member, 'g' global:
  path, linkpath, size, mtime, uid, gid) and GNU long names ('L', 'K').  Sparse and other
  exotic member types are a TarFormatError naming the member.
- Only regular files carry content; the size field of other types is ignored, as
  Python's tarfile does.
- Malformed input is a TarFormatError (a ProtocolError) naming the member and field.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import IO

from pagestore.errors import ProtocolError

Buffer = bytes | bytearray | memoryview

TAR_BLOCK_SIZE = 512
# name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, version,
# uname, gname, devmajor, devminor, prefix, pad  (POSIX ustar header, 512 bytes)
TAR_HEADER = struct.Struct("!100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")
CHECKSUM_OFFSET = 148
CHECKSUM_SIZE = 8
USTAR_MAGIC = b"ustar\x00"  # POSIX; GNU tar's old format writes b"ustar " + b" \x00"
USTAR_VERSION = b"00"
END_OF_ARCHIVE = bytes(2 * TAR_BLOCK_SIZE)

DEFAULT_WHOLE_FILE_LIMIT = 128 * 1024
MAX_EXTENDED_HEADER = 1024 * 1024  # cap on pax and GNU long-name member content

_COMPACT_AT = 256 * 1024


class TarFormatError(ProtocolError):
    """A TAR archive that does not parse; the message names the member and field."""


class TarType(bytes, enum.Enum):
    """Member type flags (the ustar typeflag byte) the reader hands out."""

    REGULAR = b"0"
    HARDLINK = b"1"
    SYMLINK = b"2"
    CHAR_DEVICE = b"3"
    BLOCK_DEVICE = b"4"
    DIRECTORY = b"5"
    FIFO = b"6"


_TYPE_ALIASES = {b"\x00": TarType.REGULAR, b"7": TarType.REGULAR}  # old tar, contiguous
_PAX_MEMBER = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"


@dataclass(frozen=True, slots=True)
class TarMember:
    """One member's header.  ``name`` is as stored; ``path`` is normalized."""

    name: str
    type: TarType
    mode: int
    size: int
    mtime: int
    uid: int
    gid: int
    linkname: str = ""

    @property
    def path(self) -> str:
        """The name without a leading ``./`` and trailing ``/`` (``global/pg_control``)."""
        p = self.name
        while p.startswith("./"):
            p = p[2:]
        return p.rstrip("/") if p not in ("", "/") else p

    @property
    def is_file(self) -> bool:
        return self.type is TarType.REGULAR

    @property
    def is_dir(self) -> bool:
        return self.type is TarType.DIRECTORY


@dataclass(frozen=True, slots=True)
class TarChunk:
    """Content of ``member`` from byte ``offset`` on."""

    member: TarMember
    offset: int
    data: bytes

    @property
    def last(self) -> bool:
        return self.offset + len(self.data) == self.member.size


@dataclass(frozen=True, slots=True)
class TarEnd:
    """The end-of-archive marker (two zero blocks) after ``members`` members."""

    members: int


TarEvent = TarMember | TarChunk | TarEnd


class _State(enum.Enum):
    HEADER = "header"          # expecting a header block (or the first zero block)
    ZERO_BLOCK = "zero block"  # one zero block seen, expecting the second
    CONTENT = "content"        # inside a regular member's content
    EXTENDED = "extended"      # inside a pax or GNU long-name member
    PADDING = "padding"        # skipping the zeros after content
    END = "end"                # end-of-archive seen; the rest is ignored


def padding_for(size: int) -> int:
    """tarPaddingBytesRequired: zeros after ``size`` bytes of content."""
    return -size % TAR_BLOCK_SIZE


def read_tar_number(field: bytes, what: str, member: str) -> int:
    """An octal (or GNU base-256) header number, as src/port/tar.c reads it."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise TarFormatError(f"tar member {member!r}: negative base-256 {what}")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"tar member {member!r}: {what} field {field!r} is not octal") from None


def print_tar_number(value: int, length: int) -> bytes:
    """print_tar_number: zero-padded octal and a space, or base-256 when too large."""
    if value < 0:
        raise ValueError(f"tar numbers cannot be negative: {value}")
    if value < 1 << ((length - 1) * 3):
        return f"{value:0{length - 1}o} ".encode()
    if value >= 1 << ((length - 1) * 8):
        raise ValueError(f"{value} does not fit a {length}-byte tar number")
    return b"\x80" + value.to_bytes(length - 1, "big")


def tar_checksum(header: Buffer) -> tuple[int, int]:
    """The unsigned and signed header sums, the checksum field counted as spaces."""
    block = bytes(header)
    body = block[:CHECKSUM_OFFSET] + b" " * CHECKSUM_SIZE + block[CHECKSUM_OFFSET + CHECKSUM_SIZE:]
    unsigned = sum(body)
    signed = unsigned - 256 * sum(1 for b in body if b >= 128)
    return unsigned, signed


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    return field.split(b"\x00", 1)[0]


class TarReader:
    """Incremental TAR parser; see the module docstring for the events."""

    def __init__(self, *, whole_file_limit: int = DEFAULT_WHOLE_FILE_LIMIT) -> None:
        self.whole_file_limit = whole_file_limit
        self._buf = bytearray()
        self._pos = 0
        self._state = _State.HEADER
        self._member: TarMember | None = None
        self._offset = 0            # content bytes of the current member handed out
        self._remaining = 0         # bytes left in CONTENT/EXTENDED/PADDING
        self._extended_type = b""
        self._global_pax: dict[str, str] = {}
        self._pending_pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self.members = 0

    # ----------------------------------------------------------------- input
    def feed(self, data: Buffer) -> None:
        if self._state is _State.END:
            return
        if self._pos >= _COMPACT_AT and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def at_end(self) -> bool:
        return self._state is _State.END

    def finish(self) -> None:
        """Declare the input complete; raises if the archive was cut short."""
        if self._state is _State.END:
            return
        if self._state in (_State.CONTENT, _State.PADDING) and self._member is not None:
            raise TarFormatError(
                f"tar archive ends inside member {self._member.name!r} "
                f"({self._offset} of {self._member.size} bytes)")
        if self._state is _State.EXTENDED:
            raise TarFormatError("tar archive ends inside an extended header")
        if self.buffered:
            raise TarFormatError(
                f"tar archive ends with a partial {self.buffered}-byte block")
        raise TarFormatError(
            f"tar archive ends after {self.members} members without its end-of-archive "
            "marker (two zero blocks)")

    # ----------------------------------------------------------------- events
    def next_event(self) -> TarEvent | None:
        while True:
            state = self._state
            if state is _State.END:
                return None
            if state is _State.HEADER or state is _State.ZERO_BLOCK:
                if self.buffered < TAR_BLOCK_SIZE:
                    return None
                block = bytes(self._buf[self._pos:self._pos + TAR_BLOCK_SIZE])
                self._pos += TAR_BLOCK_SIZE
                if block == bytes(TAR_BLOCK_SIZE):
                    if state is _State.ZERO_BLOCK:
                        self._state = _State.END
                        self._buf = bytearray()
                        self._pos = 0
                        return TarEnd(self.members)
                    self._state = _State.ZERO_BLOCK
                    continue
                if state is _State.ZERO_BLOCK:
                    raise TarFormatError(
                        f"tar archive has a lone zero block after {self.members} members")
                member = self._parse_header(block)
                if member is not None:
                    return member
                continue
            if state is _State.CONTENT:
                chunk = self._next_chunk()
                if chunk is None:
                    return None
                return chunk
            if state is _State.EXTENDED:
                if self.buffered < self._remaining:
                    return None
                data = bytes(self._buf[self._pos:self._pos + self._remaining])
                self._pos += self._remaining
                self._apply_extended(data)
                self._remaining = padding_for(len(data))
                self._state = _State.PADDING
                continue
            # PADDING
            take = min(self._remaining, self.buffered)
            self._pos += take
            self._remaining -= take
            if self._remaining:
                return None
            self._state = _State.HEADER

    def __iter__(self) -> TarReader:
        return self

    def __next__(self) -> TarEvent:
        event = self.next_event()
        if event is None:
            raise StopIteration
        return event

    # ----------------------------------------------------------------- internals
    def _next_chunk(self) -> TarChunk | None:
        member = self._member
        assert member is not None
        available = min(self.buffered, self._remaining)
        if member.size <= self.whole_file_limit and available < self._remaining:
            return None
        if available == 0:
            return None
        data = bytes(self._buf[self._pos:self._pos + available])
        self._pos += available
        chunk = TarChunk(member, self._offset, data)
        self._offset += available
        self._remaining -= available
        if not self._remaining:
            self._remaining = padding_for(member.size)
            self._state = _State.PADDING
        return chunk

    def _parse_header(self, block: bytes) -> TarMember | None:
        (name_f, mode_f, uid_f, gid_f, size_f, mtime_f, chksum_f, typeflag, linkname_f,
         magic, _version, _uname, _gname, _devmajor, _devminor, prefix_f,
         _pad) = TAR_HEADER.unpack(block)
        raw_name = _cstr(name_f)
        if magic == USTAR_MAGIC and _cstr(prefix_f):
            raw_name = _cstr(prefix_f) + b"/" + raw_name
        shown = _decode(raw_name)
        stored = read_tar_number(chksum_f, "checksum", shown)
        if stored not in tar_checksum(block):
            raise TarFormatError(
                f"tar member {shown!r}: header checksum {stored} does not match "
                f"the computed {tar_checksum(block)[0]}")
        size = read_tar_number(size_f, "size", shown)
        if typeflag in (_PAX_MEMBER, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            if size > MAX_EXTENDED_HEADER:
                raise TarFormatError(
                    f"tar extended header {typeflag!r} for {shown!r} is {size} bytes, over "
                    f"the {MAX_EXTENDED_HEADER}-byte limit")
            self._extended_type = typeflag
            self._remaining = size
            self._state = _State.EXTENDED
            return None
        try:
            mtype = _TYPE_ALIASES.get(typeflag) or TarType(typeflag)
        except ValueError:
            raise TarFormatError(
                f"tar member {shown!r} has unsupported type {typeflag!r}") from None
        pax = {**self._global_pax, **self._pending_pax}
        name = pax.get("path") or self._long_name or shown
        linkname = pax.get("linkpath") or self._long_link or _decode(_cstr(linkname_f))
        self._pending_pax = {}
        self._long_name = self._long_link = None
        try:
            if "size" in pax:
                size = int(pax["size"])
            mtime = (int(float(pax["mtime"])) if "mtime" in pax
                     else read_tar_number(mtime_f, "mtime", name))
            uid = int(pax["uid"]) if "uid" in pax else read_tar_number(uid_f, "uid", name)
            gid = int(pax["gid"]) if "gid" in pax else read_tar_number(gid_f, "gid", name)
        except ValueError:
            raise TarFormatError(f"tar member {name!r}: bad number in pax header {pax}") from None
        mode = read_tar_number(mode_f, "mode", name) & 0o7777
        if mtype is not TarType.REGULAR:
            size = 0
        member = TarMember(name=name, type=mtype, mode=mode, size=size, mtime=mtime,
                           uid=uid, gid=gid, linkname=linkname)
        self.members += 1
        self._member = member
        self._offset = 0
        self._remaining = size
        self._state = _State.CONTENT if size else _State.HEADER
        return member

    def _apply_extended(self, data: bytes) -> None:
        kind = self._extended_type
        if kind == _GNU_LONGNAME:
            self._long_name = _decode(data.rstrip(b"\x00"))
            return
        if kind == _GNU_LONGLINK:
            self._long_link = _decode(data.rstrip(b"\x00"))
            return
        records = parse_pax_records(data)
        if kind == _PAX_GLOBAL:
            self._global_pax.update(records)
        else:
            self._pending_pax.update(records)


def parse_pax_records(data: bytes) -> dict[str, str]:
    """pax extended header records: ``"<length> <key>=<value>\\n"``, length counting all."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the record block with NULs
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise TarFormatError(f"pax record at offset {pos} has no length")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError(f"pax record at offset {pos} has a bad length") from None
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise TarFormatError(f"pax record at offset {pos} has a bad length {length}")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise TarFormatError(f"pax record at offset {pos} has no '='")
        out[_decode(key)] = _decode(value)
        pos = end
    return out


# --------------------------------------------------------------------------- writing

def tar_header(name: str, *, size: int = 0, mode: int = 0o600, mtime: int = 0,
               type: TarType = TarType.REGULAR, linkname: str = "", uid: int = 0,
               gid: int = 0) -> bytes:
    """One header block, as tarCreateHeader writes it (a pax header first if needed).

    Directories and symlinks get a trailing slash and size 0, like PostgreSQL's.  Names
    over 99 bytes (PostgreSQL refuses them) go into a pax 'x' header.
    """
    raw_name = name.encode("utf-8", "surrogateescape")
    raw_link = linkname.encode("utf-8", "surrogateescape")
    if type in (TarType.DIRECTORY, TarType.SYMLINK) and not raw_name.endswith(b"/"):
        raw_name += b"/"
    if type is not TarType.REGULAR:
        size = 0
    pax: dict[str, bytes] = {}
    if len(raw_name) > 99:
        pax["path"] = raw_name
        raw_name = raw_name[:99]
    if len(raw_link) > 99:
        pax["linkpath"] = raw_link
        raw_link = raw_link[:99]
    block = _header_block(raw_name, size=size, mode=mode, mtime=mtime, typeflag=type.value,
                          linkname=raw_link, uid=uid, gid=gid)
    if not pax:
        return block
    body = pax_records(pax)
    return (_header_block(b"././@PaxHeader", size=len(body), mode=0o644, mtime=mtime,
                          typeflag=_PAX_MEMBER, linkname=b"", uid=0, gid=0)
            + body + bytes(padding_for(len(body))) + block)


def pax_records(records: dict[str, bytes]) -> bytes:
    out = b""
    for key, value in records.items():
        payload = b" " + key.encode() + b"=" + value + b"\n"
        length = len(payload) + 1
        while len(str(length)) + len(payload) != length:
            length = len(str(length)) + len(payload)
        out += str(length).encode() + payload
    return out


def _header_block(name: bytes, *, size: int, mode: int, mtime: int, typeflag: bytes,
                  linkname: bytes, uid: int, gid: int) -> bytes:
    fields = TAR_HEADER.pack(
        name, print_tar_number(mode & 0o7777, 8), print_tar_number(uid, 8),
        print_tar_number(gid, 8), print_tar_number(size, 12), print_tar_number(mtime, 12),
        b" " * CHECKSUM_SIZE, typeflag, linkname, USTAR_MAGIC, USTAR_VERSION,
        b"postgres", b"postgres", print_tar_number(0, 8), print_tar_number(0, 8), b"", b"")
    unsigned, _ = tar_checksum(fields)
    return (fields[:CHECKSUM_OFFSET] + print_tar_number(unsigned, CHECKSUM_SIZE)
            + fields[CHECKSUM_OFFSET + CHECKSUM_SIZE:])


class TarWriter:
    """Writes a ustar archive to a binary file object, member by member.

    ``add_file`` for content in hand; ``begin_file`` / ``write`` / ``end_file`` to stream
    a large member whose size is known up front; ``close`` writes the end-of-archive
    marker (it does not close ``out``).
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._open: tuple[str, int] | None = None
        self._written = 0
        self.closed = False

    def add_file(self, name: str, data: Buffer, *, mode: int = 0o600, mtime: int = 0) -> None:
        self.begin_file(name, len(data), mode=mode, mtime=mtime)
        self.write(data)
        self.end_file()

    def add_directory(self, name: str, *, mode: int = 0o700, mtime: int = 0) -> None:
        self._check_idle()
        self._out.write(tar_header(name, type=TarType.DIRECTORY, mode=mode, mtime=mtime))

    def add_symlink(self, name: str, target: str, *, mode: int = 0o777, mtime: int = 0) -> None:
        self._check_idle()
        self._out.write(tar_header(name, type=TarType.SYMLINK, linkname=target, mode=mode,
                                   mtime=mtime))

    def begin_file(self, name: str, size: int, *, mode: int = 0o600, mtime: int = 0) -> None:
        self._check_idle()
        self._out.write(tar_header(name, size=size, mode=mode, mtime=mtime))
        self._open = (name, size)
        self._written = 0

    def write(self, data: Buffer) -> None:
        if self._open is None:
            raise ValueError("TarWriter.write outside begin_file/end_file")
        name, size = self._open
        if self._written + len(data) > size:
            raise ValueError(f"tar member {name!r}: writing past its declared size {size}")
        self._out.write(data)
        self._written += len(data)

    def end_file(self) -> None:
        if self._open is None:
            raise ValueError("TarWriter.end_file without begin_file")
        name, size = self._open
        if self._written != size:
            raise ValueError(
                f"tar member {name!r}: {self._written} bytes written, {size} declared")
        self._out.write(bytes(padding_for(size)))
        self._open = None

    def close(self) -> None:
        if self.closed:
            return
        self._check_idle()
        self._out.write(END_OF_ARCHIVE)
        self.closed = True

    def _check_idle(self) -> None:
        if self.closed:
            raise ValueError("TarWriter is closed")
        if self._open is not None:
            raise ValueError(f"tar member {self._open[0]!r} is still open")

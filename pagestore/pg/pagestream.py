"""Neon's pagestream sub-protocol, versions 2 and 3: a sans-IO codec for both roles.

Mirrors ``pageserver_api::models::PagestreamFeMessage`` / ``PagestreamBeMessage`` (neon
6a35a3e9f149; facts in shared/reference/neon-protocols.md section 1.4).  A pagestream
message is the payload of one libpq CopyData; this module never sees the CopyData
framing (pagestore.pg.wire does that).

Rules kept:
- Everything is big-endian (network order).  A request is ``tag u8``, a header (v2:
  request_lsn u64, not_modified_since u64; v3: reqid u64 first), then a body whose
  layout depends on the tag.  Sizes: Exists and Nblocks 30 / 38 bytes (v2 / v3),
  GetPage 34 / 42, DbSize 21 / 29, GetSlruSegment 22 / 30.
- ``decode_request`` accepts trailing bytes after the body, as Neon's parser does; a
  short request, an empty one or an unknown tag is a ProtocolError naming the problem
  ("invalid tag N" for a tag we do not serve: the Test request, 99, exists only in
  Neon's testing builds and is refused here).
- A v2 response is the tag and its payload.  A v3 response is the tag, an echo of the
  request header (reqid and both LSNs exactly as sent) and of the request body, then the
  payload; a v3 Error response echoes the header only.
- ``decode_response`` (the compute's side, used by clients and tests) rejects trailing
  bytes, as Neon's client does ("remaining bytes in msg").
- The SLRU kind and the fork number are carried as the raw u8 the client sent; judging
  them is the page-read service's job (a Bad request Error, not a protocol error).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

from pagestore.errors import ProtocolError
from pagestore.keys import RelTag
from pagestore.lsn import Lsn

BLCKSZ = 8192

TAG = struct.Struct("!B")  # message tag
V2_HEADER = struct.Struct("!QQ")  # request_lsn, not_modified_since
V3_HEADER = struct.Struct("!QQQ")  # reqid, request_lsn, not_modified_since
REL_BODY = struct.Struct("!IIIB")  # spcnode, dbnode, relnode, forknum
GET_PAGE_BODY = struct.Struct("!IIIBI")  # spcnode, dbnode, relnode, forknum, blkno
DB_SIZE_BODY = struct.Struct("!I")  # dbnode (the tablespace is always 1663)
SLRU_BODY = struct.Struct("!BI")  # kind (0 clog, 1 members, 2 offsets), segno
EXISTS_PAYLOAD = struct.Struct("!B")  # exists (0 / 1)
NBLOCKS_PAYLOAD = struct.Struct("!I")  # n_blocks
DB_SIZE_PAYLOAD = struct.Struct("!q")  # db_size in bytes (i64)
SLRU_PAYLOAD = struct.Struct("!I")  # n_blocks, then n_blocks * 8192 bytes of data


class PagestreamVersion(enum.IntEnum):
    """The N of the ``pagestream_vN`` command."""

    V2 = 2
    V3 = 3

    @property
    def header(self) -> struct.Struct:
        return V2_HEADER if self is PagestreamVersion.V2 else V3_HEADER


class RequestTag(enum.IntEnum):
    EXISTS = 0
    NBLOCKS = 1
    GET_PAGE = 2
    DB_SIZE = 3
    GET_SLRU_SEGMENT = 4
    TEST = 99  # Neon testing builds only; refused here


class ResponseTag(enum.IntEnum):
    EXISTS = 100
    NBLOCKS = 101
    GET_PAGE = 102
    ERROR = 103
    DB_SIZE = 104
    GET_SLRU_SEGMENT = 105
    TEST = 199  # Neon testing builds only; never sent here


# --------------------------------------------------------------------------- requests

@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The common request prefix after the tag.  ``reqid`` is 0 in v2 (not on the wire)."""

    reqid: int
    request_lsn: Lsn
    not_modified_since: Lsn


@dataclass(frozen=True, slots=True)
class ExistsRequest:
    hdr: RequestHeader
    rel: RelTag


@dataclass(frozen=True, slots=True)
class NblocksRequest:
    hdr: RequestHeader
    rel: RelTag


@dataclass(frozen=True, slots=True)
class GetPageRequest:
    hdr: RequestHeader
    rel: RelTag
    blkno: int


@dataclass(frozen=True, slots=True)
class DbSizeRequest:
    hdr: RequestHeader
    dbnode: int


@dataclass(frozen=True, slots=True)
class GetSlruSegmentRequest:
    hdr: RequestHeader
    kind: int
    segno: int


Request = ExistsRequest | NblocksRequest | GetPageRequest | DbSizeRequest | GetSlruSegmentRequest

_REQUEST_TAGS: dict[type[Request], RequestTag] = {
    ExistsRequest: RequestTag.EXISTS,
    NblocksRequest: RequestTag.NBLOCKS,
    GetPageRequest: RequestTag.GET_PAGE,
    DbSizeRequest: RequestTag.DB_SIZE,
    GetSlruSegmentRequest: RequestTag.GET_SLRU_SEGMENT,
}

_BODIES: dict[RequestTag, struct.Struct] = {
    RequestTag.EXISTS: REL_BODY,
    RequestTag.NBLOCKS: REL_BODY,
    RequestTag.GET_PAGE: GET_PAGE_BODY,
    RequestTag.DB_SIZE: DB_SIZE_BODY,
    RequestTag.GET_SLRU_SEGMENT: SLRU_BODY,
}

_NAMES = {RequestTag.EXISTS: "Exists", RequestTag.NBLOCKS: "Nblocks",
          RequestTag.GET_PAGE: "GetPage", RequestTag.DB_SIZE: "DbSize",
          RequestTag.GET_SLRU_SEGMENT: "GetSlruSegment"}


def request_size(tag: RequestTag, version: PagestreamVersion) -> int:
    """The exact size of a request of that tag (Neon's table: e.g. GetPage 34 / 42)."""
    return TAG.size + version.header.size + _BODIES[tag].size


def _decode_header(data: memoryview, version: PagestreamVersion) -> RequestHeader:
    if version is PagestreamVersion.V2:
        request_lsn, not_modified_since = V2_HEADER.unpack_from(data, TAG.size)
        return RequestHeader(0, Lsn(request_lsn), Lsn(not_modified_since))
    reqid, request_lsn, not_modified_since = V3_HEADER.unpack_from(data, TAG.size)
    return RequestHeader(reqid, Lsn(request_lsn), Lsn(not_modified_since))


def _encode_header(hdr: RequestHeader, version: PagestreamVersion) -> bytes:
    if version is PagestreamVersion.V2:
        return V2_HEADER.pack(hdr.request_lsn, hdr.not_modified_since)
    return V3_HEADER.pack(hdr.reqid, hdr.request_lsn, hdr.not_modified_since)


def decode_request(data: bytes | bytearray | memoryview,
                   version: PagestreamVersion) -> Request:
    """One request from one CopyData payload; ProtocolError if it cannot be parsed."""
    view = memoryview(data)
    if not view:
        raise ProtocolError("invalid pagestream request: empty message")
    raw_tag = view[0]
    try:
        tag = RequestTag(raw_tag)
    except ValueError:
        raise ProtocolError(f"invalid tag {raw_tag}") from None
    if tag is RequestTag.TEST:
        raise ProtocolError(f"invalid tag {raw_tag}: the Test request is not served")
    need = request_size(tag, version)
    if len(view) < need:
        raise ProtocolError(
            f"invalid pagestream v{version.value} {_NAMES[tag]} request: {len(view)} bytes, "
            f"expected {need}")
    hdr = _decode_header(view, version)
    offset = TAG.size + version.header.size
    if tag in (RequestTag.EXISTS, RequestTag.NBLOCKS):
        spc, db, rel, fork = REL_BODY.unpack_from(view, offset)
        cls = ExistsRequest if tag is RequestTag.EXISTS else NblocksRequest
        return cls(hdr, RelTag(spc, db, rel, fork))
    if tag is RequestTag.GET_PAGE:
        spc, db, rel, fork, blkno = GET_PAGE_BODY.unpack_from(view, offset)
        return GetPageRequest(hdr, RelTag(spc, db, rel, fork), blkno)
    if tag is RequestTag.DB_SIZE:
        (dbnode,) = DB_SIZE_BODY.unpack_from(view, offset)
        return DbSizeRequest(hdr, dbnode)
    kind, segno = SLRU_BODY.unpack_from(view, offset)
    return GetSlruSegmentRequest(hdr, kind, segno)


def _encode_body(req: Request) -> bytes:
    match req:
        case ExistsRequest(rel=rel) | NblocksRequest(rel=rel):
            return REL_BODY.pack(rel.spcnode, rel.dbnode, rel.relnode, rel.forknum)
        case GetPageRequest(rel=rel, blkno=blkno):
            return GET_PAGE_BODY.pack(rel.spcnode, rel.dbnode, rel.relnode, rel.forknum, blkno)
        case DbSizeRequest(dbnode=dbnode):
            return DB_SIZE_BODY.pack(dbnode)
        case GetSlruSegmentRequest(kind=kind, segno=segno):
            return SLRU_BODY.pack(kind, segno)
    raise TypeError(f"not a pagestream request: {req!r}")


def encode_request(req: Request, version: PagestreamVersion) -> bytes:
    """The CopyData payload a compute sends for ``req``."""
    return (TAG.pack(_REQUEST_TAGS[type(req)]) + _encode_header(req.hdr, version)
            + _encode_body(req))


# --------------------------------------------------------------------------- responses

@dataclass(frozen=True, slots=True)
class ExistsResponse:
    exists: bool


@dataclass(frozen=True, slots=True)
class NblocksResponse:
    n_blocks: int


@dataclass(frozen=True, slots=True)
class GetPageResponse:
    page: bytes


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A per-request failure; the stream goes on.  Neon's messages start with
    ``Not found:``, ``Bad request:``, ``LSN timeout:`` or ``Read error``."""

    message: str


@dataclass(frozen=True, slots=True)
class DbSizeResponse:
    db_size: int


@dataclass(frozen=True, slots=True)
class GetSlruSegmentResponse:
    segment: bytes


Response = (ExistsResponse | NblocksResponse | GetPageResponse | ErrorResponse
            | DbSizeResponse | GetSlruSegmentResponse)

#: Which request each (non-error) response answers.
_ANSWERS: dict[type[Response], type[Request]] = {
    ExistsResponse: ExistsRequest,
    NblocksResponse: NblocksRequest,
    GetPageResponse: GetPageRequest,
    DbSizeResponse: DbSizeRequest,
    GetSlruSegmentResponse: GetSlruSegmentRequest,
}


def _encode_payload(resp: Response) -> tuple[ResponseTag, bytes]:
    match resp:
        case ExistsResponse(exists=exists):
            return ResponseTag.EXISTS, EXISTS_PAYLOAD.pack(1 if exists else 0)
        case NblocksResponse(n_blocks=n):
            return ResponseTag.NBLOCKS, NBLOCKS_PAYLOAD.pack(n)
        case GetPageResponse(page=page):
            if len(page) != BLCKSZ:
                raise ValueError(f"a GetPage response carries {BLCKSZ} bytes, got {len(page)}")
            return ResponseTag.GET_PAGE, bytes(page)
        case ErrorResponse(message=text):
            return ResponseTag.ERROR, text.replace("\x00", " ").encode() + b"\x00"
        case DbSizeResponse(db_size=size):
            return ResponseTag.DB_SIZE, DB_SIZE_PAYLOAD.pack(size)
        case GetSlruSegmentResponse(segment=segment):
            if len(segment) % BLCKSZ:
                raise ValueError(f"an SLRU segment is whole {BLCKSZ}-byte blocks, got "
                                 f"{len(segment)} bytes")
            return (ResponseTag.GET_SLRU_SEGMENT,
                    SLRU_PAYLOAD.pack(len(segment) // BLCKSZ) + bytes(segment))
    raise TypeError(f"not a pagestream response: {resp!r}")


def encode_response(resp: Response, req: Request, version: PagestreamVersion) -> bytes:
    """The CopyData payload answering ``req`` with ``resp`` (v3: with the echo)."""
    if not isinstance(resp, ErrorResponse) and _ANSWERS[type(resp)] is not type(req):
        raise TypeError(f"{type(resp).__name__} does not answer {type(req).__name__}")
    tag, payload = _encode_payload(resp)
    if version is PagestreamVersion.V2:
        return TAG.pack(tag) + payload
    echo = _encode_header(req.hdr, version)
    if not isinstance(resp, ErrorResponse):
        echo += _encode_body(req)
    return TAG.pack(tag) + echo + payload


class DecodedResponse(NamedTuple):
    """A response and, in v3, the request it echoes (the header alone for an Error)."""

    response: Response
    header: RequestHeader | None
    request: Request | None


_RESPONSE_REQUEST_TAG = {
    ResponseTag.EXISTS: RequestTag.EXISTS, ResponseTag.NBLOCKS: RequestTag.NBLOCKS,
    ResponseTag.GET_PAGE: RequestTag.GET_PAGE, ResponseTag.DB_SIZE: RequestTag.DB_SIZE,
    ResponseTag.GET_SLRU_SEGMENT: RequestTag.GET_SLRU_SEGMENT,
}


def _fixed(view: memoryview, offset: int, st: struct.Struct, what: str) -> tuple[int, ...]:
    if len(view) != offset + st.size:
        raise ProtocolError(f"{what} response is {len(view)} bytes, expected {offset + st.size}")
    return st.unpack_from(view, offset)


def decode_response(data: bytes | bytearray | memoryview,
                    version: PagestreamVersion) -> DecodedResponse:
    """One response from one CopyData payload (the compute's side)."""
    view = memoryview(data)
    if not view:
        raise ProtocolError("invalid pagestream response: empty message")
    try:
        tag = ResponseTag(view[0])
    except ValueError:
        raise ProtocolError(f"invalid response tag {view[0]}") from None
    if tag is ResponseTag.TEST:
        raise ProtocolError(f"invalid response tag {view[0]}: Test responses are not served")
    header: RequestHeader | None = None
    request: Request | None = None
    offset = TAG.size
    if version is PagestreamVersion.V3:
        if len(view) < TAG.size + V3_HEADER.size:
            raise ProtocolError(f"v3 response is {len(view)} bytes, shorter than its echo")
        header = _decode_header(view, version)
        offset += V3_HEADER.size
        if tag is not ResponseTag.ERROR:
            req_tag = _RESPONSE_REQUEST_TAG[tag]
            body = _BODIES[req_tag]
            if len(view) < offset + body.size:
                raise ProtocolError(f"v3 response is {len(view)} bytes, shorter than its echo")
            fake = (TAG.pack(req_tag) + bytes(view[TAG.size:offset])
                    + bytes(view[offset:offset + body.size]))
            request = decode_request(fake, version)
            offset += body.size
    resp: Response
    if tag is ResponseTag.EXISTS:
        (exists,) = _fixed(view, offset, EXISTS_PAYLOAD, "Exists")
        if exists not in (0, 1):
            raise ProtocolError(f"Exists response carries {exists}, not 0 or 1")
        resp = ExistsResponse(bool(exists))
    elif tag is ResponseTag.NBLOCKS:
        (n,) = _fixed(view, offset, NBLOCKS_PAYLOAD, "Nblocks")
        resp = NblocksResponse(n)
    elif tag is ResponseTag.GET_PAGE:
        if len(view) != offset + BLCKSZ:
            raise ProtocolError(f"GetPage response is {len(view)} bytes, expected "
                                f"{offset + BLCKSZ}")
        resp = GetPageResponse(bytes(view[offset:]))
    elif tag is ResponseTag.ERROR:
        rest = bytes(view[offset:])
        end = rest.find(b"\x00")
        if end < 0:
            raise ProtocolError("Error response message is not NUL-terminated")
        if end != len(rest) - 1:
            raise ProtocolError(f"Error response has {len(rest) - end - 1} bytes after its NUL")
        resp = ErrorResponse(rest[:end].decode(errors="replace"))
    elif tag is ResponseTag.DB_SIZE:
        (size,) = _fixed(view, offset, DB_SIZE_PAYLOAD, "DbSize")
        resp = DbSizeResponse(size)
    else:
        if len(view) < offset + SLRU_PAYLOAD.size:
            raise ProtocolError("GetSlruSegment response is shorter than its block count")
        (n,) = SLRU_PAYLOAD.unpack_from(view, offset)
        offset += SLRU_PAYLOAD.size
        if len(view) != offset + n * BLCKSZ:
            raise ProtocolError(f"GetSlruSegment response is {len(view)} bytes for {n} "
                                f"blocks, expected {offset + n * BLCKSZ}")
        resp = GetSlruSegmentResponse(bytes(view[offset:]))
    return DecodedResponse(resp, header, request)

"""The pagestream codec (pagestore.pg.pagestream) against the layouts and sizes of
shared/reference/neon-protocols.md section 1.4: every request and response of v2 and v3,
byte for byte where the layout is simple, and malformed input."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagestore.errors import ProtocolError
from pagestore.keys import RelTag
from pagestore.lsn import Lsn
from pagestore.pg import pagestream as ps
from pagestore.pg.pagestream import PagestreamVersion

V2, V3 = PagestreamVersion.V2, PagestreamVersion.V3
REL = RelTag(1663, 5, 16384, 2)
HDR = ps.RequestHeader(0x0000_1234_0000_0007, Lsn(0xFFFF_FFFF_FFFF_FFFF), Lsn(0x1_69AD58))
HDR_V2 = ps.RequestHeader(0, HDR.request_lsn, HDR.not_modified_since)
PAGE = bytes(range(256)) * 32

REQUESTS: list[tuple[ps.Request, int, int, int]] = [
    # request, tag, v2 size, v3 size (the spec's table)
    (ps.ExistsRequest(HDR, REL), 0, 30, 38),
    (ps.NblocksRequest(HDR, REL), 1, 30, 38),
    (ps.GetPageRequest(HDR, REL, 0xDEADBEEF), 2, 34, 42),
    (ps.DbSizeRequest(HDR, 5), 3, 21, 29),
    (ps.GetSlruSegmentRequest(HDR, 1, 0x1234), 4, 22, 30),
]


def _v2(req: ps.Request) -> ps.Request:
    return dataclasses.replace(req, hdr=HDR_V2)


@pytest.mark.parametrize(("req", "tag", "v2_size", "v3_size"), REQUESTS)
def test_request_layouts_and_round_trips(req: ps.Request, tag: int, v2_size: int,
                                         v3_size: int) -> None:
    v3 = ps.encode_request(req, V3)
    assert len(v3) == v3_size == ps.request_size(ps.RequestTag(tag), V3)
    assert v3[0] == tag
    assert struct.unpack_from("!QQQ", v3, 1) == (HDR.reqid, HDR.request_lsn,
                                                 HDR.not_modified_since)
    assert ps.decode_request(v3, V3) == req

    v2 = ps.encode_request(req, V2)
    assert len(v2) == v2_size == ps.request_size(ps.RequestTag(tag), V2)
    assert v2[0] == tag
    assert struct.unpack_from("!QQ", v2, 1) == (HDR.request_lsn, HDR.not_modified_since)
    assert v2[17:] == v3[25:]  # the same body after the header
    assert ps.decode_request(v2, V2) == _v2(req)  # v2 has no reqid


def test_request_bodies_byte_for_byte() -> None:
    hdr = struct.pack("!QQ", HDR.request_lsn, HDR.not_modified_since)
    assert ps.encode_request(_v2(REQUESTS[2][0]), V2) == (
        b"\x02" + hdr + struct.pack("!IIIBI", 1663, 5, 16384, 2, 0xDEADBEEF))
    assert ps.encode_request(_v2(REQUESTS[3][0]), V2) == b"\x03" + hdr + struct.pack("!I", 5)
    assert ps.encode_request(_v2(REQUESTS[4][0]), V2) == (
        b"\x04" + hdr + struct.pack("!BI", 1, 0x1234))
    assert ps.encode_request(_v2(REQUESTS[0][0]), V2) == (
        b"\x00" + hdr + struct.pack("!IIIB", 1663, 5, 16384, 2))


def test_trailing_bytes_in_a_request_are_accepted() -> None:
    req = REQUESTS[2][0]
    assert ps.decode_request(ps.encode_request(req, V3) + b"junk", V3) == req


RESPONSES: list[tuple[ps.Response, ps.Request, int, int, int]] = [
    # response, the request it answers, tag, v2 size, v3 size
    (ps.ExistsResponse(True), REQUESTS[0][0], 100, 2, 39),
    (ps.NblocksResponse(0xFFFF_FFFE), REQUESTS[1][0], 101, 5, 42),
    (ps.GetPageResponse(PAGE), REQUESTS[2][0], 102, 8193, 8234),
    (ps.DbSizeResponse(123 * 8192), REQUESTS[3][0], 104, 9, 37),
    (ps.GetSlruSegmentResponse(PAGE * 3), REQUESTS[4][0], 105, 5 + 3 * 8192, 34 + 3 * 8192),
]


@pytest.mark.parametrize(("resp", "req", "tag", "v2_size", "v3_size"), RESPONSES)
def test_response_layouts_and_round_trips(resp: ps.Response, req: ps.Request, tag: int,
                                          v2_size: int, v3_size: int) -> None:
    v2 = ps.encode_response(resp, req, V2)
    assert len(v2) == v2_size and v2[0] == tag
    assert ps.decode_response(v2, V2) == ps.DecodedResponse(resp, None, None)

    v3 = ps.encode_response(resp, req, V3)
    assert len(v3) == v3_size and v3[0] == tag
    # the echo: the request's header and body exactly as the request carried them
    assert v3[1:len(ps.encode_request(req, V3))] == ps.encode_request(req, V3)[1:]
    assert v3[len(ps.encode_request(req, V3)):] == v2[1:]  # then the v2 payload
    assert ps.decode_response(v3, V3) == ps.DecodedResponse(resp, req.hdr, req)


def test_response_payloads_byte_for_byte() -> None:
    exists, nblocks, getpage, dbsize, slru = (r[1] for r in RESPONSES)
    assert ps.encode_response(ps.ExistsResponse(False), exists, V2) == b"\x64\x00"
    assert ps.encode_response(ps.NblocksResponse(7), nblocks, V2) == b"\x65\x00\x00\x00\x07"
    assert ps.encode_response(ps.DbSizeResponse(8192), dbsize, V2) == (
        b"\x68" + struct.pack("!q", 8192))
    assert ps.encode_response(ps.GetSlruSegmentResponse(b""), slru, V2) == b"\x69" + bytes(4)
    assert ps.encode_response(ps.GetPageResponse(PAGE), getpage, V2) == b"\x66" + PAGE


@pytest.mark.parametrize("req", [r[0] for r in REQUESTS])
def test_error_response(req: ps.Request) -> None:
    msg = "Not found: relation 1663/5/16384 does not exist at 0/169AD58"
    v2 = ps.encode_response(ps.ErrorResponse(msg), req, V2)
    assert v2 == b"\x67" + msg.encode() + b"\x00" and len(v2) == 2 + len(msg)
    v3 = ps.encode_response(ps.ErrorResponse(msg), req, V3)
    assert len(v3) == 26 + len(msg)
    assert v3[:25] == b"\x67" + struct.pack("!QQQ", *(req.hdr.reqid, req.hdr.request_lsn,
                                                       req.hdr.not_modified_since))
    assert ps.decode_response(v3, V3) == ps.DecodedResponse(ps.ErrorResponse(msg), req.hdr, None)
    assert ps.decode_response(v2, V2).response == ps.ErrorResponse(msg)


def test_error_message_nul_is_replaced() -> None:
    out = ps.encode_response(ps.ErrorResponse("a\x00b"), REQUESTS[0][0], V2)
    assert out == b"\x67a b\x00"


def test_response_must_answer_its_request() -> None:
    with pytest.raises(TypeError):
        ps.encode_response(ps.ExistsResponse(True), REQUESTS[2][0], V3)
    with pytest.raises(ValueError, match="8192"):
        ps.encode_response(ps.GetPageResponse(b"short"), REQUESTS[2][0], V2)
    with pytest.raises(ValueError, match="whole"):
        ps.encode_response(ps.GetSlruSegmentResponse(b"x" * 100), REQUESTS[4][0], V2)


@pytest.mark.parametrize(("data", "match"), [
    (b"", "empty"),
    (b"\x63" + bytes(40), "invalid tag 99"),  # Test exists only in Neon's testing builds
    (b"\x05" + bytes(40), "invalid tag 5"),
    (b"\xff", "invalid tag 255"),
    (b"\x02" + bytes(32), "GetPage request: 33 bytes, expected 34"),
    (b"\x00" + bytes(16), "Exists request: 17 bytes, expected 30"),
    (b"\x03", "DbSize request: 1 bytes, expected 21"),
    (b"\x04" + bytes(20), "GetSlruSegment request: 21 bytes, expected 22"),
])
def test_malformed_v2_requests(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ps.decode_request(data, V2)


def test_v2_sized_request_is_short_in_v3() -> None:
    v2 = ps.encode_request(REQUESTS[2][0], V2)
    with pytest.raises(ProtocolError, match="v3 GetPage request: 34 bytes, expected 42"):
        ps.decode_request(v2, V3)


@pytest.mark.parametrize(("data", "version", "match"), [
    (b"", V2, "empty"),
    (b"\x02" + bytes(8192), V2, "invalid response tag 2"),
    (b"\x64\x02", V2, "not 0 or 1"),
    (b"\x64\x01\x00", V2, "3 bytes, expected 2"),
    (b"\x66" + bytes(8191), V2, "8192 bytes, expected 8193"),
    (b"\x67abc", V2, "not NUL-terminated"),
    (b"\x67abc\x00d", V2, "after its NUL"),
    (b"\x69\x00\x00\x00\x02" + bytes(8192), V2, "for 2 blocks"),
    (b"\x65" + bytes(20), V3, "shorter than its echo"),
    (b"\x65" + bytes(30), V3, "shorter than its echo"),
    (b"\xc7" + bytes(40), V3, "Test responses"),
])
def test_malformed_responses(data: bytes, version: PagestreamVersion, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ps.decode_response(data, version)


@given(st.binary(max_size=64), st.sampled_from([V2, V3]))
def test_any_bytes_parse_or_fail_clearly(data: bytes, version: PagestreamVersion) -> None:
    try:
        req = ps.decode_request(data, version)
    except ProtocolError:
        return
    # what parses re-encodes to the prefix it was parsed from
    assert data.startswith(ps.encode_request(req, version))


@given(st.binary(max_size=100), st.sampled_from([V2, V3]))
def test_any_bytes_as_response_parse_or_fail_clearly(data: bytes,
                                                     version: PagestreamVersion) -> None:
    try:
        ps.decode_response(data, version)
    except ProtocolError:
        pass

"""Page service command parsing (gateway.commands) against Neon's syntax
(shared/reference/neon-protocols.md section 1.3), the SQLSTATE of each refusal, and the
pagestream Error texts the gateway makes of page-read failures (section 1.4)."""

from __future__ import annotations

import pytest

from gateway.commands import (
    BasebackupCommand,
    CommandSyntaxError,
    FullbackupCommand,
    LeaseLsnCommand,
    PagestreamCommand,
    SetCommand,
    UnsupportedCommand,
    command_tenant,
    parse_command,
)
from gateway.pageread import page_status_error, read_lsn
from gateway.pipeline import error_text
from pagestore.errors import (
    BadRequest,
    LsnOutOfRange,
    LsnTimeout,
    NotFound,
    PagestoreError,
    TimelineNotFound,
    Unavailable,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.pg.pagestream import PagestreamVersion

T = "0123456789abcdef0123456789abcdef"
TL = "fedcba9876543210fedcba9876543210"
TENANT, TIMELINE = TenantId.parse(T), TimelineId.parse(TL)


def test_set_is_a_noop() -> None:
    assert parse_command("SET datestyle TO iso") == SetCommand()
    assert parse_command("set x to y;") == SetCommand()
    assert command_tenant(SetCommand()) is None


@pytest.mark.parametrize(("query", "expected"), [
    (f"pagestream_v2 {T} {TL}", PagestreamCommand(PagestreamVersion.V2, TENANT, TIMELINE)),
    (f"  PAGESTREAM_V3   {T.upper()}\t{TL} ", PagestreamCommand(PagestreamVersion.V3, TENANT,
                                                                 TIMELINE)),
    (f"basebackup {T} {TL}", BasebackupCommand(TENANT, TIMELINE, None, False, False)),
    (f"basebackup {T} {TL} latest", BasebackupCommand(TENANT, TIMELINE, None, False, False)),
    (f"basebackup {T} {TL} 0/169AD58 --gzip",
     BasebackupCommand(TENANT, TIMELINE, Lsn(0x169AD58), True, False)),
    (f"basebackup {T} {TL} --replica --gzip",
     BasebackupCommand(TENANT, TIMELINE, None, True, True)),
    (f"fullbackup {T} {TL}", FullbackupCommand(TENANT, TIMELINE, None, None)),
    (f"fullbackup {T} {TL} 1/2", FullbackupCommand(TENANT, TIMELINE, Lsn(0x1_00000002), None)),
    (f"fullbackup {T} {TL} 0/30 0/20", FullbackupCommand(TENANT, TIMELINE, Lsn(0x30),
                                                         Lsn(0x20))),
    (f"lease lsn {T} {TL} 0/169AD58 ", LeaseLsnCommand(TENANT, "0000", TIMELINE,
                                                       Lsn(0x169AD58))),
    (f"LEASE LSN {T}-0104 {TL} 0/1", LeaseLsnCommand(TENANT, "0104", TIMELINE, Lsn(1))),
])
def test_commands(query: str, expected: object) -> None:
    cmd = parse_command(query)
    assert cmd == expected
    assert command_tenant(cmd) == TENANT


@pytest.mark.parametrize(("query", "cls", "sqlstate", "match"), [
    ("hello", CommandSyntaxError, "42601", "cannot parse query"),
    ("   ", CommandSyntaxError, "42601", "cannot parse query"),
    ("pagestream_v2", CommandSyntaxError, "42601", "cannot parse query"),
    (f"pagestream_v2 {T}", CommandSyntaxError, "42601", "expected 2 parameters"),
    (f"pagestream_v3 {T} {TL} extra", CommandSyntaxError, "42601", "got 3"),
    ("pagestream_v2 x y", BadRequest, "22023", "invalid tenant id 'x'"),
    (f"pagestream_v2 {T}-0000 {TL}", BadRequest, "22023", "invalid tenant id"),
    (f"pagestream_v2 {T} {TL[:-1]}", BadRequest, "22023", "invalid timeline id"),
    (f"basebackup {T}", CommandSyntaxError, "42601", "at least 2"),
    (f"basebackup {T} {TL} 12345", BadRequest, "22023", "invalid LSN '12345'"),
    (f"basebackup {T} {TL} --zip", CommandSyntaxError, "42601", "unknown flag '--zip'"),
    (f"basebackup {T} {TL} latest --gzip --gzip", CommandSyntaxError, "42601", "twice"),
    (f"basebackup {T} {TL} 0/1 0/2", CommandSyntaxError, "42601", "unknown flag '0/2'"),
    (f"fullbackup {T} {TL} 0/1 0/2 0/3", CommandSyntaxError, "42601", "2 to 4"),
    (f"fullbackup {T} {TL} latest", BadRequest, "22023", "invalid LSN"),
    (f"lease lsn {T} {TL}", CommandSyntaxError, "42601", "expected 3 parameters"),
    (f"lease lsn {T}-01 {TL} 0/1", BadRequest, "22023", "invalid tenant shard id"),
    (f"lease time {T} {TL} 0/1", UnsupportedCommand, "0A000", "unsupported command: lease time"),
    ("drop table x", UnsupportedCommand, "0A000", "unsupported command: drop"),
    (f"pagestream {T} {TL}", UnsupportedCommand, "0A000", "unsupported command: pagestream"),
    (f"get_last_record_rlsn {T} {TL}", UnsupportedCommand, "0A000", "unsupported command"),
])
def test_refused_commands(query: str, cls: type[PagestoreError], sqlstate: str,
                          match: str) -> None:
    with pytest.raises(cls, match=match) as exc:
        parse_command(query)
    assert exc.value.sqlstate == sqlstate


@pytest.mark.parametrize(("err", "text"), [
    (NotFound("Not found: relation 1663/5/1 does not exist at 0/10"),
     "Not found: relation 1663/5/1 does not exist at 0/10"),
    (TimelineNotFound("timeline x not found"), "Not found: timeline x not found"),
    (BadRequest("invalid LSN(0) in request"), "Bad request: invalid LSN(0) in request"),
    (LsnOutOfRange("tried to request a page version that was garbage collected"),
     "Bad request: tried to request a page version that was garbage collected"),
    (LsnTimeout("LSN timeout: timed out after 2.0s"), "LSN timeout: timed out after 2.0s"),
    (LsnTimeout("waited too long"), "LSN timeout: waited too long"),
    (PagestoreError("redo failed"), "Read error: redo failed"),
    (Unavailable("Read error: the redo service failed"), "Read error: the redo service failed"),
])
def test_pagestream_error_texts(err: PagestoreError, text: str) -> None:
    assert error_text(err) == text


def test_get_page_status_codes() -> None:
    from pagestore.proto import page_service_pb2 as pb

    assert type(page_status_error(pb.GET_PAGE_STATUS_CODE_NOT_FOUND, "x")) is NotFound
    assert type(page_status_error(pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST, "x")) is BadRequest
    timeout = page_status_error(pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR, "LSN timeout: 2s")
    assert type(timeout) is LsnTimeout and error_text(timeout) == "LSN timeout: 2s"
    internal = page_status_error(pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR, "redo failed")
    assert type(internal) is PagestoreError
    assert error_text(page_status_error(pb.GET_PAGE_STATUS_CODE_SLOW_DOWN, "")).startswith(
        "Read error: ")


def test_not_modified_since_zero_keeps_the_libpq_meaning() -> None:
    # gRPC reads 0 as "equal to request_lsn" (wait for it); libpq as "no constraint"
    assert read_lsn(Lsn.MAX, 0).not_modified_since_lsn == 1
    assert read_lsn(0x30, 0x20).not_modified_since_lsn == 0x20
    assert read_lsn(0x30, 0x20).request_lsn == 0x30

"""The page service's query strings, parsed into commands (no I/O).

Mirrors Neon's ``PageServiceCmd::parse`` (pageserver/src/page_service.rs; facts in
shared/reference/neon-protocols.md section 1.3):

    pagestream_v2 <tenant_id> <timeline_id>
    pagestream_v3 <tenant_id> <timeline_id>
    basebackup <tenant_id> <timeline_id> [<lsn>|latest] [--gzip] [--replica]
    fullbackup <tenant_id> <timeline_id> [<lsn> [<prev_lsn>]]
    lease lsn <tenant_shard_id> <timeline_id> <lsn>
    set <anything>

Rules kept: the string is trimmed (and, as a courtesy to psql users, trailing
semicolons dropped), then split at the first space; the command word matches
case-insensitively; a string without a space is refused ("cannot parse query"); the
parameters are split on whitespace.  pagestream takes exactly two parameters and a plain
32-hex tenant id (no shard suffix); ``lease lsn`` takes a TenantShardId
(``<tenant>`` or ``<tenant>-NNCC``).  In basebackup a third parameter starting with
``--`` is a flag and the LSN is omitted; an unknown or repeated flag is refused.

SQLSTATEs (Neon answers XX000 for all of these; we say what went wrong):
- 42601 syntax_error: no space, wrong parameter count, unknown or repeated flag;
- 0A000 feature_not_supported: an unknown command word (including Neon's removed
  ``pagestream`` v1 and ``get_last_record_rlsn``);
- 22023 invalid_parameter_value: a tenant, timeline, shard or LSN that does not parse
  (pagestore.errors.BadRequest);
- 55000 object_not_in_prerequisite_state: a command for another tenant than the one the
  connection is bound to (SwitchedTenant, raised by the session).
"""

from __future__ import annotations

from dataclasses import dataclass

from pagestore.errors import BadRequest, FailedPrecondition
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.pg.pagestream import PagestreamVersion

UNSHARDED = "0000"  # ShardIndex of an unsharded tenant (shard 0 of count 0)


class CommandSyntaxError(BadRequest):
    """A page service command that does not follow its syntax."""

    sqlstate = "42601"  # syntax_error


class UnsupportedCommand(BadRequest):
    """A command word the page service does not know."""

    sqlstate = "0A000"  # feature_not_supported


class SwitchedTenant(FailedPrecondition):
    """A command for another tenant than the one the connection is bound to."""


@dataclass(frozen=True, slots=True)
class SetCommand:
    """``set ...``: a no-op (psycopg sends ``SET datestyle``)."""


@dataclass(frozen=True, slots=True)
class PagestreamCommand:
    version: PagestreamVersion
    tenant: TenantId
    timeline: TimelineId


@dataclass(frozen=True, slots=True)
class BasebackupCommand:
    tenant: TenantId
    timeline: TimelineId
    lsn: Lsn | None  # None: latest
    gzip: bool
    replica: bool


@dataclass(frozen=True, slots=True)
class FullbackupCommand:
    tenant: TenantId
    timeline: TimelineId
    lsn: Lsn | None  # None: latest
    prev_lsn: Lsn | None  # None: derived by the page-read service


@dataclass(frozen=True, slots=True)
class LeaseLsnCommand:
    tenant: TenantId
    shard: str  # ShardIndex NNCC, "0000" when the tenant id has no suffix
    timeline: TimelineId
    lsn: Lsn


Command = (SetCommand | PagestreamCommand | BasebackupCommand | FullbackupCommand
           | LeaseLsnCommand)

_HEX = frozenset("0123456789abcdefABCDEF")


def parse_tenant(text: str) -> TenantId:
    try:
        return TenantId.parse(text)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def parse_timeline(text: str) -> TimelineId:
    try:
        return TimelineId.parse(text)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def parse_tenant_shard(text: str) -> tuple[TenantId, str]:
    """``<tenant>`` or ``<tenant>-NNCC``: the tenant and the ShardIndex (NNCC)."""
    tenant, sep, shard = text.partition("-")
    if not sep:
        return parse_tenant(tenant), UNSHARDED
    if len(shard) != 4 or not set(shard) <= _HEX:
        raise BadRequest(f"invalid tenant shard id {text!r}: expected <tenant> or "
                         "<tenant>-NNCC")
    return parse_tenant(tenant), shard.lower()


def parse_lsn(text: str) -> Lsn:
    try:
        return Lsn.parse(text)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _pagestream(version: PagestreamVersion, params: list[str]) -> PagestreamCommand:
    if len(params) != 2:
        raise CommandSyntaxError(f"invalid pagestream_v{version.value} command: expected "
                                 f"2 parameters (tenant, timeline), got {len(params)}")
    return PagestreamCommand(version, parse_tenant(params[0]), parse_timeline(params[1]))


def _basebackup(params: list[str]) -> BasebackupCommand:
    if len(params) < 2:
        raise CommandSyntaxError(f"invalid basebackup command: expected at least 2 "
                                 f"parameters (tenant, timeline), got {len(params)}")
    tenant, timeline = parse_tenant(params[0]), parse_timeline(params[1])
    rest = params[2:]
    lsn: Lsn | None = None
    if rest and not rest[0].startswith("--"):
        lsn = None if rest[0].lower() == "latest" else parse_lsn(rest[0])
        rest = rest[1:]
    flags: set[str] = set()
    for flag in rest:
        if flag not in ("--gzip", "--replica"):
            raise CommandSyntaxError(f"invalid basebackup command: unknown flag {flag!r}")
        if flag in flags:
            raise CommandSyntaxError(f"invalid basebackup command: {flag} given twice")
        flags.add(flag)
    return BasebackupCommand(tenant, timeline, lsn, "--gzip" in flags, "--replica" in flags)


def _fullbackup(params: list[str]) -> FullbackupCommand:
    if not 2 <= len(params) <= 4:
        raise CommandSyntaxError(f"invalid fullbackup command: expected 2 to 4 parameters "
                                 f"(tenant, timeline, [lsn, [prev_lsn]]), got {len(params)}")
    lsn = parse_lsn(params[2]) if len(params) > 2 else None
    prev = parse_lsn(params[3]) if len(params) > 3 else None
    return FullbackupCommand(parse_tenant(params[0]), parse_timeline(params[1]), lsn, prev)


def _lease(rest: str) -> LeaseLsnCommand:
    params = rest.split()
    if not params or params[0].lower() != "lsn":
        raise UnsupportedCommand(f"unsupported command: lease {params[0] if params else ''}"
                                 .rstrip())
    params = params[1:]
    if len(params) != 3:
        raise CommandSyntaxError(f"invalid lease lsn command: expected 3 parameters "
                                 f"(tenant_shard_id, timeline, lsn), got {len(params)}")
    tenant, shard = parse_tenant_shard(params[0])
    return LeaseLsnCommand(tenant, shard, parse_timeline(params[1]), parse_lsn(params[2]))


def parse_command(text: str) -> Command:
    """The command a query string asks for; BadRequest subclasses when it is refused."""
    stripped = text.strip().rstrip(";").strip()
    word, sep, rest = stripped.partition(" ")
    if not sep:
        raise CommandSyntaxError(f"cannot parse query: {text!r}")
    cmd = word.lower()
    if cmd == "set":
        return SetCommand()
    if cmd == "pagestream_v2":
        return _pagestream(PagestreamVersion.V2, rest.split())
    if cmd == "pagestream_v3":
        return _pagestream(PagestreamVersion.V3, rest.split())
    if cmd == "basebackup":
        return _basebackup(rest.split())
    if cmd == "fullbackup":
        return _fullbackup(rest.split())
    if cmd == "lease":
        return _lease(rest)
    raise UnsupportedCommand(f"unsupported command: {word}")


def command_tenant(command: Command) -> TenantId | None:
    """The tenant a command resolves (the connection is bound to the first one)."""
    if isinstance(command, SetCommand):
        return None
    return command.tenant

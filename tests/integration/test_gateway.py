"""The gateway through the real stack and real clients: Neon's page service protocol over
libpq, answered from the page-read service.

The pagestream client below is written from the protocol description
(shared/reference/neon-protocols.md sections 1.1-1.4 and PostgreSQL's "Frontend/Backend
Protocol" chapter), not with the gateway's codec: its structs are its own.  Pages come
back equal to the primary's files (under the rmgr masks), in request order; errors come
back as the protocol's table says, within bounded time; one bad connection does not
disturb another.  basebackup and fullbackup go through the real psql binary.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir
from pagestore.pg.rmgr import RmgrId
from pagestore.redo import masking
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import wait_until
from tests.fixtures.waldump import run_pg_waldump
from tests.integration.test_ingest_service import attach, caught_up
from tests.workloads import run_pgbench

BLCKSZ = 8192
WAIT_LSN_TIMEOUT = 2.0  # pageread.wait_lsn_timeout in these tests

# ---------------------------------------------------------------- a hand-written client
#
# libpq framing: a type byte, then Int32 length counting itself and the body.
# StartupMessage: Int32 length, Int32 196608 (protocol 3.0), name\0value\0 ... \0.
MSG_HEADER = struct.Struct("!cI")
# pagestream v2 request header: tag u8, request_lsn u64, not_modified_since u64
V2_HDR = struct.Struct("!BQQ")
# pagestream v3 request header: tag u8, reqid u64, request_lsn u64, not_modified_since u64
V3_HDR = struct.Struct("!BQQQ")
REL = struct.Struct("!IIIB")  # spcnode, dbnode, relnode, forknum
BLKNO = struct.Struct("!I")


class PgError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('C')}: {fields.get('M')}")
        self.fields = fields


class RawClient:
    """A libpq frontend over a plain socket: startup, simple query, CopyBoth."""

    def __init__(self, port: int, timeout: float = 60, password: str | None = None) -> None:
        """``password``: the token for a NeonJWT port (default $PGPASSWORD, which the
        stack fixture sets when auth is on)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        params = b"user\x00test\x00application_name\x00gateway-test\x00\x00"
        body = struct.pack("!i", 196608) + params
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        password = os.environ.get("PGPASSWORD") if password is None else password
        try:
            self._handshake(password)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, password: str | None) -> None:
        auth_ok = False
        while True:
            t, body = self.read()
            if t == b"R" and struct.unpack("!i", body[:4])[0] == 3:  # cleartext password
                self.send(b"p", (password or "").encode() + b"\x00")
            elif t == b"R":
                assert struct.unpack("!i", body[:4])[0] == 0  # AuthenticationOk
                auth_ok = True
            elif t == b"Z":
                break
            elif t == b"E":
                raise PgError(self.error_fields(body))
        assert auth_ok

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self) -> tuple[bytes, bytes]:
        t, length = MSG_HEADER.unpack(self._recv_exact(MSG_HEADER.size))
        return t, self._recv_exact(length - 4)

    def send(self, t: bytes, body: bytes) -> None:
        self.sock.sendall(MSG_HEADER.pack(t, len(body) + 4) + body)

    @staticmethod
    def error_fields(body: bytes) -> dict[str, str]:
        fields = {}
        for part in body.rstrip(b"\x00").split(b"\x00"):
            if part:
                fields[chr(part[0])] = part[1:].decode()
        return fields

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        """Run a simple query; all messages up to ReadyForQuery (ErrorResponse raises,
        after ReadyForQuery was read)."""
        self.send(b"Q", sql.encode() + b"\x00")
        out = []
        error = None
        while True:
            t, body = self.read()
            if t == b"Z":
                if error:
                    raise PgError(error)
                return out
            if t == b"E":
                error = self.error_fields(body)
            out.append((t, body))

    def start_pagestream(self, version: int, tenant: str, timeline: str) -> None:
        self.send(b"Q", f"pagestream_v{version} {tenant} {timeline}".encode() + b"\x00")
        t, body = self.read()
        if t == b"E":
            raise PgError(self.error_fields(body))
        assert t == b"W" and body == b"\x00\x00\x00", (t, body)  # CopyBothResponse, 0 cols

    def copy_data(self, payload: bytes) -> None:
        self.send(b"d", payload)

    def response(self) -> bytes:
        """The payload of the next CopyData; an ErrorResponse raises PgError."""
        t, body = self.read()
        if t == b"E":
            raise PgError(self.error_fields(body))
        assert t == b"d", (t, body[:100])
        return body

    def pipelined(self, requests: list[bytes], window: int = 200) -> list[bytes]:
        """Send requests in windows without waiting; the answers, in arrival order."""
        out = []
        for i in range(0, len(requests), window):
            chunk = requests[i:i + window]
            self.sock.sendall(b"".join(MSG_HEADER.pack(b"d", len(r) + 4) + r for r in chunk))
            out += [self.response() for _ in chunk]
        return out


def v2_get_page(lsn: int, nms: int, rel: tuple[int, int, int, int], blkno: int) -> bytes:
    return V2_HDR.pack(2, lsn, nms) + REL.pack(*rel) + BLKNO.pack(blkno)


def v2_rel_request(tag: int, lsn: int, rel: tuple[int, int, int, int]) -> bytes:
    return V2_HDR.pack(tag, lsn, lsn) + REL.pack(*rel)


def v2_error(resp: bytes) -> str:
    assert resp[0] == 103 and resp[-1] == 0, resp[:100]
    return resp[1:-1].decode()


# ---------------------------------------------------------------- sizes, as the WAL gives them
#
# DbSize (Neon's) is the sum of nblocks * BLCKSZ over the relation forks of a database;
# pg_database_size is another quantity (it also counts PG_VERSION, pg_filenode.map,
# pg_internal.init, ...).  And a fork's size in pagestore is what the base backup and the
# WAL give, which is not always the primary's file: PostgreSQL does not WAL-log FSM pages
# (with wal_log_hints they reach the WAL as full-page images, but only when a hint
# changes: an FSM page extended and left as it was never does), nor the empty pages of a
# bulk heap extension.  A standby is no oracle either: its redo records free space in its
# own FSM (XLogRecordPageWithFreeSpace), which pagestore, like Neon, does not.  So the
# expected size of every fork comes from the primary as pagestore sees it: the fork's size
# before the timeline was attached (what the base backup copied; the primary is quiet
# then), extended to the highest block any WAL record since references, as pg_waldump
# (not pagestore's decoder) reads the primary's WAL.

FORK_NAMES = ("main", "fsm", "vm", "init")
_RELATIONS_SQL = (
    "SELECT pg_relation_filenode(c.oid), c.relpersistence, c.reltablespace, "
    + ", ".join(f"pg_relation_size(c.oid, '{f}')" for f in FORK_NAMES)
    + " FROM pg_class c WHERE pg_relation_filenode(c.oid) IS NOT NULL AND NOT c.relisshared")
CLOG_XACTS_PER_PAGE = BLCKSZ * 4  # two status bits per transaction
SLRU_PAGES_PER_SEGMENT = 32


def relation_forks(primary: PgCluster, dbname: str = "postgres") -> dict[int, tuple[int, ...]]:
    """relfilenode: blocks in (main, fsm, vm, init), for every relation of the database
    with storage (shared catalogs live in global/, not in the database)."""
    out: dict[int, tuple[int, ...]] = {}
    for line in primary.psql(_RELATIONS_SQL, dbname=dbname).splitlines():
        filenode, persistence, spc, *sizes = line.split("|")
        # Unlogged and temporary forks are not in the WAL, other tablespaces not in
        # DbSize: none is made by these tests, and the sizes below do not handle them.
        assert persistence == "p" and spc == "0", line
        out[int(filenode)] = tuple(int(n) // BLCKSZ for n in sizes)
    return out


def wal_fork_sizes(primary: PgCluster, db: int, before: dict[int, tuple[int, ...]],
                   after: dict[int, tuple[int, ...]], since: Lsn,
                   end: Lsn) -> dict[tuple[int, int], int]:
    """(relfilenode, fork): blocks as of ``end``, for every fork of the relations in
    ``after`` (the database's relations at ``end``): the size in ``before`` (taken at
    ``since``, before the timeline was attached), extended to the highest block the WAL
    in [since, end) references.  Relations created since start at 0 blocks."""
    run = run_pg_waldump(primary.bin_dir, primary.datadir / "pg_wal", start=str(since),
                         end=str(end))
    prefix = f"1663/{db}/"
    highest: dict[tuple[int, int], int] = {}
    for rec in run.records:
        # A truncation would shrink a fork; these workloads have none (pgbench's TRUNCATE
        # of tables made in an earlier transaction gives them new relfilenodes).
        assert not (rec.rmgr == "Storage" and rec.identity == "TRUNCATE"
                    and f"base/{db}/" in rec.desc), f"{rec.lsn}: {rec.desc}"
        for b in rec.blocks:
            if b.rel.startswith(prefix):
                k = (int(b.rel[len(prefix):]), FORK_NAMES.index(b.fork))
                highest[k] = max(highest.get(k, 0), b.blk + 1)
    none = (0,) * len(FORK_NAMES)
    return {(fn, fork): max(before.get(fn, none)[fork], highest.get((fn, fork), 0))
            for fn in after for fork in range(len(FORK_NAMES))}


def next_xid(primary: PgCluster) -> int:
    """The next transaction ID the primary will assign (no ID is assigned by asking)."""
    return int(primary.psql("SELECT pg_snapshot_xmax(pg_current_snapshot())"))


def clog_pages(next_xid_: int) -> int:
    """Pages of pg_xact/0000 once ``next_xid_ - 1`` was assigned (ExtendCLOG zeroes a
    page when its first transaction ID is handed out; page 0 exists from initdb)."""
    last = next_xid_ - 1
    assert last < CLOG_XACTS_PER_PAGE * SLRU_PAGES_PER_SEGMENT, "past segment 0000"
    return last // CLOG_XACTS_PER_PAGE + 1


# ---------------------------------------------------------------- the data under test

@dataclass
class Attached:
    tenant: str
    timeline: str
    end: Lsn
    db: int
    rels: dict[str, tuple[int, int, str]]  # name: (relnode, nblocks, file path)
    datadir: Path
    port: int  # the gateway's libpq port
    fork_blocks: dict[tuple[int, int], int]  # (relnode, fork): blocks at end, per the WAL
    primary_fork_blocks: dict[int, tuple[int, ...]]  # relnode: the primary's files at end
    next_xid: int  # at end, and still when the primary stopped


# wal_log_hints: FSM pages reach the WAL (as full-page images when a hint changes), so
# the FSM sizes pagestore serves are not all zero and a lost FSM block shows.
PRIMARY_SETTINGS = {"wal_keep_size": "'2GB'", "autovacuum": "off", "wal_log_hints": "on"}


def attached_stack(stack: StackRunner, pg_factory) -> Attached:
    """A timeline with pgbench data, caught up to the stopped primary's last flush."""
    primary = pg_factory(settings=PRIMARY_SETTINGS)
    stack.init(f"pageread.wait_lsn_timeout='{WAIT_LSN_TIMEOUT:.0f}s'",
               "ingest.checkpoint_timeout='1s'")
    stack.start()
    before = relation_forks(primary)  # quiet from here to the base backup: what it copies
    since = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    tenant, timeline = attach(stack, primary)
    run_pgbench(primary, scale=1, transactions=400)
    primary.psql("CHECKPOINT")
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    xid = next_xid(primary)
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120, what="caught up")
    db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
    rels = {}
    for name in ("pgbench_accounts", "pgbench_accounts_pkey", "pgbench_branches"):
        rels[name] = (int(primary.psql(f"SELECT pg_relation_filenode('{name}')")),
                      int(primary.psql(f"SELECT pg_relation_size('{name}')")) // BLCKSZ,
                      primary.psql(f"SELECT pg_relation_filepath('{name}')"))
    after = relation_forks(primary)
    # Quiet since end: no transaction ID handed out, so no relation and no clog bit changed.
    assert next_xid(primary) == xid
    primary.stop()  # its files now hold every page as of the end of the WAL
    stack.allowed_errors.append(r"rpc failed")
    return Attached(tenant, timeline, end, db, rels, primary.datadir,
                    stack.status()["services"]["gateway"]["port"],
                    wal_fork_sizes(primary, db, before, after, since, end), after, xid)


def fork_differences(a: Attached) -> list[str]:
    """Forks whose size at end on the primary is not what the WAL gives (for messages)."""
    return [f"{fn}/{FORK_NAMES[fork]}: WAL {n}, primary {a.primary_fork_blocks[fn][fork]}"
            for (fn, fork), n in sorted(a.fork_blocks.items())
            if a.primary_fork_blocks[fn][fork] != n]


def assert_same_page(ours: bytes, theirs: bytes, rmid: int, what: object) -> None:
    assert len(ours) == BLCKSZ, what
    if ours != theirs:
        a = masking.mask_page(rmid, ours, 0, 0)
        b = masking.mask_page(rmid, theirs, 0, 0)
        assert a == b, (what, masking.first_difference(a, b))


# ---------------------------------------------------------------- tests

def test_pagestream_pages_sizes_and_errors(stack: StackRunner, pg_factory) -> None:
    a = attached_stack(stack, pg_factory)
    end = int(a.end)
    c = RawClient(a.port)
    other = RawClient(a.port)  # opened before the bad connection below
    try:
        c.start_pagestream(2, a.tenant, a.timeline)
        # Every block of the table and of its primary key, pipelined, in request order.
        for name in ("pgbench_accounts", "pgbench_accounts_pkey"):
            relnode, nblocks, path = a.rels[name]
            rel = (1663, a.db, relnode, 0)
            assert nblocks > 100, name
            nb = c.pipelined([v2_rel_request(1, end, rel)])[0]
            assert nb[0] == 101 and len(nb) == 5 and struct.unpack("!I", nb[1:])[0] == nblocks
            answers = c.pipelined([v2_get_page(end, end, rel, b) for b in range(nblocks)])
            data = (a.datadir / path).read_bytes()
            rmid = RmgrId.BTREE if name.endswith("pkey") else RmgrId.HEAP
            for blkno, resp in enumerate(answers):
                assert resp[0] == 102 and len(resp) == 1 + BLCKSZ, (name, blkno, resp[:80])
                assert_same_page(resp[1:], data[blkno * BLCKSZ:(blkno + 1) * BLCKSZ], rmid,
                                 (name, blkno))

        relnode, nblocks, _ = a.rels["pgbench_branches"]
        rel = (1663, a.db, relnode, 0)
        missing = (1663, a.db, 999999, 0)
        answers = c.pipelined([
            v2_rel_request(0, end, rel),  # Exists
            v2_rel_request(0, end, missing),
            V2_HDR.pack(3, end, end) + struct.pack("!I", a.db),  # DbSize
            V2_HDR.pack(4, end, end) + struct.pack("!BI", 0, 0),  # clog segment 0
            v2_get_page(end, end, rel, nblocks + 5),  # past the end: zeros
            v2_get_page(end, end, missing, 0),  # a missing relation: Not found
            v2_get_page(end, end + 1, rel, 0),  # not_modified_since > request_lsn
            v2_rel_request(1, end, (1663, a.db, relnode, 1)),  # Nblocks of the FSM fork
            V2_HDR.pack(4, end, end) + struct.pack("!BI", 7, 0),  # invalid SLRU kind
        ])
        assert answers[0] == b"\x64\x01"
        assert answers[1] == b"\x64\x00"
        # DbSize: every fork of every relation of the database, as the WAL gives them.
        assert answers[2][0] == 104 and len(answers[2]) == 9
        db_size = struct.unpack("!q", answers[2][1:])[0]
        assert db_size == sum(a.fork_blocks.values()) * BLCKSZ, (
            db_size, sum(a.fork_blocks.values()) * BLCKSZ, fork_differences(a))
        # The clog segment: the primary's pg_xact/0000 (written by its shutdown
        # checkpoint, and no transaction ID handed out since end), every page that exists
        # at end, the last one partly used; nothing more, nothing less.
        assert answers[3][0] == 105
        n_clog = struct.unpack("!I", answers[3][1:5])[0]
        assert len(answers[3]) == 5 + n_clog * BLCKSZ
        primary_clog = (a.datadir / "pg_xact" / "0000").read_bytes()
        assert len(primary_clog) == clog_pages(a.next_xid) * BLCKSZ
        assert n_clog == clog_pages(a.next_xid)
        assert answers[3][5:] == primary_clog
        assert answers[4] == b"\x66" + bytes(BLCKSZ)
        assert v2_error(answers[5]).startswith("Not found: ")
        assert v2_error(answers[6]).startswith("Bad request: ")
        # Nblocks of the FSM fork: what the WAL gives (see wal_fork_sizes), not zero
        # (wal_log_hints brings its pages into the WAL).
        fsm_blocks = a.fork_blocks[(relnode, 1)]
        assert fsm_blocks > 0
        assert answers[7] == b"\x65" + struct.pack("!I", fsm_blocks), (answers[7], fsm_blocks)
        assert v2_error(answers[8]).startswith("Bad request: ")

        # An LSN that never arrives: a pagestream Error "LSN timeout" (not the end of the
        # stream), and the stream goes on.  The quick answers queued behind the waits
        # still come back in request order.
        far = end + (1 << 30)
        answers = c.pipelined([
            v2_get_page(far, far, rel, 0),
            v2_rel_request(1, end, rel),
            V2_HDR.pack(1, far, far) + REL.pack(*rel),  # Nblocks
            V2_HDR.pack(3, far, far) + struct.pack("!I", a.db),  # DbSize
            v2_get_page(end, end, rel, 0),
        ])
        for i in (0, 2, 3):
            assert v2_error(answers[i]).startswith("LSN timeout: "), answers[i][:200]
        branches = (a.datadir / a.rels["pgbench_branches"][2]).read_bytes()
        assert answers[1] == b"\x65" + struct.pack("!I", nblocks)
        assert answers[4][0] == 102 and len(answers[4]) == 1 + BLCKSZ
        assert_same_page(answers[4][1:], branches[:BLCKSZ], RmgrId.HEAP, "after timeouts")
        # ... and requests sent after the errors came back are answered on the same
        # connection, correctly.
        after = c.pipelined([v2_get_page(end, end, rel, 0), v2_rel_request(1, end, rel),
                             V2_HDR.pack(3, end, end) + struct.pack("!I", a.db)])
        assert after[0][0] == 102 and len(after[0]) == 1 + BLCKSZ, after[0][:100]
        assert_same_page(after[0][1:], branches[:BLCKSZ], RmgrId.HEAP, "after the errors")
        assert after[1] == b"\x65" + struct.pack("!I", nblocks)
        assert after[2] == b"\x68" + struct.pack("!q", db_size)

        # pagestream v3 on the other connection: the answers echo each request.
        other.start_pagestream(3, a.tenant, a.timeline)
        relnode, nblocks, path = a.rels["pgbench_accounts"]
        rel = (1663, a.db, relnode, 0)
        blocks = [0, nblocks - 1, 7, 7, 3]
        lsns = [(Lsn.MAX, end), (end, end), (end, 0), (end, end), (end, end)]
        reqs = [V3_HDR.pack(2, (4242 << 32) | i, lsn, nms) + REL.pack(*rel) + BLKNO.pack(b)
                for i, (b, (lsn, nms)) in enumerate(zip(blocks, lsns, strict=True))]
        reqs.append(V3_HDR.pack(1, 99, end, end) + REL.pack(*rel))  # Nblocks
        reqs.append(V3_HDR.pack(2, 100, end, end + 1) + REL.pack(*rel) + BLKNO.pack(0))
        answers = other.pipelined(reqs)
        data = (a.datadir / path).read_bytes()
        for i, (resp, req) in enumerate(zip(answers[:5], reqs[:5], strict=True)):
            assert len(resp) == 8234 and resp[0] == 102
            assert resp[1:42] == req[1:]  # reqid, both LSNs as sent, rel, blkno
            b = blocks[i]
            assert_same_page(resp[42:], data[b * BLCKSZ:(b + 1) * BLCKSZ], RmgrId.HEAP, b)
        assert len(answers[5]) == 42 and answers[5][:38] == b"\x65" + reqs[5][1:]
        assert struct.unpack("!I", answers[5][38:])[0] == nblocks
        err = answers[6]
        assert err[0] == 103 and err[1:25] == reqs[6][1:25] and err[-1] == 0
        assert err[25:-1].decode().startswith("Bad request: ")

        # A malformed message (unknown tag) on a third connection: ErrorResponse, the
        # pagestream ends, the connection is idle again; the others keep working.
        bad = RawClient(a.port)
        bad.start_pagestream(2, a.tenant, a.timeline)
        bad.copy_data(b"\x2a" + bytes(40))
        with pytest.raises(PgError) as exc:
            bad.response()
        assert exc.value.fields["M"].startswith("invalid tag 42")
        assert exc.value.fields["C"] == "08P01"
        assert bad.read()[0] == b"Z"
        assert bad.query("set datestyle to iso")[0][0] == b"C"
        # a short GetPage is malformed too
        bad.start_pagestream(3, a.tenant, a.timeline)
        bad.copy_data(b"\x02" + bytes(30))
        with pytest.raises(PgError, match="expected 42"):
            bad.response()
        bad.close()
        # A client that leaves with requests in flight (some waiting for WAL): the others
        # are not disturbed, and nothing is logged as lost (the stack scans the logs).
        gone = RawClient(a.port)
        gone.start_pagestream(2, a.tenant, a.timeline)
        burst = [v2_get_page(end, end, rel, b % nblocks) for b in range(300)]
        burst[5:5] = [v2_get_page(far, far, rel, 0), V2_HDR.pack(1, far, far) + REL.pack(*rel)]
        gone.sock.sendall(b"".join(struct.pack("!cI", b"d", len(r) + 4) + r for r in burst)
                          + b"\x2a")  # and a torn message
        gone.close()
        again = other.pipelined([reqs[1]])[0]
        assert again[1:42] == reqs[1][1:]
        assert c.pipelined([v2_get_page(end, end, rel, 1)])[0][0] == 102
    finally:
        c.close()
        other.close()


def test_unknown_timeline_refusals_and_binding(stack: StackRunner) -> None:
    stack.init()
    stack.start()
    port = stack.status()["services"]["gateway"]["port"]
    tenant = stack.run("tenant", "create").stdout.strip()
    unknown_tl = "ab" * 16
    c = RawClient(port, timeout=30)
    try:
        c.start_pagestream(2, tenant, unknown_tl)
        # (A hang fails on the client's 30 s socket timeout, not on a timing assertion.)
        # GetPage: a pagestream Error "Not found", and the stream goes on ...
        resp = c.pipelined([v2_get_page(0x1000000, 0x1000000, (1663, 5, 1259, 0), 0)])[0]
        assert v2_error(resp).startswith("Not found: ")
        # ... Nblocks: a libpq ErrorResponse and the pagestream ends.
        c.copy_data(v2_rel_request(1, 0x1000000, (1663, 5, 1259, 0)))
        with pytest.raises(PgError) as exc:
            c.response()
        assert exc.value.fields["C"] == "42704"  # undefined_object (NotFound)
        assert unknown_tl in exc.value.fields["M"]
        assert c.read()[0] == b"Z"
        # The connection is idle again, and bound to its first tenant.
        with pytest.raises(PgError) as exc:
            c.query(f"basebackup {'cd' * 16} {unknown_tl}")
        assert exc.value.fields["C"] == "55000"
        assert "bound to tenant" in exc.value.fields["M"]
        with pytest.raises(PgError) as exc:  # same tenant: it reaches the service
            c.query(f"basebackup {tenant} {unknown_tl}")
        assert exc.value.fields["C"] == "42704"
        with pytest.raises(PgError) as exc:
            c.query(f"lease lsn {tenant} {unknown_tl} 0/1000000")
        assert exc.value.fields["C"] == "42704"
        with pytest.raises(PgError) as exc:
            c.query("hello")
        assert exc.value.fields["C"] == "42601"
        assert c.query("set x to y")[0] == (b"C", b"SELECT 1\x00")
        # Terminate ends the session.
        c.send(b"X", b"")
        with pytest.raises(ConnectionError):
            c.read()
        # An oversized message: FATAL protocol_violation before it is buffered, closed.
        big = RawClient(port, timeout=30)
        big.sock.sendall(MSG_HEADER.pack(b"Q", 1 << 30))
        t, body = big.read()
        assert t == b"E" and big.error_fields(body)["S"] == "FATAL"
        assert big.error_fields(body)["C"] == "08P01"
        with pytest.raises(ConnectionError):
            big.read()
        big.close()
    finally:
        c.close()
    # a real libpq client: `set` answers, the session goes on
    with psycopg.connect(host="127.0.0.1", port=port, autocommit=True) as conn:
        conn.execute("set datestyle to iso")
        with pytest.raises(psycopg.Error) as perr:
            conn.execute(f"pagestream_v2 {tenant}")
        assert perr.value.sqlstate == "42601"
        conn.execute("SET datestyle TO iso")
    stack.allowed_errors.append(r"rpc failed")


def test_lease_lsn(stack: StackRunner, pg_factory) -> None:
    a = attached_stack(stack, pg_factory)
    c = RawClient(a.port)
    try:
        before = time.time()
        msgs = c.query(f"lease lsn {a.tenant} {a.timeline} {a.end} ")
        types = [t for t, _ in msgs]
        assert types == [b"T", b"D", b"C"], types
        t_body = msgs[0][1]
        assert struct.unpack("!h", t_body[:2])[0] == 1
        name, rest = t_body[2:].split(b"\x00", 1)
        assert name == b"valid_until"
        _table, _attnum, type_oid, typlen, _typmod, fmt = struct.unpack("!IhIhih", rest)
        assert (type_oid, typlen, fmt) == (25, -1, 0)
        count, length = struct.unpack("!hi", msgs[1][1][:6])
        assert count == 1
        millis = int(msgs[1][1][6:6 + length])
        assert before * 1000 + 60_000 < millis < before * 1000 + 3600_000
        assert msgs[2][1] == b"SELECT 1\x00"
        with pytest.raises(PgError) as exc:
            c.query(f"lease lsn {a.tenant} {a.timeline} 0/0")
        assert exc.value.fields["C"] == "22023"
    finally:
        c.close()
    # The extended query protocol (Parse/Bind/Describe/Execute/Sync), through libpq.
    with psycopg.connect(host="127.0.0.1", port=a.port, autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        row = cur.execute(f"lease lsn {a.tenant}-0000 {a.timeline} {a.end}").fetchone()
        assert row is not None and int(row[0]) > before * 1000 + 60_000
        with pytest.raises(psycopg.Error) as perr:
            cur.execute(f"lease lsn {a.tenant} {a.timeline}")
        assert perr.value.sqlstate == "42601"
        cur.execute("set datestyle to iso")  # the session goes on after Sync


def _psql(port: int, command: str, out: Path) -> subprocess.CompletedProcess[str]:
    psql = str(find_pg_bin_dir() / "psql")
    return subprocess.run([psql, "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-c", command,
                           "-o", str(out)], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


# Depends on pagestore/basebackup.py (the tar builder behind GetBaseBackup/GetFullBackup).
def test_basebackup_and_fullbackup_through_psql(stack: StackRunner, pg_factory,
                                                work_dir: Path) -> None:
    a = attached_stack(stack, pg_factory)
    for i, command in enumerate([f"basebackup {a.tenant} {a.timeline}",
                                 f"basebackup {a.tenant} {a.timeline} {a.end}",
                                 f"fullbackup {a.tenant} {a.timeline} {a.end}"]):
        out = work_dir / f"backup{i}.tar"
        proc = _psql(a.port, command, out)
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(out) as tar:
            names = tar.getnames()
        assert "global/pg_control" in names, (command, names[:20])
        if command.startswith("fullbackup"):
            relnode = a.rels["pgbench_accounts"][0]
            assert f"base/{a.db}/{relnode}" in names
    # --gzip: a gzip'd tar through CopyData
    out = work_dir / "backup.tar.gz"
    proc = _psql(a.port, f"basebackup {a.tenant} {a.timeline} latest --gzip", out)
    assert proc.returncode == 0, proc.stderr
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        assert "global/pg_control" in tar.getnames()
    # an error before the copy starts: a plain error, no data
    out = work_dir / "bad.tar"
    proc = _psql(a.port, f"basebackup {a.tenant} {'ab' * 16}", out)
    assert proc.returncode != 0 and "not found" in proc.stderr.lower(), proc.stderr
    assert not out.exists() or out.stat().st_size == 0


def test_pageread_down_means_reconnect(stack: StackRunner) -> None:
    """The page-read service killed: a pagestream ends with ErrorResponse 08006 and the
    connection closes (Neon's "reconnect"); other commands fail and the connection goes
    on; once the service is back, new connections are served again."""
    stack.init()
    stack.start()
    port = stack.status()["services"]["gateway"]["port"]
    tenant = stack.run("tenant", "create").stdout.strip()
    timeline = "ab" * 16
    request = v2_get_page(0x1000000, 0x1000000, (1663, 5, 1259, 0), 0)
    c = RawClient(port, timeout=30)
    idle = RawClient(port, timeout=30)
    try:
        c.start_pagestream(2, tenant, timeline)
        assert v2_error(c.pipelined([request])[0]).startswith("Not found: ")
        os.kill(stack.status()["services"]["pageread"]["pid"], signal.SIGKILL)
        wait_until(lambda: stack.status()["services"]["pageread"]["health"] == "DOWN",
                   timeout=30, what="pageread down")
        c.copy_data(request)
        with pytest.raises(PgError) as exc:
            c.response()
        assert exc.value.fields["C"] == "08006", exc.value.fields
        with pytest.raises(ConnectionError):
            c.read()  # closed
        with pytest.raises(PgError) as exc:
            idle.query(f"basebackup {tenant} {timeline}")
        assert exc.value.fields["C"] == "08006"
        assert idle.query("set x to y")[0][0] == b"C"
    finally:
        c.close()
        idle.close()
    stack.start()  # starts only the missing service

    def served() -> bool:
        fresh = RawClient(port, timeout=30)
        try:
            fresh.start_pagestream(2, tenant, timeline)
            return v2_error(fresh.pipelined([request])[0]).startswith("Not found: ")
        finally:
            fresh.close()

    wait_until(served, timeout=60, what="served again")
    stack.allowed_errors.append(r"rpc failed")

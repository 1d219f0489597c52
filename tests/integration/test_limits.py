"""Limits: each one a clear error for the request or connection over it, the rest served,
and every refusal counted in the service's log.

- ``pageread.max_blocks_per_request``: a GetPages request for more blocks gets
  INVALID_REQUEST naming the limit; the stream goes on;
- ``gateway.max_connections``: one libpq connection too many gets FATAL 53300 at startup,
  as PostgreSQL answers when max_connections is reached; the open ones go on;
- ``pageread.max_tail_bytes``: when the recent tail (WAL values not yet in a layer file)
  outgrows it, the tail follower leaves its subscription until layer files cover the
  tail, then follows again; reads stay correct.

The gateway coalesces a compute's pipelined GetPages into batches no larger than
``pageread.max_blocks_per_request`` (test_gateway_batches_within_max_blocks_per_request).

(WAL record length limits are covered by unit tests.)
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster
from pagestore.pg.rmgr import RmgrId
from pagestore.proto import page_service_pb2 as pb
from pagestore.proto import page_service_pb2_grpc, pageread_pb2, pageread_pb2_grpc
from pagestore.redo import masking
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import client_channel, wait_until
from tests.integration.test_gateway import PgError, RawClient, v2_get_page
from tests.integration.test_ingest_service import attach, caught_up, status

BLCKSZ = 8192


def metadata(tenant: str, timeline: str) -> tuple[tuple[str, str], ...]:
    return (("neon-tenant-id", tenant), ("neon-timeline-id", timeline),
            ("neon-shard-id", "0000"))


def log_lines(stack: StackRunner, service: str, pattern: str) -> list[re.Match[str]]:
    text = (stack.workdir / "logs" / f"{service}.log").read_text(errors="replace")
    return [m for line in text.splitlines() if (m := re.search(pattern, line))]


def table_file(primary: PgCluster, table: str) -> tuple[int, int, Path]:
    """(dboid, relfilenode, data file) of a table of the postgres database."""
    db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
    relnode = int(primary.psql(f"SELECT pg_relation_filenode('{table}')"))
    return db, relnode, primary.datadir / primary.psql(f"SELECT pg_relation_filepath('{table}')")


def assert_heap_page(ours: bytes, theirs: bytes, what: object) -> None:
    """Equal to the primary's page under PostgreSQL's heap mask (hint bits and the like)."""
    assert len(ours) == BLCKSZ, what
    if ours != theirs:
        a = masking.mask_page(RmgrId.HEAP, ours, 0, 0)
        b = masking.mask_page(RmgrId.HEAP, theirs, 0, 0)
        assert a == b, (what, masking.first_difference(a, b))


class Client(RawClient):
    """RawClient that closes its socket when the startup is refused."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        try:
            super().__init__(port, timeout)
        except BaseException:
            if hasattr(self, "sock"):
                self.sock.close()
            raise


class Requests:
    """A request iterator for a GetPages stream, fed one request at a time, so that each
    request is sent only after the previous answer came back."""

    def __init__(self) -> None:
        self.q: queue.Queue[pb.GetPageRequest | None] = queue.Queue()

    def __iter__(self) -> Iterator[pb.GetPageRequest]:
        while (req := self.q.get()) is not None:
            yield req

    def send(self, req: pb.GetPageRequest) -> None:
        self.q.put(req)

    def close(self) -> None:
        self.q.put(None)


# ---------------------------------------------------------------- max_blocks_per_request

def test_max_blocks_per_request(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory(settings={"autovacuum": "off"})
    primary.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
                 "FROM generate_series(1, 3000) g")
    stack.init("pageread.max_blocks_per_request=8", "ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    primary.psql("CHECKPOINT")
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120, what="caught up")
    db, relnode, path = table_file(primary, "t")
    primary.stop()  # its files now hold every page as of the end of the WAL
    data = path.read_bytes()
    nblocks = len(data) // BLCKSZ
    assert nblocks >= 20, nblocks

    port = stack.status()["services"]["pageread"]["port"]
    rel = pb.RelTag(spc_oid=1663, db_oid=db, rel_number=relnode, fork_number=0)
    read_lsn = pb.ReadLsn(request_lsn=int(end), not_modified_since_lsn=int(end))

    def request(rid: int, blocks: list[int]) -> pb.GetPageRequest:
        return pb.GetPageRequest(request_id=pb.RequestID(id=rid), read_lsn=read_lsn, rel=rel,
                                 block_number=blocks)

    refused = r"WARNING pageread .*GetPages request for (\d+) blocks refused: over " \
              r"pageread\.max_blocks_per_request 8 \((\d+) refused so far\)"
    assert not log_lines(stack, "pageread", refused)
    with client_channel(f"127.0.0.1:{port}") as ch:
        stub = page_service_pb2_grpc.PageServiceStub(ch)
        reqs = Requests()
        answers = stub.GetPages(iter(reqs), metadata=metadata(tenant, timeline), timeout=120)
        try:
            # 9 blocks: one over the limit.
            reqs.send(request(1, list(range(9))))
            over = next(answers)
            assert over.request_id.id == 1
            assert over.status_code == pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST, over
            assert "pageread.max_blocks_per_request" in over.reason, over.reason
            assert "at most 8 blocks" in over.reason and "asks for 9" in over.reason, over.reason
            assert not over.page
            # The same stream then serves 8 blocks (at the limit), correctly ...
            reqs.send(request(2, list(range(8, 16))))
            ok = next(answers)
            assert ok.request_id.id == 2
            assert ok.status_code == pb.GET_PAGE_STATUS_CODE_OK, ok.reason
            assert [p.block_number for p in ok.page] == list(range(8, 16))
            for p in ok.page:
                b = p.block_number
                assert_heap_page(p.image, data[b * BLCKSZ:(b + 1) * BLCKSZ], b)
            # ... refuses a much larger one, and serves a single block after it.
            reqs.send(request(3, list(range(nblocks))))
            again = next(answers)
            assert again.request_id.id == 3
            assert again.status_code == pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST, again
            assert f"asks for {nblocks}" in again.reason, again.reason
            reqs.send(request(4, [nblocks - 1]))
            last = next(answers)
            assert last.status_code == pb.GET_PAGE_STATUS_CODE_OK, last.reason
            assert_heap_page(last.page[0].image, data[-BLCKSZ:], nblocks - 1)
        finally:
            reqs.close()
        assert list(answers) == []  # the stream ends when the client is done, cleanly

    # Each refusal is a WARNING line counting the refusals so far.
    def counted() -> list[tuple[str, str]] | None:
        found = [(m.group(1), m.group(2)) for m in log_lines(stack, "pageread", refused)]
        return found if len(found) >= 2 else None

    assert wait_until(counted, timeout=30, what="refusals logged") == [
        ("9", "1"), (str(nblocks), "2")]


def test_gateway_batches_within_max_blocks_per_request(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory(settings={"autovacuum": "off"})
    primary.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
                 "FROM generate_series(1, 3000) g")
    stack.init("pageread.max_blocks_per_request=8", "ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    primary.psql("CHECKPOINT")
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120, what="caught up")
    db, relnode, path = table_file(primary, "t")
    primary.stop()
    data = path.read_bytes()
    nblocks = len(data) // BLCKSZ
    assert nblocks >= 20, nblocks
    stack.allowed_errors.append(r"rpc failed")
    c = RawClient(stack.status()["services"]["gateway"]["port"])
    try:
        c.start_pagestream(2, tenant, timeline)
        # Single-block requests, pipelined as a compute's prefetch sends them.
        answers = c.pipelined([v2_get_page(int(end), int(end), (1663, db, relnode, 0), b)
                               for b in range(nblocks)])
    finally:
        c.close()
    for b, resp in enumerate(answers):
        assert resp[0] == 102, (b, resp[:200])
        assert_heap_page(resp[1:], data[b * BLCKSZ:(b + 1) * BLCKSZ], b)


# ---------------------------------------------------------------- gateway.max_connections

def test_gateway_max_connections(stack: StackRunner) -> None:
    stack.init("gateway.max_connections=2")
    stack.start()
    port = stack.status()["services"]["gateway"]["port"]
    tenant = stack.run("tenant", "create").stdout.strip()
    timeline = "ab" * 16  # unknown: a GetPage is answered "Not found", the stream goes on
    request = v2_get_page(0x1000000, 0x1000000, (1663, 5, 1259, 0), 0)
    refused = (r"WARNING gateway .*connection from .* refused: (\d+) connections open, "
               r"gateway\.max_connections is 2 \((\d+) refused so far\)")

    def served(c: Client) -> bool:
        """A request on the pagestream gets its answer (a pagestream Error here)."""
        resp = c.pipelined([request])[0]
        assert resp[0] == 103 and resp[1:].startswith(b"Not found: "), resp[:300]
        return True

    open_ = [Client(port), Client(port)]
    try:
        for c in open_:
            c.start_pagestream(2, tenant, timeline)
        assert all(served(c) for c in open_)
        assert not log_lines(stack, "gateway", refused)

        # The third: FATAL 53300 (too_many_connections) answering its startup.
        with pytest.raises(PgError) as exc:
            Client(port)
        fields = exc.value.fields
        assert fields["S"] == "FATAL" and fields["C"] == "53300", fields
        assert "gateway.max_connections = 2" in fields["M"], fields
        # The same through libpq (which keeps no SQLSTATE for a failed connection
        # attempt, only the message: psycopg's sqlstate is None there).
        with pytest.raises(psycopg.OperationalError) as perr:
            psycopg.connect(host="127.0.0.1", port=port, connect_timeout=30)
        assert "FATAL:  sorry, too many clients already (gateway.max_connections = 2)" in str(
            perr.value), perr.value

        # The two open connections were not disturbed.
        assert all(served(c) for c in open_)
        found = [(m.group(1), m.group(2)) for m in log_lines(stack, "gateway", refused)]
        assert found == [("2", "1"), ("2", "2")], found

        # One leaves: a new connection is accepted (once the gateway saw it go).
        open_.pop().close()

        def accepted() -> Client | None:
            try:
                return Client(port)
            except PgError as e:
                assert e.fields["C"] == "53300", e.fields
                return None

        fresh = wait_until(accepted, timeout=30, what="a new connection accepted")
        open_.append(fresh)
        fresh.start_pagestream(2, tenant, timeline)
        assert served(fresh) and served(open_[0])
        # ... and the limit holds again.
        with pytest.raises(PgError) as exc:
            Client(port)
        assert exc.value.fields["C"] == "53300"
        counts = [int(m.group(2)) for m in log_lines(stack, "gateway", refused)]
        assert counts == list(range(1, len(counts) + 1)) and len(counts) >= 3, counts
    finally:
        for c in open_:
            c.close()
    stack.allowed_errors.append(r"rpc failed")


# ---------------------------------------------------------------- pageread.max_tail_bytes

TAIL_LIMIT = 262144


def read_status(stub: pageread_pb2_grpc.PageReadExtrasStub,
                md: tuple[tuple[str, str], ...]) -> pageread_pb2.TimelineReadStatus:
    return stub.GetTimelineStatus(pageread_pb2.GetTimelineStatusRequest(), metadata=md,
                                  timeout=30)


def follower(stack: StackRunner, tenant: str, timeline: str) -> dict:
    loops = [lp for lp in status(stack, tenant, timeline)["loops"]
             if lp["service"] == "pageread" and lp["name"] == "tail-follower"]
    assert len(loops) == 1, loops
    return loops[0]


def test_bounded_recent_tail(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory(settings={"autovacuum": "off", "wal_keep_size": "'1GB'"})
    # Wide rows, stored as they are (no compression, no TOAST): ~1.9 kB of WAL per row.
    primary.psql("CREATE TABLE bulk (id int, v text)")
    primary.psql("ALTER TABLE bulk ALTER COLUMN v SET STORAGE PLAIN")
    # Ingest keeps up to 4 MB in memory (3 s at most): pageread's tail, limited to
    # 256 kB, outgrows its limit long before a layer file covers it.
    stack.init(f"pageread.max_tail_bytes={TAIL_LIMIT}", "ingest.checkpoint_distance=4194304",
               "ingest.checkpoint_timeout='3s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    md = metadata(tenant, timeline)
    port = stack.status()["services"]["pageread"]["port"]
    db, relnode, path = table_file(primary, "bulk")
    rel = pb.RelTag(spc_oid=1663, db_oid=db, rel_number=relnode, fork_number=0)
    tail_full = (r"WARNING pageread .*recent tail holds (\d+) bytes, over "
                 rf"pageread\.max_tail_bytes {TAIL_LIMIT} \((\d+) times so far\): leaving the "
                 r"subscription until layer files cover it")
    with client_channel(f"127.0.0.1:{port}") as ch:
        pages = page_service_pb2_grpc.PageServiceStub(ch)
        extras = pageread_pb2_grpc.PageReadExtrasStub(ch)

        def rel_size(lsn: Lsn) -> int:
            return pages.GetRelSize(pb.GetRelSizeRequest(read_lsn=pb.ReadLsn(
                request_lsn=int(lsn), not_modified_since_lsn=int(lsn)), rel=rel),
                metadata=md, timeout=60).num_blocks

        # The first read loads the timeline in pageread and starts its tail follower.
        start = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
        assert rel_size(start) == 0
        wait_until(lambda: follower(stack, tenant, timeline)["detail"].startswith(
            ("subscribing from", "following")), timeout=30, what="tail follower subscribed")
        assert not log_lines(stack, "pageread", tail_full)

        # ~15 MB of WAL in a few transactions.
        for i in range(4):
            primary.psql(f"INSERT INTO bulk SELECT g, repeat(chr(65 + {i}), 1800) "
                         f"FROM generate_series({i * 2000 + 1}, {(i + 1) * 2000}) g")
        primary.psql("CHECKPOINT")
        end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
        assert end - start > 12 * 1024 * 1024

        full = wait_until(lambda: log_lines(stack, "pageread", tail_full), timeout=120,
                          what="the tail-full warning")
        held, times = int(full[0].group(1)), int(full[0].group(2))
        assert held > TAIL_LIMIT and times == 1, full[0].group(0)

        # Layer files cover the WAL, the tail drains.
        wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120,
                   what="caught up")
        wait_until(lambda: Lsn(read_status(extras, md).disk_consistent_lsn) >= end,
                   timeout=120, what="pageread's layer map covers the workload")
        # (The tail forgets whole chunks once a layer file covers their last value.)
        wait_until(lambda: read_status(extras, md).tail_bytes <= TAIL_LIMIT // 2,
                   timeout=60, what="the tail drained")
        episodes = len(log_lines(stack, "pageread", tail_full))
        counts = [int(m.group(2)) for m in log_lines(stack, "pageread", tail_full)]
        assert counts == list(range(1, episodes + 1)), counts

        # The follower follows again: new WAL reaches the tail through a new subscription
        # (after each tail-full episode the loop's detail reads "tail full" or
        # "subscribing", and "following" only once a batch arrived).
        primary.psql("INSERT INTO bulk VALUES (0, 'after')")
        after = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))

        def following() -> bool:
            lp = follower(stack, tenant, timeline)
            return (lp["state"] == "running" and lp["detail"] == "following"
                    and Lsn(read_status(extras, md).last_record_lsn) >= after)

        wait_until(following, timeout=60, what="the tail follower following again")
        assert len(log_lines(stack, "pageread", tail_full)) == episodes

        # Reads at the latest LSN are correct: every page of the table against the
        # stopped primary's file, once layer files cover it all.
        primary.psql("CHECKPOINT")
        final = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
        primary.stop()  # its files now hold every page as of the end of the WAL
        wait_until(lambda: Lsn(read_status(extras, md).disk_consistent_lsn) >= final,
                   timeout=120, what="layers cover the final LSN")
        data = path.read_bytes()
        nblocks = len(data) // BLCKSZ
        assert nblocks > 1500, nblocks
        assert rel_size(final) == nblocks
        read_lsn = pb.ReadLsn(request_lsn=int(final), not_modified_since_lsn=int(final))
        reqs = [pb.GetPageRequest(request_id=pb.RequestID(id=i), read_lsn=read_lsn, rel=rel,
                                  block_number=list(range(b, min(b + 32, nblocks))))
                for i, b in enumerate(range(0, nblocks, 32))]
        seen = 0
        for resp in pages.GetPages(iter(reqs), metadata=md, timeout=600):
            assert resp.status_code == pb.GET_PAGE_STATUS_CODE_OK, resp.reason
            for p in resp.page:
                b = p.block_number
                assert_heap_page(p.image, data[b * BLCKSZ:(b + 1) * BLCKSZ], b)
                seen += 1
        assert seen == nblocks
    stack.allowed_errors.append(r"rpc failed")

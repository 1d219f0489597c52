"""The page-read service over gRPC (Neon's page_api.PageService): pages, sizes and SLRU
segments of a live timeline equal the primary's, and bad requests get their status."""

from __future__ import annotations

import io
import tarfile

import grpc

from pagestore.lsn import Lsn
from pagestore.pg.rmgr import RmgrId
from pagestore.proto import page_service_pb2 as pb
from pagestore.proto import page_service_pb2_grpc, pageread_pb2, pageread_pb2_grpc
from pagestore.redo import masking
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import client_channel, wait_until
from tests.integration.test_gateway import (
    PRIMARY_SETTINGS,
    clog_pages,
    next_xid,
    relation_forks,
    wal_fork_sizes,
)
from tests.integration.test_ingest_service import attach, caught_up
from tests.workloads import run_pgbench


def _metadata(tenant: str, timeline: str) -> tuple[tuple[str, str], ...]:
    return (("neon-tenant-id", tenant), ("neon-timeline-id", timeline), ("neon-shard-id", "0000"))


def test_pages_sizes_and_errors(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory(settings=PRIMARY_SETTINGS)
    stack.init("pageread.wait_lsn_timeout='2s'", "ingest.checkpoint_timeout='1s'")
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
                      int(primary.psql(f"SELECT pg_relation_size('{name}')")) // 8192,
                      primary.psql(f"SELECT pg_relation_filepath('{name}')"))
    after = relation_forks(primary)
    # Quiet since end: no transaction ID handed out, so no relation and no clog bit changed.
    assert next_xid(primary) == xid
    primary.stop()  # its files now hold every page as of the end of the WAL
    # Every fork of every relation of the database as the WAL gives it (see wal_fork_sizes:
    # not the primary's files for the FSM, which PostgreSQL does not WAL-log).
    fork_blocks = wal_fork_sizes(primary, db, before, after, since, end)
    port = stack.status()["services"]["pageread"]["port"]
    md = _metadata(tenant, timeline)
    read_lsn = pb.ReadLsn(request_lsn=int(end))
    with client_channel(f"127.0.0.1:{port}") as ch:
        stub = page_service_pb2_grpc.PageServiceStub(ch)
        for name, (relnode, nblocks, path) in rels.items():
            rel = pb.RelTag(spc_oid=1663, db_oid=db, rel_number=relnode, fork_number=0)
            size = stub.GetRelSize(pb.GetRelSizeRequest(read_lsn=read_lsn, rel=rel),
                                   metadata=md, timeout=30)
            assert size.num_blocks == nblocks, name
            reqs = [pb.GetPageRequest(request_id=pb.RequestID(id=i), read_lsn=read_lsn, rel=rel,
                                      block_number=list(range(b, min(b + 16, nblocks))))
                    for i, b in enumerate(range(0, nblocks, 16))]
            data = (primary.datadir / path).read_bytes()
            rmid = RmgrId.BTREE if name.endswith("pkey") else RmgrId.HEAP
            for resp in stub.GetPages(iter(reqs), metadata=md, timeout=120):
                assert resp.status_code == pb.GET_PAGE_STATUS_CODE_OK, resp.reason
                for page in resp.page:
                    theirs = data[page.block_number * 8192:(page.block_number + 1) * 8192]
                    if page.image != theirs:
                        a = masking.mask_page(rmid, page.image, 0, page.block_number)
                        b = masking.mask_page(rmid, theirs, 0, page.block_number)
                        assert a == b, (name, page.block_number, masking.first_difference(a, b))
            # past the end: zero pages, no error
            past = next(stub.GetPages(iter([pb.GetPageRequest(
                request_id=pb.RequestID(id=99), read_lsn=read_lsn, rel=rel,
                block_number=[nblocks + 5])]), metadata=md, timeout=30))
            assert past.page[0].image == bytes(8192)
            # the FSM fork: what the WAL gives, for a table not zero (wal_log_hints)
            fsm = stub.GetRelSize(pb.GetRelSizeRequest(read_lsn=read_lsn, rel=pb.RelTag(
                spc_oid=1663, db_oid=db, rel_number=relnode, fork_number=1)),
                metadata=md, timeout=30)
            assert fsm.num_blocks == fork_blocks[(relnode, 1)], name
            assert fork_blocks[(relnode, 1)] > 0 or rmid == RmgrId.BTREE, name
        # The clog segment: exactly the primary's pg_xact/0000 (written by its shutdown
        # checkpoint, no transaction ID handed out since end): every page that exists at
        # end, the last one partly used.
        clog = stub.GetSlruSegment(pb.GetSlruSegmentRequest(read_lsn=read_lsn, kind=0, segno=0),
                                   metadata=md, timeout=30).segment
        primary_clog = (primary.datadir / "pg_xact" / "0000").read_bytes()
        assert len(primary_clog) == clog_pages(xid) * 8192
        assert len(clog) == len(primary_clog) and clog == primary_clog
        # DbSize: the sum over the database's relation forks (not pg_database_size).
        dbsize = stub.GetDbSize(pb.GetDbSizeRequest(read_lsn=read_lsn, db_oid=db),
                                metadata=md, timeout=30).num_bytes
        assert dbsize == sum(fork_blocks.values()) * 8192
        # Backups: page_api's GetBaseBackup in chunks of at most 256 KiB (Neon's contract),
        # GetFullBackup in bigger ones; each a whole tar holding the relation files.
        base_chunks = [c.chunk for c in stub.GetBaseBackup(pb.GetBaseBackupRequest(
            lsn=int(end), compression=pb.BASE_BACKUP_COMPRESSION_NONE), metadata=md,
            timeout=120)]
        assert max(len(c) for c in base_chunks) <= 256 * 1024 < sum(len(c) for c in base_chunks)
        extras = pageread_pb2_grpc.PageReadExtrasStub(ch)
        full_chunks = [c.chunk for c in extras.GetFullBackup(
            pageread_pb2.GetFullBackupRequest(lsn=int(end)), metadata=md, timeout=120)]
        assert 256 * 1024 < max(len(c) for c in full_chunks) <= 1024 * 1024
        with tarfile.open(fileobj=io.BytesIO(b"".join(full_chunks))) as tar:
            accounts = tar.getmember(rels["pgbench_accounts"][2])
            assert accounts.size == rels["pgbench_accounts"][1] * 8192

        # Per-request errors come back as status codes; the stream goes on.
        rel = pb.RelTag(spc_oid=1663, db_oid=db, rel_number=rels["pgbench_branches"][0])
        bad = [
            pb.GetPageRequest(request_id=pb.RequestID(id=1), read_lsn=pb.ReadLsn(request_lsn=0),
                              rel=rel, block_number=[0]),
            pb.GetPageRequest(request_id=pb.RequestID(id=2), read_lsn=pb.ReadLsn(request_lsn=8),
                              rel=rel, block_number=[0]),
            pb.GetPageRequest(request_id=pb.RequestID(id=3), read_lsn=pb.ReadLsn(
                request_lsn=int(end) + (1 << 30), not_modified_since_lsn=int(end) + (1 << 30)),
                rel=rel, block_number=[0]),
            pb.GetPageRequest(request_id=pb.RequestID(id=4), read_lsn=read_lsn,
                              rel=pb.RelTag(spc_oid=1663, db_oid=db, rel_number=999999),
                              block_number=[0]),
            pb.GetPageRequest(request_id=pb.RequestID(id=5), read_lsn=read_lsn, rel=rel,
                              block_number=[0]),
        ]
        got = list(stub.GetPages(iter(bad), metadata=md, timeout=60))
        assert [r.request_id.id for r in got] == [1, 2, 3, 4, 5]
        assert got[0].status_code == pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST
        assert got[1].status_code == pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST
        assert "first readable LSN" in got[1].reason
        assert got[2].status_code == pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR
        assert "LSN timeout" in got[2].reason
        assert got[3].status_code == pb.GET_PAGE_STATUS_CODE_NOT_FOUND
        assert got[4].status_code == pb.GET_PAGE_STATUS_CODE_OK

        def code(md_: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            try:
                stub.GetRelSize(pb.GetRelSizeRequest(read_lsn=read_lsn, rel=rel), metadata=md_,
                                timeout=30)
            except grpc.RpcError as e:
                return e.code()
            raise AssertionError("accepted")

        assert code(_metadata(tenant, "0" * 32)) == grpc.StatusCode.NOT_FOUND
        assert code(md[:2]) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(_metadata("nonsense", timeline)) == grpc.StatusCode.INVALID_ARGUMENT
    stack.allowed_errors.append(r"rpc failed")

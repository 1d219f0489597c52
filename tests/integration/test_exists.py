"""Fork existence, fork by fork, over gRPC and libpq, against a real primary.

PostgreSQL and Neon answer "does this relation fork exist" from the relation directory.
pagestore's pageread answers GetRelSize(allow_missing=true) with {missing: true} when the
fork is not in the relation directory, for every fork (services/pageread/timeline.py
rel_size), and the gateway's pagestream Exists (tag 0, answer 100 with one byte 0/1;
shared/reference/neon-protocols.md sections 1.4-1.5) asks exactly that.  Nblocks (tag 1)
answers 0 for a missing FSM or VM fork and an error for a missing main (or init) fork.

The schema makes forks differ (autovacuum off, so nothing changes behind the test):

- ``vacuumed``: a table VACUUMed before the attach: main, fsm and vm;
- ``fresh``: a small table never vacuumed: main only (one page: no FSM, no VM);
- ``vacuumed_pkey``: a btree index: main only (indexes have no VM; btree makes its FSM
  only when pages are freed);
- ``logless`` (+ its index): unlogged, VACUUMed: an init fork (the index's holds its
  metapage), and main, fsm and vm forks that are neither WAL-logged nor backed up;
- ``counter``: a sequence: main only;
- ``late`` (+ ``late_idx``) and ``late_logless``: created after the attach, so their forks
  come from the WAL, not from the base backup; ``late`` is VACUUMed (fsm and vm on the
  primary).

The oracle, and where it is the WAL's rather than the primary's files
(docs: PostgreSQL storage/smgr, freespace/README, and basebackup.c):

- a fork pagestore knows is one the base backup copied or one the WAL since names (an
  XLOG_SMGR_CREATE, or any block reference; pageread creates a fork on its first block
  reference, as PostgreSQL's redo does).  The base backup copies every fork file except
  the non-init forks of unlogged relations.  What the base backup copied is read from the
  primary's files just before the attach (the primary is quiet from then until the
  backup); the WAL references from pg_waldump (PostgreSQL's own decoder, not pagestore's);
- the FSM is not WAL-logged (without wal_log_hints or checksums, as here, not even as
  hint images): a FSM made after the attach (``late``'s, by its VACUUM) exists on the
  primary's disk and legitimately nowhere in the WAL, so pagestore, like Neon and like a
  physical standby before its own redo writes one, does not know it.  For the FSM the
  expected answer is therefore the WAL's, and a fork pagestore knows must exist on the
  primary (never the other way round);
- an unlogged relation's main fork is not WAL-logged either (nor copied by the base
  backup): it exists on the primary and is missing here; its init fork is WAL-logged;
- every other fork (main of permanent relations, VM, init) is WAL-logged: the WAL
  oracle must equal the primary's files, existence and size, exactly.

Reads are at the LSN pagestore reports as ingested once it reached the primary's flush
LSN after a CHECKPOINT (request_lsn = not_modified_since = that LSN).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster
from pagestore.proto import page_service_pb2 as pb
from pagestore.proto import page_service_pb2_grpc
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import client_channel, wait_until
from tests.fixtures.waldump import run_pg_waldump
from tests.integration.test_gateway import RawClient, v2_error, v2_rel_request
from tests.integration.test_ingest_service import attach, caught_up, status

BLCKSZ = 8192
FORKS = ("main", "fsm", "vm", "init")  # fork numbers 0..3
SUFFIX = ("", "_fsm", "_vm", "_init")
MAIN, FSM, VM, INIT = range(4)

Rel = tuple[int, int, int]  # spcnode, dbnode, relnode


@dataclass(frozen=True)
class Relation:
    name: str
    rel: Rel
    path: str  # pg_relation_filepath: relative to the data directory
    unlogged: bool


def relations(primary: PgCluster) -> dict[Rel, Relation]:
    """Every relation with storage in the postgres database, shared catalogs included."""
    out = {}
    rows = primary.psql("SELECT c.oid::regclass, pg_relation_filepath(c.oid), c.relpersistence "
                        "FROM pg_class c WHERE pg_relation_filepath(c.oid) IS NOT NULL")
    for row in rows.splitlines():
        name, path, persistence = row.split("|")
        assert persistence in ("p", "u"), row  # no temporary relations here
        parts = path.split("/")
        if parts[0] == "global":
            rel = (1664, 0, int(parts[1]))
        else:
            assert parts[0] == "base", row  # no other tablespaces
            rel = (1663, int(parts[1]), int(parts[2]))
        out[rel] = Relation(name, rel, path, persistence == "u")
    return out


def fork_files(datadir: Path, rels: dict[Rel, Relation]) -> dict[tuple[Rel, int], int]:
    """(relation, fork): blocks, for every fork file the primary has."""
    out = {}
    for rel, r in rels.items():
        for fork, suffix in enumerate(SUFFIX):
            f = datadir / (r.path + suffix)
            if f.exists():
                assert not Path(f"{f}.1").exists(), f  # one segment each, sizes below
                size = f.stat().st_size
                assert size % BLCKSZ == 0, (f, size)
                out[(rel, fork)] = size // BLCKSZ
    return out


def wal_forks(primary: PgCluster, since: Lsn, end: Lsn) -> dict[tuple[Rel, int], int]:
    """(relation, fork): highest block + 1 (0 for a creation), for every fork the WAL in
    [since, end) creates or references, as pg_waldump reads it."""
    run = run_pg_waldump(primary.bin_dir, primary.datadir / "pg_wal", start=str(since),
                         end=str(end))
    out: dict[tuple[Rel, int], int] = {}
    for rec in run.records:
        # Neither a truncation nor a drop: the expected sets below only ever grow.
        assert not (rec.rmgr == "Storage" and rec.identity == "TRUNCATE"), rec.desc
        assert not (rec.rmgr == "Transaction" and "rels:" in rec.desc), rec.desc
        if rec.rmgr == "Storage" and rec.identity == "CREATE":
            parts = rec.desc.split("/")
            relnode, _, suffix = parts[-1].partition("_")
            if parts[0] == "global":
                rel = (1664, 0, int(relnode))
            else:
                rel = (1663, int(parts[1]), int(relnode))
            key = (rel, FORKS.index(suffix or "main"))
            out.setdefault(key, 0)
        for b in rec.blocks:
            if rec.rmgr == "XLOG" and not b.apply_image:
                continue  # an FPI_FOR_HINT without an image to apply: redo skips it
            spc, db, relnode = (int(x) for x in b.rel.split("/"))
            key = ((spc, db, relnode), FORKS.index(b.fork))
            out[key] = max(out.get(key, 0), b.blk + 1)
    return out


PRIMARY_SETTINGS = {"autovacuum": "off", "wal_keep_size": "'1GB'"}


def test_fork_existence_over_grpc_and_libpq(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory(settings=PRIMARY_SETTINGS)
    for sql in [
        "CREATE TABLE vacuumed (id int PRIMARY KEY, v text)",
        "INSERT INTO vacuumed SELECT g, md5(g::text) FROM generate_series(1, 3000) g",
        "VACUUM vacuumed",
        "CREATE TABLE fresh (id int, v text)",
        "INSERT INTO fresh SELECT g, 'row ' || g FROM generate_series(1, 10) g",
        "CREATE UNLOGGED TABLE logless (id int PRIMARY KEY, v text)",
        "INSERT INTO logless SELECT g, md5(g::text) FROM generate_series(1, 500) g",
        "VACUUM logless",  # its VM is not WAL-logged (nor copied by the base backup)
        "CREATE SEQUENCE counter",
        "SELECT nextval('counter')",
        "CHECKPOINT",
    ]:
        primary.psql(sql)
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    datadir = primary.datadir
    # Quiet from here to the base backup: these files are what it copies.
    before = fork_files(datadir, relations(primary))
    since = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    tenant, timeline = attach(stack, primary)
    for sql in [
        "CREATE TABLE late (id int, v text)",
        "INSERT INTO late SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
        "CREATE INDEX late_idx ON late (id)",
        "VACUUM late",
        "CREATE UNLOGGED TABLE late_logless (id int)",
        "INSERT INTO late_logless SELECT generate_series(1, 100)",
        "UPDATE vacuumed SET v = 'changed' WHERE id % 100 = 0",  # clears VM bits
        "INSERT INTO fresh VALUES (11, 'eleven')",
        "SELECT nextval('counter') FROM generate_series(1, 50)",
        "CHECKPOINT",
    ]:
        primary.psql(sql)
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=180, what="caught up")
    lsn = Lsn.parse(status(stack, tenant, timeline)["last_record_lsn"])
    assert lsn >= end

    rels = relations(primary)
    by_name = {r.name: r for r in rels.values()}
    on_disk = fork_files(datadir, rels)
    from_wal = wal_forks(primary, since, lsn)
    # The expected answer for every (relation, fork): what the base backup copied (every
    # fork file but an unlogged relation's main, FSM and VM), extended by the WAL.
    expected: dict[tuple[Rel, int], int] = {}
    for (rel, fork), n in before.items():
        if fork == INIT or not rels[rel].unlogged:
            expected[(rel, fork)] = n
    for key, n in from_wal.items():
        if key[0] in rels:  # (relations of other databases are not asked about)
            expected[key] = max(expected.get(key, 0), n)

    # The oracle against the primary's files: equal wherever PostgreSQL WAL-logs the fork.
    wal_logged_mismatches = []
    for rel, r in sorted(rels.items()):
        for fork in range(4):
            key = (rel, fork)
            ours, theirs = expected.get(key), on_disk.get(key)
            if fork == FSM:
                # Never a fork the primary lacks, nor more blocks than it has.
                assert theirs is not None or ours is None, (r.name, FORKS[fork], ours)
                assert ours is None or ours <= theirs, (r.name, FORKS[fork], ours, theirs)
            elif r.unlogged and fork != INIT:
                assert ours is None, (r.name, FORKS[fork], ours)
            elif ours != theirs:
                wal_logged_mismatches.append(f"{r.name} {FORKS[fork]}: WAL {ours}, primary "
                                             f"{theirs}")
    assert not wal_logged_mismatches, wal_logged_mismatches

    # The schema does make the forks differ as intended, on the primary and in the oracle.
    def forks_of(name: str) -> tuple[set[str], set[str]]:
        rel = by_name[name].rel
        return ({FORKS[f] for f in range(4) if (rel, f) in on_disk},
                {FORKS[f] for f in range(4) if (rel, f) in expected})

    assert forks_of("vacuumed") == ({"main", "fsm", "vm"}, {"main", "fsm", "vm"})
    assert forks_of("fresh") == ({"main"}, {"main"})
    assert forks_of("vacuumed_pkey") == ({"main"}, {"main"})
    assert forks_of("late_idx") == ({"main"}, {"main"})
    assert forks_of("counter") == ({"main"}, {"main"})
    # late's FSM (made by its VACUUM after the attach) is on the primary's disk only.
    assert forks_of("late") == ({"main", "fsm", "vm"}, {"main", "vm"})
    assert forks_of("logless") == ({"main", "fsm", "vm", "init"}, {"init"})
    assert forks_of("logless_pkey") == ({"main", "init"}, {"init"})
    assert forks_of("late_logless") == ({"main", "init"}, {"init"})
    assert from_wal.get((by_name["late"].rel, VM), 0) > 0  # the VM came from the WAL
    assert expected[(by_name["logless_pkey"].rel, INIT)] == 1  # the btree metapage

    keys = [(rel, fork) for rel in sorted(rels) for fork in range(4)]
    assert len(keys) > 1000  # the catalogs too, not only the tables above

    def name(key: tuple[Rel, int]) -> str:
        return f"{rels[key[0]].name} ({'/'.join(map(str, key[0]))}) {FORKS[key[1]]}"

    # ---- gRPC: GetRelSize(allow_missing=true) for every fork.
    port = stack.status()["services"]["pageread"]["port"]
    md = (("neon-tenant-id", tenant), ("neon-timeline-id", timeline), ("neon-shard-id", "0000"))
    read_lsn = pb.ReadLsn(request_lsn=int(lsn), not_modified_since_lsn=int(lsn))
    grpc_wrong = []
    with client_channel(f"127.0.0.1:{port}") as ch:
        stub = page_service_pb2_grpc.PageServiceStub(ch)
        futures = [stub.GetRelSize.future(pb.GetRelSizeRequest(
            read_lsn=read_lsn, rel=pb.RelTag(spc_oid=rel[0], db_oid=rel[1], rel_number=rel[2],
                                             fork_number=fork), allow_missing=True),
            metadata=md, timeout=120) for rel, fork in keys]
        answers = {key: f.result() for key, f in zip(keys, futures, strict=True)}
    for key, resp in answers.items():
        want = expected.get(key)
        got = None if resp.missing else resp.num_blocks
        if got != want or (resp.missing and resp.num_blocks != 0):
            grpc_wrong.append(f"{name(key)}: missing={resp.missing} num_blocks="
                              f"{resp.num_blocks}, expected {want}")
    assert not grpc_wrong, grpc_wrong[:20]

    # ---- libpq pagestream v2: Exists and Nblocks for every fork.
    c = RawClient(stack.status()["services"]["gateway"]["port"])
    try:
        c.start_pagestream(2, tenant, timeline)
        exists = c.pipelined([v2_rel_request(0, int(lsn), (*rel, fork)) for rel, fork in keys])
        nblocks = c.pipelined([v2_rel_request(1, int(lsn), (*rel, fork)) for rel, fork in keys])
    finally:
        c.close()
    libpq_wrong = []
    for key, e, n in zip(keys, exists, nblocks, strict=True):
        want = expected.get(key)
        if e != b"\x64" + (b"\x01" if want is not None else b"\x00"):
            libpq_wrong.append(f"{name(key)}: Exists answered {e[:60]!r}, expected {want}")
        if want is not None or key[1] in (FSM, VM):
            if n != b"\x65" + struct.pack("!I", want or 0):
                libpq_wrong.append(f"{name(key)}: Nblocks answered {n[:60]!r}, expected "
                                   f"{want or 0}")
        elif not (n[0] == 103 and v2_error(n).startswith("Not found: ")):
            libpq_wrong.append(f"{name(key)}: Nblocks of a missing fork answered {n[:60]!r}")
    assert not libpq_wrong, libpq_wrong[:20]

    # The facts that used to be wrong, spelled out: no VM for a btree index nor for a
    # table that never had one, over both interfaces.
    for rel_name in ("vacuumed_pkey", "late_idx", "fresh"):
        key = (by_name[rel_name].rel, VM)
        i = keys.index(key)
        assert key not in on_disk and key not in expected, rel_name
        assert answers[key].missing and answers[key].num_blocks == 0, rel_name
        assert exists[i] == b"\x64\x00", rel_name
        assert nblocks[i] == b"\x65\x00\x00\x00\x00", rel_name
    for rel_name in ("vacuumed", "late"):
        key = (by_name[rel_name].rel, VM)
        i = keys.index(key)
        assert not answers[key].missing and answers[key].num_blocks == on_disk[key] > 0
        assert exists[i] == b"\x64\x01", rel_name

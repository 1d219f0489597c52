"""Ingest without the network: import a pg_basebackup copy, ingest the primary's own WAL
through open/frozen layers into L0 delta layer files, and check the result against the
primary itself (its data directory after a clean shutdown) and against a straight
reference decode of the same WAL."""

from __future__ import annotations

import collections
import re
import shutil
from pathlib import Path

import pytest

from pagestore.catalog import repo, schema
from pagestore.catalog.db import make_engine, make_sessionmaker
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import ForkNumber, RelTag, SlruKind
from pagestore.layers.delta import DeltaLayerReader
from pagestore.layers.layermap import LayerMap
from pagestore.pg.controlfile import ControlFile
from pagestore.pg.walfiles import find_segments, read_wal_records
from pagestore.timeline import TimelineView
from services.ingest.importer import import_datadir
from services.ingest.timeline import IngestSettings, TimelineIngest, load_state
from services.ingest.walingest import WalIngest
from tests.fixtures.postgres import pg_basebackup
from tests.workloads import run_maintenance, run_pgbench

REL_FILE = re.compile(r"^(\d+)(?:_(fsm|vm|init))?$")




def primary_main_forks(datadir: Path) -> dict[RelTag, int]:
    """Main-fork sizes of every logged relation in the primary's data directory."""
    out: dict[RelTag, int] = {}
    dirs = [(1664, 0, datadir / "global")] + [
        (1663, int(p.name), p) for p in (datadir / "base").iterdir() if p.name.isdigit()]
    for spc, db, d in dirs:
        names = {p.name for p in d.iterdir()}
        for name in names:
            m = REL_FILE.match(name)
            if m and m.group(2) is None and f"{name}_init" not in names:
                size = sum(p.stat().st_size for p in d.glob(f"{name}") ) + sum(
                    p.stat().st_size for p in d.glob(f"{name}.*"))
                out[RelTag(spc, db, int(name), ForkNumber.MAIN)] = size // 8192
    return out


@pytest.fixture
def sessions(catalog_url: str):
    engine = make_engine(catalog_url)
    schema.upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_import_and_ingest_match_the_primary(pg_factory, sessions, work_dir: Path) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'1GB'", "autovacuum": "off"})
    primary.psql("CREATE TABLE before_backup AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    backup = work_dir / "backup"
    start = pg_basebackup(primary, backup)
    run_maintenance(primary)
    run_pgbench(primary, scale=1, transactions=400)
    primary.psql("INSERT INTO before_backup SELECT g, 'x' FROM generate_series(1, 5000) g")
    primary.stop()

    tenant, timeline = TenantId.generate(), TimelineId.generate()
    with sessions.begin() as s:
        repo.create_tenant(s, tenant)
        repo.create_timeline(s, tenant, timeline)
    tl_dir = work_dir / "timeline"
    imported = import_datadir(backup, tl_dir, start)
    assert imported.relations > 100 and imported.pages > 100
    with sessions.begin() as s:
        info = imported.layer
        repo.add_layer(s, tenant, timeline, info.desc())
        repo.update_timeline(s, tenant, timeline, disk_consistent_lsn=start,
                             last_record_lsn=start, min_readable_lsn=start)

    tli = TimelineIngest.load(tenant, timeline, tl_dir, sessions,
                              IngestSettings(checkpoint_distance=2 * 1024 * 1024,
                                             checkpoint_timeout=3600))
    segments = find_segments([primary.datadir / "pg_wal"])
    flushed = 0
    for rec in read_wal_records(segments, start):
        tli.ingest(rec)
        if tli.should_freeze():
            layer = tli.freeze()
            assert layer is not None
            tli.flush(layer)
            flushed += 1
    layer = tli.freeze()
    if layer is not None:
        tli.flush(layer)
    final = tli.last_record_lsn
    assert flushed >= 3, "the workload should span several L0 layers"
    with sessions.begin() as s:
        row = repo.get_timeline(s, tenant, timeline)
        layers = repo.list_layers(s, tenant, timeline)
    assert row.disk_consistent_lsn == final

    # The state rebuilt from the layer files equals the state ingest kept in memory.
    layermap = LayerMap(tl_dir, layers)
    rebuilt = load_state(TimelineView(layermap), final)
    live = tli.walingest.state
    assert rebuilt.dbdir == live.dbdir and rebuilt.reldirs == live.reldirs
    assert rebuilt.relsizes == live.relsizes
    assert rebuilt.slru_sizes == live.slru_sizes and rebuilt.twophase == live.twophase
    assert rebuilt.checkpoint == live.checkpoint

    # ... and matches the primary after its clean shutdown.
    ours = {rel: n for rel, n in rebuilt.relsizes.items() if rel.forknum == ForkNumber.MAIN
            and RelTag(rel.spcnode, rel.dbnode, rel.relnode, ForkNumber.INIT) not in rebuilt.relsizes}
    assert ours == primary_main_forks(primary.datadir)
    dbs = {int(p.name) for p in (primary.datadir / "base").iterdir() if p.name.isdigit()}
    assert {db for spc, db in rebuilt.dbdir if spc == 1663} == dbs
    clog = {int(p.name, 16) for p in (primary.datadir / "pg_xact").iterdir()}
    assert rebuilt.slru_dirs[SlruKind.CLOG] == clog
    assert rebuilt.twophase == {int(p.name, 16) for p in (primary.datadir / "pg_twophase").iterdir()}
    control = ControlFile.parse((primary.datadir / "global" / "pg_control").read_bytes())
    assert rebuilt.checkpoint is not None
    assert rebuilt.checkpoint.next_xid == control.checkpoint.next_xid
    assert rebuilt.checkpoint.next_oid == control.checkpoint.next_oid
    assert rebuilt.checkpoint.next_multi == control.checkpoint.next_multi

    # Every (key, lsn) a straight decode of the same WAL gives is stored once, no more.
    stored: collections.Counter[tuple[bytes, int]] = collections.Counter()
    for rec in layers:
        if rec.kind == "delta":
            with DeltaLayerReader(tl_dir / rec.file_name) as r:
                for key, lsn, _will_init, _value in r.iter_all():
                    stored[(key.to_bytes(), int(lsn))] += 1
    assert max(stored.values()) == 1
    ref_dir = work_dir / "reference"
    # The reference compares keys and LSNs only, so FILE_COPY's page copies may be blank.
    from pagestore import values

    reference = WalIngest(import_datadir(backup, ref_dir, start).state,
                          read_page=lambda key, lsn: values.image(b""))
    shutil.rmtree(ref_dir)
    out: list = []
    for rec in read_wal_records(segments, start):
        reference.ingest(rec, out)
    assert set(stored) == {(k, int(lsn)) for k, lsn, _ in out}

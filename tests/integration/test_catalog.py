"""The catalog schema on a real PostgreSQL: migrations, drift check, revision guard."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command

from pagestore.catalog import repo, schema
from pagestore.catalog.db import make_engine, make_sessionmaker
from pagestore.errors import (
    AlreadyExists,
    CatalogRevisionMismatch,
    TenantNotFound,
    TimelineNotFound,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn

TABLES = {"tenants", "timelines", "layers", "lsn_leases", "lsn_history"}


@pytest.fixture
def engine(catalog_url: str) -> Iterator[sa.Engine]:
    e = make_engine(catalog_url)
    yield e
    e.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_check_downgrade(engine: sa.Engine) -> None:
    assert schema.current_revision(engine) is None
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    assert _tables(engine) == TABLES
    with engine.begin() as conn:
        command.check(schema.alembic_config(conn))  # raises if models and migrations differ
    # step down one revision at a time, then back up: every downgrade works
    for rev in reversed(schema.all_revisions()[:-1]):
        schema.downgrade(engine, rev)
        assert schema.current_revision(engine) == rev
    schema.downgrade(engine, "base")
    assert schema.current_revision(engine) is None
    assert _tables(engine) == set()
    schema.upgrade(engine)
    assert _tables(engine) == TABLES


def test_revision_guard(engine: sa.Engine) -> None:
    head = schema.head_revision()
    with pytest.raises(CatalogRevisionMismatch, match=f"not initialized.*needs revision {head}"):
        schema.check_revision(engine)
    older = schema.all_revisions()[-2]
    schema.upgrade(engine, older)
    with pytest.raises(CatalogRevisionMismatch,
                       match=f"at revision {older}; this pagestore needs revision {head}"):
        schema.check_revision(engine)
    schema.upgrade(engine)
    assert schema.check_revision(engine) == head


def test_tenant_and_timeline_rows(engine: sa.Engine) -> None:
    schema.upgrade(engine)
    sessions = make_sessionmaker(engine)
    tid, tlid = TenantId.generate(), TimelineId.generate()
    with sessions.begin() as s:
        repo.create_tenant(s, tid)
        rec = repo.create_timeline(s, tid, tlid, wal_source="host=x")
    assert rec.last_record_lsn == Lsn(0) and rec.state == "created"
    with sessions.begin() as s:
        assert [t.tenant_id for t in repo.list_tenants(s)] == [tid]
        assert [t.timeline_id for t in repo.list_timelines(s, tid)] == [tlid]
        with pytest.raises(AlreadyExists):
            repo.create_tenant(s, tid)
    with sessions.begin() as s, pytest.raises(TimelineNotFound):
        repo.get_timeline(s, tid, TimelineId.generate())
    with sessions.begin() as s, pytest.raises(TenantNotFound):
        repo.create_timeline(s, TenantId.generate(), tlid)
    # pg_lsn columns hold and compare LSNs natively
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE timelines SET last_record_lsn = '1/16B3748'"))
        assert conn.execute(sa.text(
            "SELECT last_record_lsn > '0/FFFFFFFF'::pg_lsn FROM timelines")).scalar() is True
    with sessions.begin() as s:
        assert repo.get_timeline(s, tid, tlid).last_record_lsn == Lsn.parse("1/16B3748")


def test_layer_changes_are_notified(engine: sa.Engine, catalog_url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    schema.upgrade(engine)
    tid, tlid = TenantId.generate(), TimelineId.generate()
    with make_sessionmaker(engine).begin() as s:
        repo.create_tenant(s, tid)
        repo.create_timeline(s, tid, tlid)
    url = make_url(catalog_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username,
                         dbname=url.database, autocommit=True) as listener:
        listener.execute("LISTEN pagestore_layers")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO layers (tenant_id, timeline_id, kind, level, key_start, key_end, "
                "lsn_start, lsn_end, file_name, file_size, checksum) VALUES (:t, :tl, 'delta', 0, "
                "'\\x00'::bytea, '\\xff'::bytea, '0/100', '0/200', 'f', 1, 2)"),
                {"t": str(tid), "tl": str(tlid)})
        notes = list(listener.notifies(timeout=10, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [("pagestore_layers", f"{tid}/{tlid}")]

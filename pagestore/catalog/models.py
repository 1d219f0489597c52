"""Catalog tables as SQLAlchemy 2 models.

The catalog is the source of truth for the layer map (ARCHITECTURE.md, "Catalog").
Ids are stored as their 32-hex text so an operator can read them in psql; LSNs use
PostgreSQL's own ``pg_lsn`` type so they print as X/Y and compare as LSNs.  Every
constraint is named through the metadata naming convention, so migrations can refer to
them.  Changing a model means writing an Alembic revision (docs/catalog.md);
tests/integration/test_catalog.py checks that the two agree.
"""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import base as pg_base
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, UserDefinedType

from pagestore.lsn import Lsn

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HEX32 = "^[0-9a-f]{32}$"


class PgLsnType(UserDefinedType[str]):
    """PostgreSQL's pg_lsn column type."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "pg_lsn"


# Let reflection (alembic's model/migration comparison) recognise pg_lsn columns.
pg_base.ischema_names["pg_lsn"] = PgLsnType


class PgLsn(TypeDecorator[Lsn]):
    """An Lsn stored as pg_lsn; bound as its X/Y text and cast on the server."""

    impl = PgLsnType
    cache_ok = True

    def process_bind_param(self, value: Lsn | int | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else str(Lsn(value))

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Lsn | None:
        return None if value is None else Lsn.parse(str(value))

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.cast(bindvalue, PgLsnType())


def _lsn_column(nullable: bool = False) -> Mapped[Any]:
    if nullable:
        return mapped_column(PgLsn(), nullable=True)
    return mapped_column(PgLsn(), nullable=False, server_default=sa.text("'0/0'::pg_lsn"))


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False,
                                       server_default=sa.text("'active'"))
    config: Mapped[dict[str, Any]] = mapped_column(postgresql.JSONB(), nullable=False,
                                                   server_default=sa.text("'{}'::jsonb"))
    # The attach generation (pagestore.remote.layout): names this node's remote objects.
    generation: Mapped[int] = mapped_column(sa.Integer, nullable=False,
                                            server_default=sa.text("1"))
    created_at: Mapped[datetime.datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())

    __table_args__ = (
        sa.CheckConstraint(f"tenant_id ~ '{HEX32}'", name="tenant_id_hex"),
        sa.CheckConstraint("state IN ('active', 'stopping', 'broken')", name="state"),
    )


TIMELINE_STATES = ("created", "importing", "active", "stopping", "broken")


class Timeline(Base):
    __tablename__ = "timelines"

    tenant_id: Mapped[str] = mapped_column(
        sa.String(32), sa.ForeignKey("tenants.tenant_id", ondelete="CASCADE"),
        primary_key=True)
    timeline_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    ancestor_timeline_id: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    ancestor_lsn: Mapped[Lsn | None] = _lsn_column(nullable=True)
    pg_version: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False,
                                            server_default=sa.text("15"))
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False,
                                       server_default=sa.text("'created'"))
    wal_source: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Why the timeline is in its state (broken: the error), for the operator.
    state_reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # The layer map's version: bumped by every transaction that changes the timeline's
    # layers or moves its disk_consistent_lsn (repo.add_layer, repo.commit_flush).
    layers_version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False,
                                                server_default=sa.text("0"))
    # The first LSN a read may ask for (the end of the imported base backup).
    min_readable_lsn: Mapped[Lsn] = _lsn_column()
    last_record_lsn: Mapped[Lsn] = _lsn_column()
    prev_record_lsn: Mapped[Lsn] = _lsn_column()
    disk_consistent_lsn: Mapped[Lsn] = _lsn_column()
    remote_consistent_lsn: Mapped[Lsn] = _lsn_column()
    gc_cutoff_lsn: Mapped[Lsn] = _lsn_column()
    # Where the PITR window began at the last GC (what pitr_interval alone would keep).
    pitr_cutoff_lsn: Mapped[Lsn] = _lsn_column()
    created_at: Mapped[datetime.datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())
    updated_at: Mapped[datetime.datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())

    __table_args__ = (
        sa.CheckConstraint(f"timeline_id ~ '{HEX32}'", name="timeline_id_hex"),
        sa.CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in TIMELINE_STATES) + ")", name="state"),
        sa.CheckConstraint("(ancestor_timeline_id IS NULL) = (ancestor_lsn IS NULL)",
                           name="ancestor_pair"),
        sa.ForeignKeyConstraint(["tenant_id", "ancestor_timeline_id"],
                                ["timelines.tenant_id", "timelines.timeline_id"]),
    )


class Layer(Base):
    __tablename__ = "layers"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    timeline_id: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    kind: Mapped[str] = mapped_column(sa.String(8), nullable=False)
    level: Mapped[int] = mapped_column(sa.SmallInteger, nullable=False)
    key_start: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    key_end: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    lsn_start: Mapped[Lsn] = mapped_column(PgLsn(), nullable=False)
    lsn_end: Mapped[Lsn] = mapped_column(PgLsn(), nullable=False)
    file_name: Mapped[str] = mapped_column(sa.Text, nullable=False)
    file_size: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    checksum: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    local_state: Mapped[str] = mapped_column(sa.String(16), nullable=False,
                                             server_default=sa.text("'present'"))
    remote_state: Mapped[str] = mapped_column(sa.String(16), nullable=False,
                                              server_default=sa.text("'none'"))
    # The generation its remote copy is named with; 0 while not uploaded.
    generation: Mapped[int] = mapped_column(sa.Integer, nullable=False,
                                            server_default=sa.text("0"))
    created_at: Mapped[datetime.datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())

    __table_args__ = (
        sa.ForeignKeyConstraint(["tenant_id", "timeline_id"],
                                ["timelines.tenant_id", "timelines.timeline_id"],
                                ondelete="CASCADE"),
        sa.UniqueConstraint("tenant_id", "timeline_id", "file_name"),
        sa.CheckConstraint("kind IN ('image', 'delta')", name="kind"),
        sa.CheckConstraint("lsn_start <= lsn_end", name="lsn_range"),
        sa.CheckConstraint("key_start < key_end", name="key_range"),
        sa.CheckConstraint("local_state IN ('present', 'evicted', 'deleted')",
                           name="local_state"),
        sa.CheckConstraint("remote_state IN ('none', 'uploading', 'uploaded', 'deleted')",
                           name="remote_state"),
        sa.Index("ix_layers_timeline_lsn_end", "tenant_id", "timeline_id", "lsn_end"),
    )


class LsnLease(Base):
    __tablename__ = "lsn_leases"

    tenant_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    timeline_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    lsn: Mapped[Lsn] = mapped_column(PgLsn(), primary_key=True)
    valid_until: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True),
                                                           nullable=False)

    __table_args__ = (
        sa.ForeignKeyConstraint(["tenant_id", "timeline_id"],
                                ["timelines.tenant_id", "timelines.timeline_id"],
                                ondelete="CASCADE"),
    )


class LsnHistory(Base):
    """When each disk_consistent_lsn was reached (one row per flush): maps a wall-clock
    time to an LSN for the PITR window (every WAL record at or below ``lsn`` was written
    before ``recorded_at``).  GC prunes rows older than the window."""

    __tablename__ = "lsn_history"

    tenant_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    timeline_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    lsn: Mapped[Lsn] = mapped_column(PgLsn(), primary_key=True)
    recorded_at: Mapped[datetime.datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())

    __table_args__ = (
        sa.ForeignKeyConstraint(["tenant_id", "timeline_id"],
                                ["timelines.tenant_id", "timelines.timeline_id"],
                                ondelete="CASCADE"),
        sa.Index("ix_lsn_history_time", "tenant_id", "timeline_id", "recorded_at"),
    )

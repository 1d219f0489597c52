"""tenants and timelines

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pagestore.catalog.models import PgLsnType

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ZERO_LSN = sa.text("'0/0'::pg_lsn")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), server_default=sa.text("'active'"),
                  nullable=False),
        sa.Column("config", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("state IN ('active', 'stopping', 'broken')",
                           name=op.f("ck_tenants_state")),
        sa.CheckConstraint("tenant_id ~ '^[0-9a-f]{32}$'", name=op.f("ck_tenants_tenant_id_hex")),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "timelines",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("timeline_id", sa.String(length=32), nullable=False),
        sa.Column("ancestor_timeline_id", sa.String(length=32), nullable=True),
        sa.Column("ancestor_lsn", PgLsnType(), nullable=True),
        sa.Column("pg_version", sa.SmallInteger(), server_default=sa.text("15"), nullable=False),
        sa.Column("state", sa.String(length=16), server_default=sa.text("'created'"),
                  nullable=False),
        sa.Column("wal_source", sa.Text(), nullable=True),
        sa.Column("min_readable_lsn", PgLsnType(), server_default=ZERO_LSN, nullable=False),
        sa.Column("last_record_lsn", PgLsnType(), server_default=ZERO_LSN, nullable=False),
        sa.Column("prev_record_lsn", PgLsnType(), server_default=ZERO_LSN, nullable=False),
        sa.Column("disk_consistent_lsn", PgLsnType(), server_default=ZERO_LSN, nullable=False),
        sa.Column("remote_consistent_lsn", PgLsnType(), server_default=ZERO_LSN,
                  nullable=False),
        sa.Column("gc_cutoff_lsn", PgLsnType(), server_default=ZERO_LSN, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint(
            "state IN ('created', 'importing', 'active', 'stopping', 'broken')",
            name=op.f("ck_timelines_state")),
        sa.CheckConstraint("timeline_id ~ '^[0-9a-f]{32}$'",
                           name=op.f("ck_timelines_timeline_id_hex")),
        sa.CheckConstraint("(ancestor_timeline_id IS NULL) = (ancestor_lsn IS NULL)",
                           name=op.f("ck_timelines_ancestor_pair")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "ancestor_timeline_id"], ["timelines.tenant_id", "timelines.timeline_id"],
            name=op.f("fk_timelines_tenant_id_ancestor_timeline_id_timelines")),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.tenant_id"],
                                name=op.f("fk_timelines_tenant_id_tenants"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "timeline_id", name=op.f("pk_timelines")),
    )


def downgrade() -> None:
    op.drop_table("timelines")
    op.drop_table("tenants")

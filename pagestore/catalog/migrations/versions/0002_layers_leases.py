"""layers and LSN leases, with a change notification for layer-map caches

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Every insert, update or delete of a layer row sends NOTIFY on channel
``pagestore_layers`` with payload ``<tenant_id>/<timeline_id>``, so page readers can
invalidate their cached layer map (ARCHITECTURE.md, "Data flow").
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pagestore.catalog.models import PgLsnType

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_FUNCTION = """
CREATE FUNCTION pagestore_notify_layers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    PERFORM pg_notify('pagestore_layers', r.tenant_id || '/' || r.timeline_id);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "layers",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("timeline_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("key_start", sa.LargeBinary(), nullable=False),
        sa.Column("key_end", sa.LargeBinary(), nullable=False),
        sa.Column("lsn_start", PgLsnType(), nullable=False),
        sa.Column("lsn_end", PgLsnType(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.BigInteger(), nullable=False),
        sa.Column("local_state", sa.String(length=16), server_default=sa.text("'present'"),
                  nullable=False),
        sa.Column("remote_state", sa.String(length=16), server_default=sa.text("'none'"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("kind IN ('image', 'delta')", name=op.f("ck_layers_kind")),
        sa.CheckConstraint("local_state IN ('present', 'evicted', 'deleted')",
                           name=op.f("ck_layers_local_state")),
        sa.CheckConstraint("remote_state IN ('none', 'uploading', 'uploaded', 'deleted')",
                           name=op.f("ck_layers_remote_state")),
        sa.CheckConstraint("key_start < key_end", name=op.f("ck_layers_key_range")),
        sa.CheckConstraint("lsn_start <= lsn_end", name=op.f("ck_layers_lsn_range")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "timeline_id"], ["timelines.tenant_id", "timelines.timeline_id"],
            name=op.f("fk_layers_tenant_id_timeline_id_timelines"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_layers")),
        sa.UniqueConstraint("tenant_id", "timeline_id", "file_name",
                            name=op.f("uq_layers_tenant_id_timeline_id_file_name")),
    )
    op.create_index("ix_layers_timeline_lsn_end", "layers",
                    ["tenant_id", "timeline_id", "lsn_end"], unique=False)
    op.create_table(
        "lsn_leases",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("timeline_id", sa.String(length=32), nullable=False),
        sa.Column("lsn", PgLsnType(), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "timeline_id"], ["timelines.tenant_id", "timelines.timeline_id"],
            name=op.f("fk_lsn_leases_tenant_id_timeline_id_timelines"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "timeline_id", "lsn", name=op.f("pk_lsn_leases")),
    )
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER layers_notify AFTER INSERT OR UPDATE OR DELETE ON layers "
        "FOR EACH ROW EXECUTE FUNCTION pagestore_notify_layers()")


def downgrade() -> None:
    op.execute("DROP TRIGGER layers_notify ON layers")
    op.execute("DROP FUNCTION pagestore_notify_layers()")
    op.drop_table("lsn_leases")
    op.drop_index("ix_layers_timeline_lsn_end", table_name="layers")
    op.drop_table("layers")

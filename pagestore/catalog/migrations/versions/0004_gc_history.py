"""GC: when each LSN was reached, and the PITR cutoff

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

``lsn_history`` records, at each flush, the disk_consistent_lsn reached and the time:
GC turns ``now - pitr_interval`` into an LSN with it (the newest LSN reached before that
time: every record at or below it was written before the window began).
``timelines.pitr_cutoff_lsn`` is the LSN the PITR window began at when GC last ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pagestore.catalog.models import PgLsnType

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("timelines", sa.Column("pitr_cutoff_lsn", PgLsnType(),
                                         server_default=sa.text("'0/0'::pg_lsn"),
                                         nullable=False))
    op.create_table(
        "lsn_history",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("timeline_id", sa.String(length=32), nullable=False),
        sa.Column("lsn", PgLsnType(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["tenant_id", "timeline_id"],
                                ["timelines.tenant_id", "timelines.timeline_id"],
                                name=op.f("fk_lsn_history_tenant_id_timeline_id_timelines"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id", "timeline_id", "lsn", name=op.f("pk_lsn_history")),
    )
    op.create_index("ix_lsn_history_time", "lsn_history",
                    ["tenant_id", "timeline_id", "recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_lsn_history_time", table_name="lsn_history")
    op.drop_table("lsn_history")
    op.drop_column("timelines", "pitr_cutoff_lsn")

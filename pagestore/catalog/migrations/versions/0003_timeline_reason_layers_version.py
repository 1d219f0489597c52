"""timelines: the reason for their state, and a layer-map version

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

``state_reason`` says why a timeline is in its state (a broken timeline: the error that
broke it).  ``layers_version`` is bumped in every transaction that changes the
timeline's layers or its disk_consistent_lsn; a page reader applies a reloaded layer map only if its version is
newer than the one it holds, so an older reload can never replace a newer one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("timelines", sa.Column("state_reason", sa.Text(), nullable=True))
    op.add_column("timelines", sa.Column("layers_version", sa.BigInteger(),
                                         server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    op.drop_column("timelines", "layers_version")
    op.drop_column("timelines", "state_reason")

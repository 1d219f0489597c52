"""Remote storage: tenant generations, and the generation of each uploaded layer

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

``tenants.generation`` is the tenant's current attach generation (pagestore.remote.layout):
a new tenant starts at 1, every attach from remote storage takes one above any found in
the bucket.  ``layers.generation`` is the generation a layer's remote copy is named with;
0 while it is not uploaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("generation", sa.Integer(),
                                       server_default=sa.text("1"), nullable=False))
    op.add_column("layers", sa.Column("generation", sa.Integer(),
                                      server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    op.drop_column("layers", "generation")
    op.drop_column("tenants", "generation")

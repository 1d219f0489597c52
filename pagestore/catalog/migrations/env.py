"""Alembic environment for the pagestore catalog.

Runs online only, on the connection that pagestore.catalog.schema hands over in
``config.attributes["connection"]`` (or, for the alembic command line, on
``sqlalchemy.url``).  Compares types and server defaults, so `alembic check` and
tests/integration/test_catalog.py catch any drift between models and migrations.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from pagestore.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata,
                          compare_type=True, compare_server_default=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata,
                          compare_type=True, compare_server_default=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the pagestore catalog migrations run online only")
run_migrations_online()

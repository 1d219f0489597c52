"""Catalog schema revisions: upgrade, downgrade, and the check every service makes.

Services refuse to start against a catalog at another revision than the one their code
was written for (``check_revision``), and name both revisions; ``pagestore catalog
upgrade`` (``upgrade``) moves it.  Alembic runs on a connection we hand it, inside one
transaction, so a failed migration leaves the catalog as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pagestore.errors import CatalogRevisionMismatch, Unavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the catalog has no migrations"
    return head


def all_revisions() -> list[str]:
    """Revision ids from the first to head."""
    script = ScriptDirectory.from_config(alembic_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    before = current_revision(engine)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    log.info("catalog upgraded from=%s to=%s", before or "base", current_revision(engine))


def downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def check_revision(engine: sa.Engine) -> str:
    """Raise CatalogRevisionMismatch unless the catalog is at this code's head."""
    needed = head_revision()
    try:
        current = current_revision(engine)
    except sa.exc.OperationalError as e:
        raise Unavailable(f"cannot reach the catalog at {engine.url!r}: {e.orig}") from e
    if current != needed:
        have = "not initialized (no revision)" if current is None else f"at revision {current}"
        raise CatalogRevisionMismatch(
            f"catalog is {have}; this pagestore needs revision {needed}: "
            "run `pagestore catalog upgrade`")
    return current

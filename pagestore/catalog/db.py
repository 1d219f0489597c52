"""Engines and sessions for the catalog (sync SQLAlchemy over psycopg 3).

Services on asyncio call these through ``asyncio.to_thread``; the loop never blocks.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> sa.Engine:
    # hide_parameters: statement parameters never reach a log (a WAL source's conninfo
    # holds its password), whatever the log level.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                            hide_parameters=True)


def make_sessionmaker(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)

"""The database engine, sessions, and the `SessionDep` dependency."""

from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from backend.settings import get_settings

POOL_SIZE, POOL_OVERFLOW = 10, 20
# API requests let through at once (backend/bulkhead.py): fewer than the pool's connections.
MAX_CONCURRENT_REQUESTS = POOL_SIZE + POOL_OVERFLOW - 10


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # note: WAL lets the API read while the worker writes; foreign keys are off by default.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


def consistent_reads(session: Session) -> Session:
    """Make every query of `session`'s transaction see one snapshot (a row and its children agree).

    note: Postgres's default READ COMMITTED lets a row's lazily loaded children be read after a
    concurrent delete committed, so a job could be seen without its photos. SQLite (the embedded
    default) has no such level to ask for; its single-user set-up makes the race harmless there.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    return session


async def get_db() -> AsyncIterator[Session]:
    """A session for one request (used by the sync routes in their worker threads).

    note: async on purpose. FastAPI runs a sync dependency's clean-up in the thread pool, so under
    load every thread could sit waiting for a pooled connection that only such a clean-up would
    give back: a deadlock. Closing here, on the event loop, always gives the connection back.
    """
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]

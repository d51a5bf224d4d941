"""The test world shared by every suite: a fresh Postgres database, Redis db 15, a temporary DATA_DIR.

Tests talk to real services. When Postgres or Redis cannot be reached, the tests that need them
are skipped with the reason, or fail when CI=true (a CI run must never pass by skipping).
"""

import io
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import psycopg
import pytest
import redis
from alembic.config import Config
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from alembic import command
from backend import queue
from backend.auth import create_user
from backend.db import get_engine, get_sessionmaker
from backend.models import Base, User
from backend.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
# The server the test databases are created on (any database there that root may connect to).
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# ── reachability ─────────────────────────────────────────────────────────────────────────────


@cache
def _unreachable(service: str) -> str | None:
    """Why `service` ("postgres" or "redis") cannot be used, or None when it answers."""
    try:
        if service == "postgres":
            psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
        else:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"{service} is unreachable ({exc.__class__.__name__}: {' '.join(str(exc).split())})"
    return None


def require(service: str) -> None:
    """Skip the calling test when `service` is down; fail it instead when CI=true."""
    reason = _unreachable(service)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true needs it")
    pytest.skip(reason)


# ── the isolated world ───────────────────────────────────────────────────────────────────────


def clear_caches() -> None:
    """Forget settings, engine and Celery client, so the next use reads the environment again."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (get_settings, get_engine, get_sessionmaker, queue.client):
        cached.cache_clear()


@contextmanager
def _new_database() -> Iterator[str]:
    """A new, empty Postgres database (its SQLAlchemy URL), dropped afterwards."""
    name = f"dbs_test_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alembic_config(url: str) -> Config:
    """Alembic's configuration from alembic.ini, aimed at `url`, leaving logging to pytest."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session", autouse=True)
def _isolated_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every setting at throwaway places before any test reads them; migrate the database."""
    with pytest.MonkeyPatch.context() as env, _migrated_database() as database:
        env.setenv("DATA_DIR", str(tmp_path_factory.mktemp("data")))
        env.setenv("BROKER_URL", REDIS_URL)
        env.setenv("DEMO_MODE", "true")
        env.setenv("HF_HUB_OFFLINE", "1")
        # note: the suite's photos are plain squares, often one or three alike; tests of the photo checks ask for 3
        env.setenv("MIN_USABLE_PHOTOS", "0")
        if database:
            env.setenv("DATABASE_URL", database)
        clear_caches()
        yield
        clear_caches()


@contextmanager
def _migrated_database() -> Iterator[str | None]:
    """The session's database, at `alembic upgrade head`; None when Postgres is down."""
    if _unreachable("postgres"):
        yield None
        return
    with _new_database() as url:
        command.upgrade(_alembic_config(url), "head")
        yield url


# ── fixtures ─────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def database_url() -> str:
    """The SQLAlchemy URL of the session's migrated Postgres database (DATABASE_URL)."""
    require("postgres")
    return get_settings().database_url


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The session's DATA_DIR (a temporary folder)."""
    return get_settings().data_dir


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A Postgres database of the test's own, empty (not migrated), dropped afterwards."""
    require("postgres")
    with _new_database() as url:
        yield url


@pytest.fixture
def alembic_config() -> Callable[[str], Config]:
    """Makes alembic.ini's configuration for a URL: `command.upgrade(alembic_config(url), "head")`."""
    return _alembic_config


@pytest.fixture
def clean_db(database_url: str, data_dir: Path) -> None:
    """Empty every table and remove every job's files, so the test starts from nothing."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_engine().begin() as connection:
        # note: fail fast instead of hanging if a leaked transaction still holds a table.
        connection.execute(text("SET LOCAL lock_timeout = '5s'"))
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    shutil.rmtree(data_dir / "jobs", ignore_errors=True)


@pytest.fixture
def db(clean_db: None) -> Iterator[Session]:
    """A session on the (emptied) test database."""
    with get_sessionmaker()() as session:
        yield session


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The session's broker (BROKER_URL): Redis db 15."""
    require("redis")
    return REDIS_URL


def waiting_messages(broker: redis.Redis) -> int:
    """Wake-up calls waiting in Redis in any of the GPU queues (backend/routing.py)."""
    from backend import routing

    return sum(broker.llen(name) for name in routing.all_queues())


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session's Redis db, flushed before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def client() -> Iterator[TestClient]:
    """An HTTP client for the app, in process."""
    # note: imported here, not at the top: conftest loads before pytest captures logging, and
    # create_app's logging.basicConfig would then add a second stderr handler.
    from backend.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def user_factory(db: Session) -> Callable[..., tuple[User, str]]:
    """Makes users: `user_factory("bob")` returns the new user and their API token."""

    def make(name: str | None = None) -> tuple[User, str]:
        return create_user(db, name or f"user-{secrets.token_hex(3)}")

    return make


@pytest.fixture
def auth_headers(user_factory) -> dict[str, str]:
    """The Authorization header of a fresh user."""
    _user, token = user_factory("alice")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def photo_bytes() -> Callable[..., bytes]:
    """Makes image files: `photo_bytes("JPEG", size=(96, 64), color="red")`."""

    def make(image_format: str = "PNG", size: tuple[int, int] = (96, 96), color: str = "steelblue") -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, color).save(buffer, format=image_format)
        return buffer.getvalue()

    return make

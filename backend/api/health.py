"""Liveness and readiness probes for load balancers and orchestrators (no token needed)."""

import logging
import os
import shutil
import tempfile
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend import queue
from backend.db import get_engine
from backend.settings import get_settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz() -> JSONResponse:
    """200 when the database and the broker answer and the file store takes files; 503 naming what does not."""
    checks = {
        "database": _check("database", _ping_database),
        "broker": _check("broker", _ping_broker),
        "file_store": _check("file store", _probe_file_store),
    }
    ready = all(state == "ok" for state in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _check(name: str, ping: Callable[[], None]) -> str:
    try:
        ping()
    except Exception as exc:
        log.warning("readiness: the %s is unavailable: %s", name, exc)
        return "unavailable"
    return "ok"


def _ping_database() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def _ping_broker() -> None:
    with queue.client().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)


def _probe_file_store() -> None:
    """DATA_DIR takes a real file (written, synced to disk, deleted) and has READY_MIN_FREE_BYTES free."""
    settings = get_settings()
    folder = settings.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".readyz-") as probe:
        probe.write(b"ready")
        probe.flush()
        # note: a full disk may accept the write into the page cache and refuse it only here
        os.fsync(probe.fileno())
    free = shutil.disk_usage(folder).free
    if free < settings.ready_min_free_bytes:
        raise OSError(f"{free} bytes free in {folder}, under READY_MIN_FREE_BYTES ({settings.ready_min_free_bytes})")

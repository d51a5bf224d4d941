"""Liveness and readiness probes for load balancers and orchestrators (no token needed)."""

import logging
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend import queue
from backend.db import get_engine

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz() -> JSONResponse:
    """200 when the database and the broker answer; 503 naming the one that does not."""
    checks = {"database": _check("database", _ping_database), "broker": _check("broker", _ping_broker)}
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

"""Leased work: how workers hold jobs and generations, written once for both.

A worker claims a row with one conditional UPDATE that hands it a lease token: the row must be
queued, or running with a stale heartbeat, and under the attempt limit, so two deliveries of the
same message cannot both win. Every later write of that worker is fenced by the token and
heartbeats the row, so a worker that lost it (deleted, ended, or claimed again after its heartbeat
went stale) changes nothing. The reaper ends running rows no worker will finish and sends another
wake-up call for rows whose last one may be lost; each of its steps is one conditional UPDATE, so
reapers in several workers may run at once.

What differs (a job's phase and cancel flag, how each kind ends) stays in backend/jobs.py and
backend/generations.py.
"""

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Row, func, or_, update
from sqlalchemy.orm import Session

from backend.models import JobStatus, LeasedWork, utcnow
from backend.settings import get_settings

# note: generations spell the two statuses the protocol moves between as jobs do
QUEUED, RUNNING = JobStatus.queued, JobStatus.running


@dataclass(frozen=True)
class Lease:
    """A worker's hold on a job or a generation: valid while its row still carries `token`."""

    model: type[LeasedWork]
    id: uuid.UUID
    token: str
    attempt: int

    def __str__(self) -> str:
        """What the logs call the work: "job <id>", "generation <id>"."""
        return f"{self.model.__name__.lower()} {self.id}"


class LeaseLost(Exception):
    """The work was deleted, ended, or claimed by another worker: stop working on it."""


class Ending(NamedTuple):
    """How the reaper ends running work that meets `condition`: in `status`, with an error for its owner."""

    condition: ColumnElement[bool]
    status: str
    error_code: str | None = None
    error_message: str | None = None


def stale_before(now: datetime) -> datetime:
    """A heartbeat older than this is stale: its worker is presumed dead."""
    return now - timedelta(seconds=get_settings().heartbeat_stale_seconds)


def stale(model: type[LeasedWork], now: datetime) -> ColumnElement[bool]:
    """Running work with a stale heartbeat."""
    return (model.status == RUNNING) & (model.heartbeat_at < stale_before(now))


def given_up(model: type[LeasedWork], now: datetime) -> ColumnElement[bool]:
    """Stale work that used up its attempts: no claim takes it again."""
    return stale(model, now) & (model.attempts >= get_settings().max_attempts)


def claim(
    session: Session, model: type[LeasedWork], work_id: uuid.UUID, *conditions: ColumnElement[bool], **values: Any
) -> Lease | None:
    """Take the work if it is free (queued, or stale, under the attempt limit) and meets `conditions`, setting
    `values` too; None if it is not."""
    now = utcnow()
    token = secrets.token_hex(16)
    attempt = session.scalar(
        update(model)
        .where(
            model.id == work_id,
            model.attempts < get_settings().max_attempts,
            or_(model.status == QUEUED, stale(model, now)),
            *conditions,
        )
        .values(
            status=RUNNING,
            lease_token=token,
            attempts=model.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(model.started_at, now),
            **values,
        )
        .returning(model.attempts)
    )
    session.commit()
    if attempt is None:
        return None
    return Lease(model=model, id=work_id, token=token, attempt=attempt)


def fenced_update(session: Session, lease: Lease, *returning: ColumnElement, **values: Any) -> Row:
    """Apply `values` and heartbeat if the lease still holds (uncommitted); returns the row's `returning` columns.

    Else rolls back and raises LeaseLost.
    """
    model = lease.model
    row = session.execute(
        update(model)
        .where(model.id == lease.id, model.lease_token == lease.token, model.status == RUNNING)
        .values(heartbeat_at=utcnow(), **values)
        .returning(model.id, *returning)
    ).first()
    if row is None:
        session.rollback()
        raise LeaseLost(f"{lease} is no longer held by this worker")
    return row


def heartbeat(session: Session, lease: Lease) -> None:
    """Prove the worker is alive."""
    fenced_update(session, lease)
    session.commit()


def _ended(status: str, error_code: str | None = None, error_message: str | None = None) -> dict[str, Any]:
    """The values that end work: its status and error, its lease released, its finish time."""
    return {
        "status": status,
        "error_code": error_code,
        "error_message": error_message,
        "lease_token": None,
        "finished_at": utcnow(),
    }


def finish(
    session: Session,
    lease: Lease,
    status: str,
    error_code: str | None = None,
    error_message: str | None = None,
    **values: Any,
) -> None:
    """End the work in `status` and release the lease, setting `values` too (fenced, uncommitted)."""
    fenced_update(session, lease, **_ended(status, error_code, error_message), **values)


def end_abandoned(
    session: Session, model: type[LeasedWork], endings: list[Ending], *returning: ColumnElement, **values: Any
) -> list[Row]:
    """End running work no worker will finish, one UPDATE per ending in order, setting `values` too (uncommitted).

    Returns the id and the `returning` columns of every row ended.
    """
    rows = []
    for ending in endings:
        rows += session.execute(
            update(model)
            .where(model.status == RUNNING, ending.condition)
            .values(**_ended(ending.status, ending.error_code, ending.error_message), **values)
            .returning(model.id, *returning)
            .execution_options(synchronize_session=False)
        ).all()
    return rows


def to_wake(session: Session, model: type[LeasedWork], *conditions: ColumnElement[bool]) -> list[uuid.UUID]:
    """Work that needs another wake-up call and meets `conditions`, each marked as sent now; returns the ids.

    Queued work whose last call is older than `requeue_queued_after_seconds` (the message may be
    lost), and stale work with attempts left (the claim takes it over): at once when no call was sent
    since its worker was last heard from, so a killed worker's job resumes within a stale period and a
    sweep, then once per stale period. A second message for the same work is harmless: the claim lets
    one through.
    """
    settings = get_settings()
    now = utcnow()
    last_sent = func.coalesce(model.enqueued_at, model.created_at)
    queued_before = now - timedelta(seconds=settings.requeue_queued_after_seconds)
    ids = session.scalars(
        update(model)
        .where(
            *conditions,
            or_(
                (model.status == QUEUED) & (last_sent < queued_before),
                stale(model, now)
                & (model.attempts < settings.max_attempts)
                & or_(last_sent < model.heartbeat_at, last_sent < stale_before(now)),
            ),
        )
        .values(enqueued_at=now)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return list(ids)

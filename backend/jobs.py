"""The job service: the only code that changes a job's state.

Users create, read, cancel and delete their own jobs. Workers claim a job with one conditional
UPDATE that hands them a lease token; every later write of theirs is fenced by that token, so a
worker that lost its job (deleted, or reclaimed after its heartbeat went stale) changes nothing.
"""

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from backend import storage
from backend.errors import NotFound
from backend.images import IngestedPhoto
from backend.models import TERMINAL_STATUSES, Artifact, Job, JobStatus, Photo, User, utcnow
from backend.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """A worker's hold on a job: valid while the job row still carries `token`."""

    job_id: uuid.UUID
    token: str
    attempt: int


class LeaseLost(Exception):
    """The job was deleted, finished, or claimed by another worker: stop working on it."""


# ── the owner's side ─────────────────────────────────────────────────────────────────────────


def create_job(
    session: Session,
    owner: User,
    settings: dict,
    photos: list[IngestedPhoto],
    class_photos: list[IngestedPhoto] = (),
) -> Job:
    """Store the photos under generated names and insert the job, all or nothing."""
    job = Job(
        id=uuid.uuid4(),
        owner_id=owner.id,
        settings=settings,
        status=JobStatus.queued,
        total_steps=settings["max_train_steps"],
    )
    folder = storage.job_dir(job.id)
    try:
        for kind, batch in (("instance", photos), ("class", class_photos)):
            for position, photo in enumerate(batch):
                path = folder / f"{kind}-photos" / f"{position:04d}{photo.extension}"
                storage.write_atomic(path, photo.data)
                job.photos.append(
                    Photo(
                        kind=kind,
                        position=position,
                        path=storage.relative(path),
                        width=photo.width,
                        height=photo.height,
                        sha256=photo.sha256,
                    )
                )
        session.add(job)
        session.commit()
    except BaseException:
        session.rollback()
        storage.remove_job_files(job.id)
        raise
    log.info("job %s created by %s with %d photos", job.id, owner.name, len(photos))
    return job


def list_jobs(session: Session, owner: User, limit: int, offset: int) -> tuple[list[Job], int]:
    total = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner.id))
    jobs = session.scalars(
        select(Job)
        .where(Job.owner_id == owner.id)
        .options(selectinload(Job.artifacts), selectinload(Job.photos))
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(jobs), total or 0


def get_job(session: Session, owner: User, job_id: uuid.UUID) -> Job:
    """The owner's job; another user's job is exactly as missing as one that never existed."""
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id, Job.owner_id == owner.id)
        .options(selectinload(Job.artifacts), selectinload(Job.photos))
    )
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def request_cancel(session: Session, owner: User, job_id: uuid.UUID) -> Job:
    """Cancel a job. Idempotent: a finished job is left as it is.

    A queued job is cancelled at once and never starts; a running one gets a flag that its
    training loop checks every step.
    """
    job = get_job(session, owner, job_id)
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=now, phase=None)
    )
    session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.running).values(cancel_requested=True)
    )
    session.commit()
    session.refresh(job)
    return job


def delete_job(session: Session, owner: User, job_id: uuid.UUID) -> None:
    """Remove the job and every file it owns; a worker still on it loses its lease and stops."""
    job = get_job(session, owner, job_id)
    session.delete(job)
    session.commit()
    storage.remove_job_files(job_id)
    log.info("job %s deleted", job_id)


# ── the worker's side ────────────────────────────────────────────────────────────────────────


def claim_job(session: Session, job_id: uuid.UUID) -> Lease | None:
    """Take the job if it is free: queued, or running with a stale heartbeat, under the attempt limit.

    One conditional UPDATE decides, so two deliveries of the same message cannot both win.
    """
    settings = get_settings()
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_seconds)
    token = secrets.token_hex(16)
    attempt = session.scalar(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            Job.attempts < settings.max_attempts,
            or_(
                Job.status == JobStatus.queued,
                (Job.status == JobStatus.running) & (Job.heartbeat_at < stale_before),
            ),
        )
        .values(
            status=JobStatus.running,
            phase="preparing",
            lease_token=token,
            attempts=Job.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
        )
        .returning(Job.attempts)
    )
    session.commit()
    if attempt is None:
        return None
    return Lease(job_id=job_id, token=token, attempt=attempt)


def _fenced_update(session: Session, lease: Lease, **values) -> bool:
    """Apply `values` if the lease still holds (uncommitted); returns the job's cancel flag."""
    cancel_requested = session.scalar(
        update(Job)
        .where(Job.id == lease.job_id, Job.lease_token == lease.token, Job.status == JobStatus.running)
        .values(heartbeat_at=utcnow(), **values)
        .returning(Job.cancel_requested)
    )
    if cancel_requested is None:
        session.rollback()
        raise LeaseLost(f"job {lease.job_id} is no longer held by this worker")
    return cancel_requested


def record_progress(
    session: Session,
    lease: Lease,
    *,
    phase: str,
    step: int,
    total_steps: int,
    loss: float | None,
    eta_seconds: float | None,
) -> bool:
    """Write progress and heartbeat; returns whether the owner asked to cancel."""
    cancel_requested = _fenced_update(
        session, lease, phase=phase, step=step, total_steps=total_steps, loss=loss, eta_seconds=eta_seconds
    )
    session.commit()
    return cancel_requested


def heartbeat(session: Session, lease: Lease) -> bool:
    """Prove the worker is alive; returns whether the owner asked to cancel."""
    cancel_requested = _fenced_update(session, lease)
    session.commit()
    return cancel_requested


def finish_job(
    session: Session,
    lease: Lease,
    status: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    artifacts: list[Artifact] = (),
) -> None:
    """End the job in a terminal state, with the files it made, and release the lease.

    The artifacts (each file written atomically before this is called) and the status change
    commit together, so a job never succeeds without its outputs or shows outputs twice.
    """
    assert status in TERMINAL_STATUSES
    _fenced_update(
        session,
        lease,
        status=status,
        phase=None,
        eta_seconds=None,
        error_code=error_code,
        error_message=error_message,
        lease_token=None,
        finished_at=utcnow(),
    )
    # note: added after the fenced update, so a deleted job raises LeaseLost, not a foreign-key error.
    for artifact in artifacts:
        artifact.job_id = lease.job_id
    session.add_all(artifacts)
    session.commit()
    log.info("job %s %s%s", lease.job_id, status, f" ({error_code}: {error_message})" if error_code else "")

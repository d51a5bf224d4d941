"""The generation service: the only code that changes a generation's state.

A generation renders new images from a finished job's weights. Owners create and read their own;
a worker claims one with one conditional UPDATE that hands it a lease token, heartbeats while it
renders, and finishes it, every write fenced by the token (as jobs are, see backend/jobs.py).
"""

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from backend import jobs, storage
from backend.errors import Conflict, LimitExceeded, NotFound
from backend.jobs import LeaseLost
from backend.models import Generation, GenerationStatus, JobStatus, User, utcnow
from backend.settings import get_settings

log = logging.getLogger(__name__)

# Generations one user may have queued or running at once, so nobody fills the GPU queue alone.
MAX_ACTIVE_GENERATIONS_PER_USER = 8

ACTIVE_STATUSES = (GenerationStatus.queued, GenerationStatus.running)

# Why a job that has not succeeded cannot generate, by its status.
NOT_READY = {
    JobStatus.queued: "the job is queued; images can be generated once it has succeeded",
    JobStatus.running: "the job is running; images can be generated once it has succeeded",
    JobStatus.failed: "the job failed, so it has no trained weights to generate from; train it again",
    JobStatus.cancelled: "the job was cancelled, so it has no trained weights to generate from; train it again",
}


@dataclass(frozen=True)
class GenerationLease:
    """A worker's hold on a generation: valid while the row still carries `token`."""

    generation_id: uuid.UUID
    token: str
    attempt: int


def generation_dir(job_id: uuid.UUID, generation_id: uuid.UUID) -> Path:
    """Where a generation's images are written: DATA_DIR/jobs/<job>/generations/<generation>/<index>.png."""
    return storage.job_dir(job_id) / "generations" / generation_id.hex


# ── the owner's side ─────────────────────────────────────────────────────────────────────────


def create_generation(session: Session, owner: User, job_id: uuid.UUID, params: dict) -> Generation:
    """Queue a generation on the owner's finished job; `params` as GenerationCreate dumps them.

    A missing step becomes the job's last kept step and a missing seed a random one, both stored,
    so the images can be made again. The owner's row is locked meanwhile, so their cap holds.
    """
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    job = jobs.get_job(session, owner, job_id)
    # note: as it is now, not as this session may have loaded it before (its status, its artifacts)
    session.refresh(job)
    if job.status != JobStatus.succeeded:
        raise Conflict(NOT_READY[JobStatus(job.status)])
    kept = jobs.kept_steps(job)
    if not kept:
        raise NotFound(f"job {job_id} kept no weights to generate from")
    step = kept[-1] if params.get("step") is None else params["step"]
    if step not in kept:
        raise NotFound(f"job {job_id} kept no weights at step {step}; kept steps: {', '.join(map(str, kept))}", "step")
    active = session.scalar(
        select(func.count())
        .select_from(Generation)
        .where(Generation.owner_id == owner.id, Generation.status.in_(ACTIVE_STATUSES))
    )
    if active >= MAX_ACTIVE_GENERATIONS_PER_USER:
        raise LimitExceeded(
            f"you already have {active} generations queued or running (the limit is "
            f"{MAX_ACTIVE_GENERATIONS_PER_USER}); wait for one to finish"
        )
    seed = secrets.randbelow(2**32) if params.get("seed") is None else params["seed"]
    now = utcnow()
    generation = Generation(
        id=uuid.uuid4(),
        job_id=job.id,
        owner_id=owner.id,
        status=GenerationStatus.queued,
        params={**params, "seed": seed, "step": step},
        images=[],
        created_at=now,
        enqueued_at=now,
    )
    session.add(generation)
    session.commit()
    log.info("generation %s of job %s created by %s (step %d)", generation.id, job.id, owner.name, step)
    return generation


def get_generation(session: Session, owner: User, generation_id: uuid.UUID) -> Generation:
    """The owner's generation; another user's is exactly as missing as one that never existed."""
    generation = session.scalar(
        select(Generation).where(Generation.id == generation_id, Generation.owner_id == owner.id)
    )
    if generation is None:
        raise NotFound(f"generation {generation_id} not found")
    return generation


def list_generations(
    session: Session, owner: User, job_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[Generation], int]:
    """The generations of the owner's job, newest first, and how many there are."""
    jobs.get_job(session, owner, job_id)
    where = (Generation.job_id == job_id, Generation.owner_id == owner.id)
    total = session.scalar(select(func.count()).select_from(Generation).where(*where))
    items = session.scalars(
        select(Generation)
        .where(*where)
        .order_by(Generation.created_at.desc(), Generation.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return list(items), total or 0


# ── the worker's side ────────────────────────────────────────────────────────────────────────


def claim_generation(session: Session, generation_id: uuid.UUID) -> GenerationLease | None:
    """Take the generation if it is free: queued, or running with a stale heartbeat, under the attempt limit."""
    settings = get_settings()
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_seconds)
    token = secrets.token_hex(16)
    attempt = session.scalar(
        update(Generation)
        .where(
            Generation.id == generation_id,
            Generation.attempts < settings.max_attempts,
            or_(
                Generation.status == GenerationStatus.queued,
                (Generation.status == GenerationStatus.running) & (Generation.heartbeat_at < stale_before),
            ),
        )
        .values(
            status=GenerationStatus.running,
            lease_token=token,
            attempts=Generation.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(Generation.started_at, now),
        )
        .returning(Generation.attempts)
    )
    session.commit()
    if attempt is None:
        return None
    return GenerationLease(generation_id=generation_id, token=token, attempt=attempt)


def _fenced_update(session: Session, lease: GenerationLease, **values) -> None:
    """Apply `values` and commit if the lease still holds; else raise LeaseLost."""
    held = session.scalar(
        update(Generation)
        .where(
            Generation.id == lease.generation_id,
            Generation.lease_token == lease.token,
            Generation.status == GenerationStatus.running,
        )
        .values(heartbeat_at=utcnow(), **values)
        .returning(Generation.id)
    )
    if held is None:
        session.rollback()
        raise LeaseLost(f"generation {lease.generation_id} is no longer held by this worker")
    session.commit()


def heartbeat(session: Session, lease: GenerationLease) -> None:
    """Prove the worker is still rendering."""
    _fenced_update(session, lease)


def finish_generation(
    session: Session,
    lease: GenerationLease,
    status: GenerationStatus,
    images: list[dict] = (),
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """End the generation with its images ([{"path", "seed"}], each file already in place) and release the lease."""
    assert status in (GenerationStatus.succeeded, GenerationStatus.failed)
    _fenced_update(
        session,
        lease,
        status=status,
        images=list(images),
        error_code=error_code,
        error_message=error_message,
        lease_token=None,
        finished_at=utcnow(),
    )
    log.info(
        "generation %s %s%s", lease.generation_id, status, f" ({error_code}: {error_message})" if error_code else ""
    )


# ── the reaper's side ────────────────────────────────────────────────────────────────────────
# One conditional UPDATE each, so reapers in several workers may run at once.


def end_abandoned_generations(session: Session) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Fail stale generations that used up their attempts (`worker_lost`), and any still running past the time
    limit (`timeout`: its worker may be alive but stuck, heartbeat and all); returns their (job id, id)."""
    settings = get_settings()
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_seconds)
    running = Generation.status == GenerationStatus.running
    limit = settings.generation_time_limit_seconds
    endings = [
        (
            running & (Generation.heartbeat_at < stale_before) & (Generation.attempts >= settings.max_attempts),
            "worker_lost",
            f"The worker rendering these images stopped responding {settings.max_attempts} times, so it "
            "was given up. Try again, perhaps with fewer num_images or num_inference_steps.",
        ),
        (
            running & (Generation.started_at < now - timedelta(seconds=limit)),
            "timeout",
            f"Rendering took longer than {limit // 60} minutes, so it was stopped. Try fewer num_images or "
            "num_inference_steps.",
        ),
    ]
    ended = []
    for condition, code, message in endings:
        ended += session.execute(
            update(Generation)
            .where(condition)
            .values(
                status=GenerationStatus.failed,
                error_code=code,
                error_message=message,
                lease_token=None,
                finished_at=now,
            )
            .returning(Generation.job_id, Generation.id)
            .execution_options(synchronize_session=False)
        ).all()
    session.commit()
    for _job_id, generation_id in ended:
        log.warning("generation %s ended by the reaper (its worker is gone)", generation_id)
    return [(job_id, generation_id) for job_id, generation_id in ended]


def generations_to_wake(session: Session) -> list[uuid.UUID]:
    """Generations that need another wake-up call (as jobs_to_wake), each marked as sent now."""
    settings = get_settings()
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_seconds)
    queued_before = now - timedelta(seconds=settings.requeue_queued_after_seconds)
    last_sent = func.coalesce(Generation.enqueued_at, Generation.created_at)
    ids = session.scalars(
        update(Generation)
        .where(
            or_(
                (Generation.status == GenerationStatus.queued) & (last_sent < queued_before),
                (Generation.status == GenerationStatus.running)
                & (Generation.heartbeat_at < stale_before)
                & (Generation.attempts < settings.max_attempts)
                & (last_sent < stale_before),
            ),
        )
        .values(enqueued_at=now)
        .returning(Generation.id)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return list(ids)

"""The generation service: the only code that changes a generation's state.

A generation renders new images from a finished job's weights. Owners create and read their own;
a worker holds one under a lease while it renders (see backend/leases.py) and finishes it with its
images.
"""

import logging
import secrets
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import jobs, leases, storage, webhooks
from backend.errors import Conflict, LimitExceeded, NotFound
from backend.leases import Ending, Lease
from backend.models import Generation, GenerationStatus, JobStatus, User, kept_steps, utcnow
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


def generation_dir(job_id: uuid.UUID, generation_id: uuid.UUID) -> Path:
    """Where a generation's images are written: DATA_DIR/jobs/<job>/generations/<generation>/<index>.png."""
    return storage.job_dir(job_id) / "generations" / generation_id.hex


# ── the owner's side ─────────────────────────────────────────────────────────────────────────


def create_generation(
    session: Session, owner: User, job_id: uuid.UUID, params: dict, webhook_url: str | None = None
) -> Generation:
    """Queue a generation on the owner's finished job; `params` as GenerationCreate dumps them (less the webhook
    URL, passed apart: not a parameter of the images).

    A missing step becomes the job's last kept step and a missing seed a random one, both stored,
    so the images can be made again. The owner's row is locked meanwhile, so their cap holds.
    """
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    job = jobs.get_job(session, owner, job_id)
    # note: as it is now, not as this session may have loaded it before (its status, its artifacts)
    session.refresh(job)
    if job.status != JobStatus.succeeded:
        raise Conflict(NOT_READY[JobStatus(job.status)])
    kept = kept_steps(job)
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
        webhook_url=webhook_url,
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


def claim_generation(session: Session, generation_id: uuid.UUID) -> Lease | None:
    """Take the generation if it is free (see leases.claim)."""
    return leases.claim(session, Generation, generation_id)


def finish_generation(
    session: Session,
    lease: Lease,
    status: GenerationStatus,
    images: list[dict] = (),
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """End the generation with its images ([{"path", "seed"}], each file already in place) and release the lease."""
    assert status in (GenerationStatus.succeeded, GenerationStatus.failed)
    leases.finish(session, lease, status, error_code, error_message, images=list(images))
    webhooks.record_generation_event(session, lease.id)
    session.commit()
    log.info("generation %s %s%s", lease.id, status, f" ({error_code}: {error_message})" if error_code else "")


# ── the reaper's side ────────────────────────────────────────────────────────────────────────


def end_abandoned_generations(session: Session) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Fail stale generations that used up their attempts (`worker_lost`), and any still running past the time
    limit (`timeout`: its worker may be alive but stuck, heartbeat and all); returns their (job id, id)."""
    settings = get_settings()
    now = utcnow()
    limit = settings.generation_time_limit_seconds
    endings = [
        Ending(
            leases.given_up(Generation, now),
            GenerationStatus.failed,
            "worker_lost",
            f"The worker rendering these images stopped responding {settings.max_attempts} times, so it "
            "was given up. Try again, perhaps with fewer num_images or num_inference_steps.",
        ),
        Ending(
            Generation.started_at < now - timedelta(seconds=limit),
            GenerationStatus.failed,
            "timeout",
            f"Rendering took longer than {limit // 60} minutes, so it was stopped. Try fewer num_images or "
            "num_inference_steps.",
        ),
    ]
    ended = leases.end_abandoned(session, Generation, endings, Generation.job_id)
    for row in ended:
        webhooks.record_generation_event(session, row.id)
    session.commit()
    for row in ended:
        log.warning("generation %s ended by the reaper (its worker is gone)", row.id)
    return [(row.job_id, row.id) for row in ended]


def generations_to_wake(session: Session) -> list[uuid.UUID]:
    """Generations that need another wake-up call (see leases.to_wake), each marked as sent now."""
    return leases.to_wake(session, Generation)

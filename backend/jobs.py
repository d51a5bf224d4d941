"""The job service: the only code that changes a job's state.

Users create, read, cancel and delete their own jobs. Workers hold a job under a lease (see
backend/leases.py): what a job adds is its phase, progress and outputs, its owner's cancel flag,
and how the reaper ends it.
"""

import logging
import uuid
from datetime import timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from backend import leases, storage, webhooks
from backend.errors import LimitExceeded, NotFound, StorageFailed
from backend.images import IngestedPhoto
from backend.leases import Ending, Lease
from backend.models import (
    TERMINAL_STATUSES,
    Artifact,
    Job,
    JobStatus,
    Photo,
    User,
    utcnow,
)
from backend.photo_checks import PhotoCheck
from backend.settings import get_settings
from formats.captions import CAPTIONED_MODES, TOKEN_LIMIT, estimate_tokens, photo_prompt

log = logging.getLogger(__name__)


# ── the owner's side ─────────────────────────────────────────────────────────────────────────


def create_job(
    session: Session,
    owner: User,
    settings: dict,
    photos: list[IngestedPhoto],
    class_photos: list[IngestedPhoto] = (),
    idempotency_key: str | None = None,
    family: str | None = None,
    checks: list[PhotoCheck] | None = None,
    webhook_url: str | None = None,
) -> Job:
    """Store the photos under generated names and insert the job, all or nothing. `family` is the base model's
    (backend/base_models.py), None when it could not be told; `checks`: each instance photo's crop box, caption
    and warnings (backend/photo_checks.py), stored on its row for the worker and the page.

    With an idempotency key the owner already used, that job is returned and nothing is stored.
    The owner's row is locked meanwhile, so their quotas hold under concurrent requests.
    """
    session.execute(select(User.id).where(User.id == owner.id).with_for_update())
    if idempotency_key and (existing := find_job_by_key(session, owner, idempotency_key)):
        session.commit()
        return existing
    upload_bytes = sum(len(photo.data) for photo in (*photos, *class_photos))
    check_quotas(session, owner, upload_bytes)
    now = utcnow()
    job = Job(
        id=uuid.uuid4(),
        owner_id=owner.id,
        settings=settings,
        status=JobStatus.queued,
        total_steps=settings["max_train_steps"],
        idempotency_key=idempotency_key,
        family=family,
        webhook_url=webhook_url,
        created_at=now,
        enqueued_at=now,
    )
    try:
        for kind, batch in (("instance", photos), ("class", class_photos)):
            for position, photo in enumerate(batch):
                path = storage.photo_path(job.id, kind, position, photo.extension)
                storage.write_atomic(path, photo.data)
                job.photos.append(
                    Photo(
                        kind=kind,
                        position=position,
                        path=storage.relative(path),
                        width=photo.width,
                        height=photo.height,
                        sha256=photo.sha256,
                        size_bytes=len(photo.data),
                        **(_checked(checks[position], photo) if kind == "instance" and checks else {}),
                    )
                )
        session.add(job)
        session.commit()
    except IntegrityError:
        # note: the same key in a concurrent request (SQLite takes no row lock): that one won.
        session.rollback()
        storage.remove_job_files(job.id)
        if idempotency_key and (existing := find_job_by_key(session, owner, idempotency_key)):
            return existing
        raise
    except OSError as exc:
        session.rollback()
        storage.remove_job_files(job.id)
        log.error("job %s: could not store its photos: %s", job.id, exc)
        raise StorageFailed("the server could not store the photos (its disk may be full)") from None
    except BaseException:
        session.rollback()
        storage.remove_job_files(job.id)
        raise
    log.info("job %s created by %s with %d photos", job.id, owner.name, len(photos))
    return job


def _checked(check: PhotoCheck, photo: IngestedPhoto) -> dict:
    """The Photo columns of an instance photo's checks."""
    box = list(check.crop_box) if check.crop_box else None
    return {"name": photo.name, "crop_box": box, "checks": check.as_dict(), "caption": check.caption}


def find_job_by_key(session: Session, owner: User, idempotency_key: str) -> Job | None:
    """The owner's job made with this Idempotency-Key, if any."""
    return session.scalar(
        select(Job)
        .where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key)
        .options(selectinload(Job.artifacts), selectinload(Job.photos))
    )


def storage_used(session: Session, owner: User) -> int:
    """Bytes the owner's jobs keep on disk: photos not yet purged, and outputs."""
    photos = session.scalar(
        select(func.coalesce(func.sum(Photo.size_bytes), 0))
        .join(Job, Photo.job_id == Job.id)
        .where(Job.owner_id == owner.id, Job.photos_purged_at.is_(None))
    )
    outputs = session.scalar(
        select(func.coalesce(func.sum(Artifact.size_bytes), 0))
        .join(Job, Artifact.job_id == Job.id)
        .where(Job.owner_id == owner.id)
    )
    return int(photos) + int(outputs)


def check_quotas(session: Session, owner: User, upload_bytes: int = 0) -> None:
    """Refuse a new job when the owner has too many jobs active, or would keep too many bytes."""
    settings = get_settings()
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner_id == owner.id, Job.status.in_((JobStatus.queued, JobStatus.running)))
    )
    if active >= settings.max_active_jobs_per_user:
        raise LimitExceeded(
            f"you already have {active} jobs queued or running (the limit is "
            f"{settings.max_active_jobs_per_user}); wait for one to finish or cancel one"
        )
    used = storage_used(session, owner)
    if used + upload_bytes > settings.max_storage_bytes_per_user:
        raise LimitExceeded(
            f"your jobs keep {used / 2**20:.1f} MiB and these photos add {upload_bytes / 2**20:.1f} MiB, "
            f"over your {settings.max_storage_bytes_per_user / 2**20:.0f} MiB; delete jobs you no longer need"
        )


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


def job_version(session: Session, owner: User, job_id: uuid.UUID) -> str | None:
    """A tag that changes whenever anything the owner sees of the job does: one cheap query, so a poller whose
    job did not change is answered without loading it. None where the database cannot tell (SQLite), or when
    the job is not the owner's.

    note: Postgres gives every new version of a row a new `xmin` (the transaction that wrote it), and every
    write to a job's artifacts also writes its row (under the lease); the artifacts' count and newest id are
    added anyway, so that a change to them alone still shows. Read it before the job: a write in between
    makes the answer newer than its tag, which costs the poller one more full answer, never a stale 304.
    """
    if session.get_bind().dialect.name != "postgresql":
        return None
    count = select(func.count(Artifact.id)).where(Artifact.job_id == Job.id).scalar_subquery()
    newest = select(func.max(Artifact.id)).where(Artifact.job_id == Job.id).scalar_subquery()
    query = select(text("jobs.xmin::text"), count, newest).where(Job.id == job_id, Job.owner_id == owner.id)
    # note: one statement sees one snapshot, so it needs no transaction: in autocommit there is no BEGIN
    # before it and no ROLLBACK after it, two round trips of three saved on every poll
    with session.get_bind().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        row = connection.execute(query).first()
    return None if row is None else "-".join(str(value) for value in row)


def request_cancel(session: Session, owner: User, job_id: uuid.UUID) -> Job:
    """Cancel a job. Idempotent: a finished job is left as it is.

    A queued job is cancelled at once and never starts (its webhook event commits with it); a running one gets a
    flag that its training loop checks every step.
    """
    job = get_job(session, owner, job_id)
    now = utcnow()
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=now, phase=None)
        .returning(Job.id)
    ).first()
    session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.running).values(cancel_requested=True))
    if cancelled:
        webhooks.record_job_event(session, job.id)
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
    """Take the job if it is free (see leases.claim) and its owner has not cancelled it."""
    return leases.claim(
        session, Job, job_id, Job.cancel_requested.is_(False), phase="preparing", claimed_at=utcnow(), note=None
    )


def _update_job(session: Session, lease: Lease, **values) -> bool:
    """Apply `values` if the lease still holds (uncommitted; else LeaseLost); returns the job's cancel flag."""
    return leases.fenced_update(session, lease, Job.cancel_requested, **values).cancel_requested


def record_progress(
    session: Session,
    lease: Lease,
    *,
    phase: str,
    step: int,
    total_steps: int,
    loss: float | None,
    eta_seconds: float | None,
    loss_history: list | None = None,
) -> bool:
    """Write progress (and the loss curve, when given) and heartbeat; returns whether the owner asked to cancel."""
    values = {"loss_history": loss_history} if loss_history is not None else {}
    cancel_requested = _update_job(
        session, lease, phase=phase, step=step, total_steps=total_steps, loss=loss, eta_seconds=eta_seconds, **values
    )
    session.commit()
    return cancel_requested


# Artifacts a run makes while it trains (the rest come with finish_job).
VALIDATION_KINDS = ("sample", "weights")


def record_validation(
    session: Session, lease: Lease, artifacts: list[Artifact], kept_steps: set[int], evaluation: dict | None
) -> bool:
    """Add a validation step's samples and kept weights, forget pruned weights, and store the scores.

    Each file is whole on disk before its row is added, so the job shows samples as soon as they exist.
    Returns whether the owner asked to cancel.
    """
    cancel_requested = _update_job(session, lease, evaluation=evaluation)
    session.execute(
        delete(Artifact).where(
            Artifact.job_id == lease.id, Artifact.kind == "weights", Artifact.step.not_in(kept_steps)
        )
    )
    for artifact in artifacts:
        artifact.job_id = lease.id
    session.add_all(artifacts)
    session.commit()
    return cancel_requested


def record_memory_plan(session: Session, lease: Lease, memory_plan: dict) -> bool:
    """Store the memory savers this attempt runs with; returns whether the owner asked to cancel."""
    cancel_requested = _update_job(session, lease, memory_plan=memory_plan)
    session.commit()
    return cancel_requested


def record_auto_captions(session: Session, lease: Lease, captions: dict[int, str]) -> bool:
    """Store the captioning model's caption of instance photos (by position), and a prompt_too_long warning on any
    photo whose prompt it makes too long for the text encoder; returns whether the owner asked to cancel."""
    cancel_requested = _update_job(session, lease)
    job = session.get(Job, lease.id)
    for photo in job.photos:
        if photo.kind != "instance" or photo.position not in captions:
            continue
        photo.auto_caption = captions[photo.position]
        prompt = photo_prompt(job.settings["instance_prompt"], photo.caption or photo.auto_caption, CAPTIONED_MODES[0])
        if (tokens := estimate_tokens(prompt)) > TOKEN_LIMIT and photo.checks is not None:
            warning = {
                "code": "prompt_too_long",
                "message": f"with its automatic caption its prompt is about {tokens} tokens; the text encoder reads "
                f"the first {TOKEN_LIMIT} and drops the rest",
            }
            photo.checks = {**photo.checks, "warnings": [*photo.checks["warnings"], warning]}
    session.commit()
    return cancel_requested


def forget_outputs_after(session: Session, lease: Lease, step: int) -> None:
    """A new attempt resumes from `step`: drop what the last attempt recorded after it (it is redone)."""
    job = session.get(Job, lease.id)
    _update_job(
        session,
        lease,
        loss_history=[point for point in job.loss_history or [] if point[0] <= step] or None,
        # note: the next validation step reports the evaluation again, from every score kept on disk
        evaluation=None,
    )
    session.execute(
        delete(Artifact).where(Artifact.job_id == lease.id, Artifact.kind.in_(VALIDATION_KINDS), Artifact.step > step)
    )
    session.commit()


def heartbeat(session: Session, lease: Lease) -> bool:
    """Prove the worker is alive; returns whether the owner asked to cancel."""
    cancel_requested = _update_job(session, lease)
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

    The artifacts (each file written atomically before this is called), the status change and the webhook
    event commit together, so a job never succeeds without its outputs or shows outputs twice.
    """
    assert status in TERMINAL_STATUSES
    leases.finish(session, lease, status, error_code, error_message, phase=None, eta_seconds=None)
    if status != JobStatus.succeeded:
        # note: a run that did not succeed leaves no outputs (the caller removes their files)
        session.execute(delete(Artifact).where(Artifact.job_id == lease.id))
    # note: added after the fenced update, so a deleted job raises LeaseLost, not a foreign-key error.
    for artifact in artifacts:
        artifact.job_id = lease.id
    session.add_all(artifacts)
    webhooks.record_job_event(session, lease.id)
    session.commit()
    log.info("job %s %s%s", lease.id, status, f" ({error_code}: {error_message})" if error_code else "")


# ── the reaper's side ────────────────────────────────────────────────────────────────────────


def end_abandoned_jobs(session: Session) -> list[uuid.UUID]:
    """End running jobs no worker will finish; returns their ids (their partial outputs can go).

    A stale job whose owner asked to cancel is cancelled; one that used up its attempts fails with
    `worker_lost`; one running past the hard time limit fails with `timeout` (its worker, if alive,
    finds its lease gone at its next write and stops).
    """
    settings = get_settings()
    now = utcnow()
    endings = [
        Ending(leases.stale(Job, now) & Job.cancel_requested.is_(True), JobStatus.cancelled),
        Ending(
            leases.given_up(Job, now),
            JobStatus.failed,
            "worker_lost",
            f"The worker running this job stopped responding {settings.max_attempts} times, so it was "
            "given up; the photos or settings may crash the worker. Try again, or with other settings.",
        ),
        Ending(
            Job.claimed_at < now - timedelta(seconds=settings.job_time_limit_seconds),
            JobStatus.failed,
            "timeout",
            timeout_message(settings.job_time_limit_seconds),
        ),
    ]
    rows = leases.end_abandoned(session, Job, endings, phase=None, eta_seconds=None)
    ended = [row.id for row in rows]
    if ended:
        # note: their files go too (the reaper removes them once this commits)
        session.execute(delete(Artifact).where(Artifact.job_id.in_(ended)))
    for job_id in ended:
        webhooks.record_job_event(session, job_id)
    session.commit()
    for job_id in ended:
        log.warning("job %s ended by the reaper (its worker is gone or over time)", job_id)
    return ended


def timeout_message(limit_seconds: float) -> str:
    return (
        f"The job ran past the time limit of {limit_seconds / 3600:g} hours and was stopped; "
        "use fewer max_train_steps or class images."
    )


def jobs_to_wake(session: Session) -> list[tuple[uuid.UUID, str | None]]:
    """Jobs that need another wake-up call (see leases.to_wake) unless cancelled, each marked as sent now, with
    the queue each was routed to."""
    ids = leases.to_wake(session, Job, Job.cancel_requested.is_(False))
    return [(row.id, row.queue) for row in session.execute(select(Job.id, Job.queue).where(Job.id.in_(ids)))]


def purge_expired_photos(session: Session) -> list[uuid.UUID]:
    """Delete the raw photos of jobs that ended more than `photo_retention_days` ago."""
    days = get_settings().photo_retention_days
    if days is None:
        return []
    now = utcnow()
    expired = session.scalars(
        select(Job.id).where(
            Job.status.in_(TERMINAL_STATUSES),
            Job.finished_at < now - timedelta(days=days),
            Job.photos_purged_at.is_(None),
        )
    ).all()
    for job_id in expired:
        # note: files first, then the mark: a crash in between leaves a job purged twice, never half.
        storage.remove_job_photos(job_id)
        session.execute(update(Job).where(Job.id == job_id).values(photos_purged_at=now))
        session.commit()
        log.info("job %s: photos deleted after %g days (retention)", job_id, days)
    return list(expired)

"""The reaper's decisions, on the real database: which jobs it ends, wakes again, or purges."""

import ast
import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend import jobs, storage
from backend.leases import LeaseLost
from backend.models import Artifact, Job, JobStatus, utcnow
from backend.queue import GPU_QUEUE
from backend.settings import get_settings
from worker import reaper


def set_times(db, job, **ages_in_seconds):
    """Move the job's timestamps (`heartbeat_at=130` means 130 s ago)."""
    now = utcnow()
    db.execute(
        update(Job)
        .where(Job.id == job.id)
        .values({name: now - timedelta(seconds=age) for name, age in ages_in_seconds.items()})
    )
    db.commit()
    db.refresh(job)


def stale(db, job):
    set_times(db, job, heartbeat_at=get_settings().heartbeat_stale_seconds + 1)


def output_file(job, name="output/step-3/state.bin"):
    path = storage.job_dir(job.id) / name
    storage.write_atomic(path, b"partial")
    return path


def woken_ids(broker) -> list[str]:
    messages = [json.loads(raw) for raw in broker.lrange(GPU_QUEUE, 0, -1)]
    return [ast.literal_eval(message["headers"]["argsrepr"])[0] for message in messages]


def test_a_live_job_is_left_alone(db, make_job, broker):
    job = make_job()
    jobs.claim_job(db, job.id)
    reaper.sweep()
    db.refresh(job)
    assert (job.status, job.attempts) == ("running", 1)
    assert woken_ids(broker) == []


def test_a_stale_job_with_attempts_left_is_woken_once_per_stale_period(db, make_job, broker):
    job = make_job()
    jobs.claim_job(db, job.id)
    stale(db, job)
    set_times(db, job, heartbeat_at=200, enqueued_at=200)
    reaper.sweep()
    reaper.sweep()
    assert woken_ids(broker) == [str(job.id)]
    db.refresh(job)
    assert job.status == "running"
    lease = jobs.claim_job(db, job.id)  # what the woken worker does
    assert lease is not None and lease.attempt == 2


def test_a_stale_job_at_the_attempt_limit_fails_as_worker_lost(db, make_job, broker):
    job = make_job()
    for _ in range(get_settings().max_attempts):
        jobs.claim_job(db, job.id)
        stale(db, job)
    partial = output_file(job)
    reaper.sweep()
    db.refresh(job)
    assert (job.status, job.error_code, job.lease_token) == ("failed", "worker_lost", None)
    assert "stopped responding 3 times" in job.error_message and job.finished_at
    assert not partial.exists() and all(storage.resolve(photo.path).exists() for photo in job.photos)
    assert woken_ids(broker) == []


def test_a_stale_job_its_owner_cancelled_ends_cancelled(db, make_job, broker):
    job = make_job()
    jobs.claim_job(db, job.id)
    db.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True))
    stale(db, job)
    reaper.sweep()
    db.refresh(job)
    assert (job.status, job.error_code) == ("cancelled", None)
    assert woken_ids(broker) == []


def test_a_job_past_the_hard_time_limit_fails_with_timeout_and_its_worker_is_fenced_off(db, make_job, broker):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    set_times(db, job, claimed_at=get_settings().job_time_limit_seconds + 1)
    reaper.sweep()
    db.refresh(job)
    assert (job.status, job.error_code) == ("failed", "timeout")
    with pytest.raises(LeaseLost):
        jobs.heartbeat(db, lease)


def test_a_queued_job_whose_message_was_lost_is_sent_again(db, make_job, broker):
    fresh, old = make_job(), make_job()
    set_times(db, old, enqueued_at=get_settings().requeue_queued_after_seconds + 1)
    reaper.sweep()
    assert woken_ids(broker) == [str(old.id)]
    reaper.sweep()
    assert woken_ids(broker) == [str(old.id)]
    db.refresh(fresh)
    assert fresh.status == "queued"


def test_photos_are_purged_after_the_retention_period(db, make_job, broker, monkeypatch):
    monkeypatch.setattr(get_settings(), "photo_retention_days", 1)
    old, recent, running = make_job(), make_job(), make_job()
    for job in (old, recent):
        lease = jobs.claim_job(db, job.id)
        artifact = Artifact(kind="sample", path="x.png", size_bytes=1, step=1)
        jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=[artifact])
    set_times(db, old, finished_at=86400 + 60)
    jobs.claim_job(db, running.id)
    reaper.sweep()
    for job in (old, recent, running):
        db.refresh(job)
    assert old.photos_purged_at is not None and recent.photos_purged_at is running.photos_purged_at is None
    assert not any(storage.resolve(photo.path).exists() for photo in old.photos)
    assert all(storage.resolve(photo.path).exists() for photo in recent.photos + running.photos)
    assert len(old.artifacts) == 1 and len(old.photos) == 1  # outputs and photo metadata stay


def test_nothing_is_purged_without_a_retention_setting(db, make_job, broker):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    jobs.finish_job(db, lease, JobStatus.failed, "training_error", "boom")
    set_times(db, job, finished_at=10 * 365 * 86400)
    reaper.sweep()
    db.refresh(job)
    assert job.photos_purged_at is None and storage.resolve(job.photos[0].path).exists()

"""The job service: claims, leases and fenced writes, cancellation, finishing."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from backend import jobs
from backend.leases import LeaseLost
from backend.models import Artifact, Job, JobStatus, User, utcnow
from backend.settings import get_settings


def progress(db, lease, step=1):
    return jobs.record_progress(db, lease, phase="training", step=step, total_steps=10, loss=0.1, eta_seconds=5.0)


def sample(step):
    return Artifact(kind="sample", path=f"sample-{step}.png", size_bytes=1, step=step)


def owner_of(db, job):
    return db.get(User, job.owner_id)


def make_stale(db, job):
    stale = utcnow() - timedelta(seconds=get_settings().heartbeat_stale_seconds + 1)
    db.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=stale))
    db.commit()


def test_a_job_is_claimed_once(db, make_job):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    assert lease is not None and lease.attempt == 1
    assert jobs.claim_job(db, job.id) is None
    db.refresh(job)
    assert (job.status, job.phase, job.attempts, job.lease_token) == ("running", "preparing", 1, lease.token)
    assert job.started_at is not None


def test_a_stale_job_is_reclaimed_and_the_old_lease_is_fenced_off(db, make_job):
    job = make_job()
    first = jobs.claim_job(db, job.id)
    make_stale(db, job)
    second = jobs.claim_job(db, job.id)
    assert second is not None and second.attempt == 2 and second.token != first.token
    with pytest.raises(LeaseLost):
        progress(db, first)
    with pytest.raises(LeaseLost):
        jobs.finish_job(db, first, JobStatus.succeeded)
    assert progress(db, second) is False


def test_a_fresh_heartbeat_keeps_the_job(db, make_job):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    assert jobs.heartbeat(db, lease) is False
    assert jobs.claim_job(db, job.id) is None


def test_the_attempt_limit_is_honoured(db, make_job):
    job = make_job()
    for attempt in range(1, get_settings().max_attempts + 1):
        lease = jobs.claim_job(db, job.id)
        assert lease is not None and lease.attempt == attempt
        make_stale(db, job)
    assert jobs.claim_job(db, job.id) is None
    db.refresh(job)
    assert job.attempts == get_settings().max_attempts


def test_a_deleted_job_loses_its_lease(db, make_job):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    jobs.delete_job(db, owner_of(db, job), job.id)
    with pytest.raises(LeaseLost):
        progress(db, lease)
    with pytest.raises(LeaseLost):
        jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=[sample(step=1)])
    assert jobs.claim_job(db, job.id) is None
    assert db.scalar(select(func.count()).select_from(Artifact)) == 0


def test_progress_reports_the_cancel_flag(db, make_job):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    assert progress(db, lease, step=3) is False
    cancelled = jobs.request_cancel(db, owner_of(db, job), job.id)
    assert cancelled.status == "running" and cancelled.cancel_requested
    assert progress(db, lease, step=4) is True
    db.refresh(job)
    assert (job.step, job.total_steps, job.loss, job.eta_seconds) == (4, 10, 0.1, 5.0)


def test_a_queued_job_is_cancelled_at_once_and_never_claimed(db, make_job):
    job = make_job()
    cancelled = jobs.request_cancel(db, owner_of(db, job), job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert jobs.claim_job(db, job.id) is None


def test_finish_releases_the_lease(db, make_job):
    job = make_job()
    lease = jobs.claim_job(db, job.id)
    jobs.finish_job(db, lease, JobStatus.failed, "out_of_memory", "lower the resolution", [sample(step=5)])
    db.refresh(job)
    assert (job.status, job.phase, job.lease_token) == ("failed", None, None)
    assert (job.error_code, job.error_message) == ("out_of_memory", "lower the resolution")
    assert job.finished_at is not None and [a.step for a in job.artifacts] == [5]
    with pytest.raises(LeaseLost):
        jobs.finish_job(db, lease, JobStatus.succeeded)
    assert jobs.request_cancel(db, owner_of(db, job), job.id).status == "failed"


def test_the_memory_plan_is_recorded_under_the_lease_and_shown_to_the_owner(db, make_job):
    from backend.api.job_view import job_out

    job = make_job()
    first = jobs.claim_job(db, job.id)
    plan = {"profile": "16gb", "gpu_memory_gib": 15.6, "changes": {"use_8bit_adam": True, "mixed_precision": "fp16"}}
    assert jobs.record_memory_plan(db, first, plan) is False
    db.refresh(job)
    assert job_out(job).memory_plan.model_dump() == plan

    make_stale(db, job)
    second = jobs.claim_job(db, job.id)
    with pytest.raises(LeaseLost):
        jobs.record_memory_plan(db, first, {"profile": "cpu", "gpu_memory_gib": None, "changes": {}})
    jobs.record_memory_plan(db, second, {"profile": "24gb", "gpu_memory_gib": 79.1, "changes": {}})
    db.refresh(job)
    assert job.memory_plan["profile"] == "24gb"

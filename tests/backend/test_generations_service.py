"""The worker's side of the generation service and its reaper, on the real database: claims, fencing, recovery."""

import ast
import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend import generations, jobs, leases, storage
from backend.leases import LeaseLost
from backend.models import Artifact, Generation, JobStatus, User, utcnow
from backend.queue import GPU_QUEUE
from backend.settings import get_settings
from worker import reaper

PARAMS = {"prompt": "rufus on the moon", "scheduler": "ddim", "num_inference_steps": 2, "guidance_scale": 7.5,
          "num_images": 1, "negative_prompt": None, "seed": None, "step": None}  # fmt: skip


@pytest.fixture
def generation(db, make_job, user_factory) -> Generation:
    """A queued generation of a finished job."""
    owner, _token = user_factory("alice")
    job = make_job(owner)
    pipeline = Artifact(kind="pipeline", path="jobs/x/pipeline", size_bytes=1, step=30, format="diffusers")
    jobs.finish_job(db, jobs.claim_job(db, job.id), JobStatus.succeeded, artifacts=[pipeline])
    return generations.create_generation(db, owner, job.id, PARAMS)


def set_times(db, generation, **ages_in_seconds):
    """Move the generation's timestamps (`heartbeat_at=130` means 130 s ago)."""
    now = utcnow()
    values = {name: now - timedelta(seconds=age) for name, age in ages_in_seconds.items()}
    db.execute(update(Generation).where(Generation.id == generation.id).values(values))
    db.commit()
    db.refresh(generation)


def stale(db, generation):
    age = get_settings().heartbeat_stale_seconds + 1
    set_times(db, generation, heartbeat_at=age, enqueued_at=age)


def woken_ids(broker) -> list[str]:
    messages = [json.loads(raw) for raw in broker.lrange(GPU_QUEUE, 0, -1)]
    return [ast.literal_eval(message["headers"]["argsrepr"])[0] for message in messages]


def test_one_claim_wins_and_its_lease_fences_every_write(db, generation):
    lease = generations.claim_generation(db, generation.id)
    assert lease is not None and lease.attempt == 1
    assert generations.claim_generation(db, generation.id) is None  # a duplicate delivery
    leases.heartbeat(db, lease)
    stale(db, generation)
    taken_over = generations.claim_generation(db, generation.id)
    assert taken_over is not None and taken_over.attempt == 2
    with pytest.raises(LeaseLost):
        leases.heartbeat(db, lease)
    with pytest.raises(LeaseLost):
        generations.finish_generation(db, lease, "succeeded", images=[{"path": "x.png", "seed": 1}])
    generations.finish_generation(db, taken_over, "succeeded", images=[{"path": "y.png", "seed": 1}])
    db.refresh(generation)
    assert (generation.status, generation.images, generation.lease_token) == (
        "succeeded",
        [{"path": "y.png", "seed": 1}],
        None,
    )
    assert generation.started_at <= generation.finished_at
    assert generations.claim_generation(db, generation.id) is None  # finished


def test_a_generation_deleted_with_its_job_loses_its_lease(db, generation):
    lease = generations.claim_generation(db, generation.id)
    jobs.delete_job(db, db.get(User, generation.owner_id), generation.job_id)
    with pytest.raises(LeaseLost):
        generations.finish_generation(db, lease, "failed", error_code="generation_error", error_message="x")


def test_the_reaper_leaves_a_live_generation_alone(db, generation, broker):
    generations.claim_generation(db, generation.id)
    reaper.sweep()
    db.refresh(generation)
    assert (generation.status, generation.attempts) == ("running", 1)
    assert woken_ids(broker) == []


def test_the_reaper_wakes_a_stale_generation_once_per_stale_period(db, generation, broker):
    generations.claim_generation(db, generation.id)
    stale(db, generation)
    reaper.sweep()
    reaper.sweep()
    assert woken_ids(broker) == [str(generation.id)]
    assert generations.claim_generation(db, generation.id).attempt == 2


def test_the_reaper_wakes_a_generation_queued_too_long(db, generation, broker):
    set_times(db, generation, enqueued_at=get_settings().requeue_queued_after_seconds + 1)
    reaper.sweep()
    assert woken_ids(broker) == [str(generation.id)]


def test_the_reaper_fails_a_stale_generation_at_the_attempt_limit(db, generation, broker):
    for _ in range(get_settings().max_attempts):
        generations.claim_generation(db, generation.id)
        stale(db, generation)
    partial = generations.generation_dir(generation.job_id, generation.id) / "0.png"
    storage.write_atomic(partial, b"half")
    reaper.sweep()
    db.refresh(generation)
    assert (generation.status, generation.error_code, generation.lease_token) == ("failed", "worker_lost", None)
    assert "stopped responding 3 times" in generation.error_message and generation.finished_at
    assert not partial.exists()
    assert woken_ids(broker) == []


def test_the_reaper_fails_a_generation_running_past_the_time_limit_though_its_worker_beats(db, generation, broker):
    lease = generations.claim_generation(db, generation.id)
    set_times(db, generation, started_at=get_settings().generation_time_limit_seconds + 1)
    leases.heartbeat(db, lease)  # note: alive but stuck: the heartbeat is fresh
    reaper.sweep()
    db.refresh(generation)
    assert (generation.status, generation.error_code, generation.lease_token) == ("failed", "timeout", None)
    assert "longer than 30 minutes" in generation.error_message
    with pytest.raises(LeaseLost):
        generations.finish_generation(db, lease, "succeeded", images=[])
    assert woken_ids(broker) == []


def test_a_generation_within_the_time_limit_is_left_alone(db, generation, broker):
    generations.claim_generation(db, generation.id)
    set_times(db, generation, started_at=get_settings().generation_time_limit_seconds - 60)
    reaper.sweep()
    db.refresh(generation)
    assert generation.status == "running"

"""Routing by GPU memory on the real database: which queue a job goes to, which queues a worker reads, and the
`waiting_for_gpu` note as workers come and go (the same with real worker processes: tests/reliability)."""

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend import jobs, leases, routing
from backend.models import Job, Worker, utcnow
from backend.queue import GPU_QUEUE
from backend.settings import get_settings
from tests.e2e.stack import FAST_SETTINGS
from worker import reaper


def add_worker(db, name: str, queues: list[str], age_seconds: float = 0, memory: float | None = 24.0) -> Worker:
    now = utcnow()
    worker = Worker(
        name=name,
        hostname="box",
        gpu_name="a GPU" if memory else None,
        gpu_memory_gib=memory,
        gpu_count=1 if memory else 0,
        families=["sd1", "sd2", "sdxl"],
        queues=queues,
        started_at=now - timedelta(seconds=age_seconds),
        heartbeat_at=now - timedelta(seconds=age_seconds),
    )
    db.add(worker)
    db.commit()
    return worker


@pytest.mark.parametrize(
    ("family", "settings", "queue"),
    [
        ("sd1", {"training_method": "lora"}, "gpu-12gb"),  # fits any GPU: the smallest class, which all read
        ("sd1", {"training_method": "full"}, "gpu-12gb"),  # 12 GiB with every saver on
        ("sdxl", {"training_method": "lora"}, "gpu-12gb"),
        ("sdxl", {"training_method": "full"}, "gpu-48gb"),  # 30 GiB: never a 24 GB card
        ("sdxl", {"training_method": "pivotal", "pivotal_second_phase": "full"}, "gpu-48gb"),
        ("sdxl", {"training_method": "pivotal", "pivotal_second_phase": "lora"}, "gpu-12gb"),
        (None, {"training_method": "full"}, "gpu-12gb"),  # unknown family: the least any family needs
    ],
)
def test_a_job_goes_to_the_smallest_class_that_fits_it(family, settings, queue):
    assert routing.job_queue(family, settings) == queue


@pytest.mark.parametrize(
    ("memory", "queues"),
    [
        (14.7, ["gpu-12gb", "gpu-16gb"]),  # a "16 GB" T4 reports 14.7 GiB
        (23.6, ["gpu-12gb", "gpu-16gb", "gpu-24gb"]),
        (79.2, ["gpu-12gb", "gpu-16gb", "gpu-24gb", "gpu-48gb", "gpu-80gb"]),
        (8.0, ["gpu-12gb"]),  # below the smallest class: it still takes what fits anywhere
        (None, ["gpu-12gb", "gpu-16gb", "gpu-24gb", "gpu-48gb", "gpu-80gb"]),  # no GPU: reads everything
    ],
)
def test_a_worker_reads_its_class_every_smaller_one_and_the_shared_queue(memory, queues):
    assert routing.worker_queues(memory) == [*queues, GPU_QUEUE]


def test_gpu_classes_come_from_the_setting(monkeypatch):
    monkeypatch.setattr(get_settings(), "gpu_classes_gib", "40,24")
    assert routing.gpu_classes() == [24.0, 40.0]
    assert routing.job_queue("sdxl", {"training_method": "full"}) == "gpu-40gb"
    assert routing.job_queue("sdxl", {"training_method": "lora"}) == "gpu-24gb"
    # note: a need above every class goes to the largest, where the memory planner does what it can
    monkeypatch.setattr(get_settings(), "gpu_classes_gib", "16")
    assert routing.job_queue("sdxl", {"training_method": "full"}) == "gpu-16gb"


def test_a_job_no_live_worker_fits_waits_with_a_note_and_goes_to_its_queue(
    client, db, auth_headers, photo_bytes, broker
):
    add_worker(db, "small:1", routing.worker_queues(23.6))
    add_worker(db, "gone:2", routing.worker_queues(79.2), age_seconds=get_settings().heartbeat_stale_seconds + 5)
    settings = {**FAST_SETTINGS, "base_model": "builtin:tiny-sdxl", "training_method": "full"}
    photos = [
        ("photos", (f"p{i}.png", photo_bytes(color=color), "image/png"))
        for i, color in enumerate(("red", "green", "blue"))
    ]
    response = client.post("/api/jobs", headers=auth_headers, files=photos, data={"settings": json.dumps(settings)})

    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["queue"], job["note"]) == ("gpu-48gb", routing.WAITING_FOR_GPU)
    assert broker.llen("gpu-48gb") == 1 and broker.llen(GPU_QUEUE) == 0

    small = {**FAST_SETTINGS, "training_method": "lora"}
    response = client.post("/api/jobs", headers=auth_headers, files=photos, data={"settings": json.dumps(small)})
    assert (response.json()["queue"], response.json()["note"]) == ("gpu-12gb", None)
    assert broker.llen("gpu-12gb") == 1


def test_the_note_clears_when_a_fitting_worker_comes_and_returns_when_it_goes(db, make_job):
    job = make_job()
    db.execute(update(Job).where(Job.id == job.id).values(queue="gpu-48gb"))
    db.commit()
    small = add_worker(db, "small:1", routing.worker_queues(23.6))

    routing.refresh_notes(db)
    db.refresh(job)
    assert job.note == routing.WAITING_FOR_GPU

    big = add_worker(db, "big:2", routing.worker_queues(79.2))
    routing.refresh_notes(db)
    db.refresh(job)
    assert job.note is None

    big.heartbeat_at = utcnow() - timedelta(seconds=get_settings().heartbeat_stale_seconds + 1)
    db.commit()
    reaper.sweep()  # every worker's reaper keeps the notes up to date
    db.refresh(job)
    assert job.note == routing.WAITING_FOR_GPU
    assert small.name in {worker.name for worker in routing.live_workers(db)}

    lease = jobs.claim_job(db, job.id)  # a worker took it after all: running jobs wait on nothing
    db.refresh(job)
    assert lease is not None and job.note is None


def test_workers_not_heard_from_in_a_day_are_forgotten(db):
    add_worker(db, "old:1", ["gpu"], age_seconds=2 * 86400)
    add_worker(db, "recent:2", ["gpu"], age_seconds=3600)
    routing.forget_gone_workers(db)
    assert sorted(worker.name for worker in db.query(Worker)) == ["recent:2"]


def test_a_stale_job_is_woken_at_once_then_once_per_stale_period(db, make_job, broker):
    job = make_job()
    jobs.claim_job(db, job.id)
    stale_for = get_settings().heartbeat_stale_seconds + 1
    now = utcnow()
    # note: its last wake-up call (at creation) is older than its last heartbeat: the worker died since
    db.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(enqueued_at=now - timedelta(seconds=stale_for + 1), heartbeat_at=now - timedelta(seconds=stale_for))
    )
    db.commit()
    assert leases.to_wake(db, Job) == [job.id]
    assert leases.to_wake(db, Job) == []  # sent: the next call waits a stale period


def test_info_counts_live_workers_and_lists_them_for_admins(client, db, user_factory, monkeypatch):
    add_worker(db, "small:1", routing.worker_queues(23.6))
    add_worker(db, "gone:2", ["gpu"], age_seconds=get_settings().heartbeat_stale_seconds + 5)
    _, user_token = user_factory("user")
    _, admin_token = user_factory("root")
    monkeypatch.setattr(get_settings(), "admin_users", "ops, root")

    info = client.get("/api/info", headers={"Authorization": f"Bearer {user_token}"}).json()
    assert (info["live_workers"], info["workers"]) == (1, None)
    info = client.get("/api/info", headers={"Authorization": f"Bearer {admin_token}"}).json()
    assert [worker["name"] for worker in info["workers"]] == ["small:1"]
    assert info["workers"][0]["queues"] == ["gpu-12gb", "gpu-16gb", "gpu-24gb", "gpu"]
    assert info["workers"][0]["gpu_memory_gib"] == 24.0

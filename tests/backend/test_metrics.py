"""GET /metrics: the service's state in Prometheus' text format, read from Postgres and the broker at each scrape."""

import uuid
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend import queue
from backend.models import Generation, Job, WebhookDelivery, WebhookEvent, Worker, utcnow
from backend.queue import TRAIN_TASK, make_celery
from backend.routing import WAITING_FOR_GPU
from backend.settings import Settings, get_settings

# The job states the test makes: how many of each (none cancelled, which must still show as 0).
JOBS = {"queued": 3, "running": 1, "succeeded": 2, "failed": 1}


def scrape(client) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted label pairs): value}, parsed by prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.fixture
def world(db, user_factory, broker) -> None:
    """Jobs in several states (one queued for 5 minutes, one waiting for a GPU), generations, a live and a gone
    worker, and wake-up calls waiting in two queues."""
    owner, _token = user_factory("alice")
    now = utcnow()
    jobs = [
        Job(owner_id=owner.id, settings={}, status=state, created_at=now - timedelta(seconds=10), queue="gpu-12gb")
        for state, count in JOBS.items()
        for _ in range(count)
    ]
    jobs[0].created_at = now - timedelta(minutes=5)
    jobs[1].queue, jobs[1].note = "gpu-80gb", WAITING_FOR_GPU
    db.add_all(jobs)
    db.flush()
    db.add_all(
        Generation(job_id=jobs[-2].id, owner_id=owner.id, params={}, status=state)
        for state in ("queued", "running", "succeeded", "succeeded")
    )
    stale = now - timedelta(seconds=get_settings().heartbeat_stale_seconds + 5)
    for name, heartbeat, queues in (("live", now, ["gpu-24gb", "gpu-12gb", "gpu"]), ("gone", stale, ["gpu-48gb"])):
        db.add(Worker(name=name, hostname="box", families=["sd1"], queues=queues, heartbeat_at=heartbeat))
    db.commit()
    events = [
        WebhookEvent(event_id=uuid.uuid4(), owner_id=owner.id, job_id=jobs[-2].id, type="job.succeeded",
                     url="https://example.com/hook", body="{}", status=status)
        for status in ("pending", "delivered", "delivered", "failed")
    ]  # fmt: skip
    db.add_all(events)
    db.flush()
    db.add_all(
        WebhookDelivery(event_id=event.id, owner_id=owner.id, attempt=1, url=event.url, status_code=code, error=error,
                        duration_ms=5)
        for event, code, error in ((events[1], 200, None), (events[2], 503, "HTTP 503"), (events[2], 204, None),
                                   (events[3], None, "connection refused"))
    )  # fmt: skip
    db.commit()
    for queue_name in ("gpu-12gb", "gpu-12gb", "gpu-80gb"):
        queue.client().send_task(TRAIN_TASK, args=[str(jobs[0].id)], queue=queue_name)


def test_metrics_show_jobs_generations_queues_and_workers(client, world):
    metrics = scrape(client)

    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert metrics["dreambooth_jobs", (("state", state),)] == JOBS.get(state, 0)
    expected_generations = {"queued": 1, "running": 1, "succeeded": 2, "failed": 0}
    for state, count in expected_generations.items():
        assert metrics["dreambooth_generations", (("state", state),)] == count
    # note: the queues in use are those jobs were routed to, those live workers read, and "gpu"; not the gone
    # worker's gpu-48gb
    depths = {labels[0][1]: value for (name, labels), value in metrics.items() if name == "dreambooth_queue_depth"}
    assert depths == {"gpu": 0, "gpu-12gb": 2, "gpu-24gb": 0, "gpu-80gb": 1}
    assert 300 <= metrics["dreambooth_oldest_queued_age_seconds", (("kind", "job"),)] < 360
    assert 0 < metrics["dreambooth_oldest_queued_age_seconds", (("kind", "generation"),)] < 60
    assert metrics["dreambooth_jobs_waiting_for_gpu", ()] == 1
    assert metrics["dreambooth_workers_live", ()] == 1
    webhook_events = {"pending": 1, "delivered": 2, "failed": 1}
    for state, count in webhook_events.items():
        assert metrics["dreambooth_webhook_events", (("state", state),)] == count
    assert metrics["dreambooth_webhook_attempts", (("result", "delivered"),)] == 2
    assert metrics["dreambooth_webhook_attempts", (("result", "failed"),)] == 2
    assert metrics["dreambooth_metrics_source_up", (("source", "database"),)] == 1
    assert metrics["dreambooth_metrics_source_up", (("source", "broker"),)] == 1


def test_an_empty_service_shows_zeros(client, db, broker):
    metrics = scrape(client)
    assert {value for (name, _), value in metrics.items() if name == "dreambooth_jobs"} == {0}
    assert metrics["dreambooth_oldest_queued_age_seconds", (("kind", "job"),)] == 0
    assert metrics["dreambooth_queue_depth", (("queue", "gpu"),)] == 0
    assert metrics["dreambooth_workers_live", ()] == 0


def test_a_broker_that_is_down_leaves_the_database_metrics(client, world, monkeypatch):
    dead = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(queue, "client", lambda: dead)
    metrics = scrape(client)
    assert metrics["dreambooth_metrics_source_up", (("source", "broker"),)] == 0
    assert not [name for name, _ in metrics if name == "dreambooth_queue_depth"]
    assert metrics["dreambooth_jobs", (("state", "queued"),)] == 3


def test_metrics_need_no_token_and_stay_out_of_the_api_schema(client, db, broker):
    assert client.get("/metrics").status_code == 200
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]

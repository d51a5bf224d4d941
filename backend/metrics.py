"""The API's Prometheus metrics (`GET /metrics`): the service's state, read from Postgres and the broker at
each scrape.

note: a custom collector computes every value when Prometheus scrapes, instead of counters kept in the
process, so that any number of API processes (uvicorn --workers) answer the same truth, with no
multiprocess mode and nothing lost on a restart. What only the process running a job sees (job and phase
durations, steps per second, peak GPU memory) each worker serves itself (worker/metrics.py).
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend import queue, routing
from backend.db import get_sessionmaker
from backend.models import (
    Generation,
    GenerationStatus,
    Job,
    JobStatus,
    WebhookDelivery,
    WebhookEvent,
    WebhookStatus,
    utcnow,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

BROKER_TIMEOUT_SECONDS = 2.0


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus' text format (or OpenMetrics, as the scraper's Accept asks). No token, like the probes: it
    shows counts, never a user's data."""
    # note: a sync route, so the scrape's queries run in the thread pool, not on the event loop
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), media_type=content_type)


# ---------------------------------------------------------------------- from the database


def work_metrics(session: Session) -> Iterator[Metric]:
    """Jobs and generations by state, the oldest queued one's wait, and the jobs no live worker can fit."""
    yield _by_state("dreambooth_jobs", "Jobs by state.", session, Job, JobStatus)
    yield _by_state("dreambooth_generations", "Generations by state.", session, Generation, GenerationStatus)
    oldest = GaugeMetricFamily(
        "dreambooth_oldest_queued_age_seconds",
        "How long the oldest queued job (or generation) has waited since it was made; 0 when none waits.",
        labels=["kind"],
    )
    now = utcnow()
    for kind, model in (("job", Job), ("generation", Generation)):
        created = session.scalar(select(func.min(model.created_at)).where(model.status == JobStatus.queued))
        oldest.add_metric([kind], (now - created).total_seconds() if created else 0.0)
    yield oldest
    waiting = select(func.count()).where(Job.status == JobStatus.queued, Job.note == routing.WAITING_FOR_GPU)
    yield GaugeMetricFamily(
        "dreambooth_jobs_waiting_for_gpu",
        "Queued jobs that no live worker's GPU can fit.",
        value=session.scalar(waiting),
    )


def worker_metrics(session: Session) -> Iterator[Metric]:
    """Live workers: those heard from in the workers table within HEARTBEAT_STALE_SECONDS."""
    yield GaugeMetricFamily(
        "dreambooth_workers_live", "Worker processes with a fresh heartbeat.", value=len(routing.live_workers(session))
    )


def webhook_metrics(session: Session) -> Iterator[Metric]:
    """The webhook outbox (backend/webhooks.py): its events by state, and the delivery attempts it keeps, by
    result. Gauges, not counters: ended events are deleted after WEBHOOK_RETENTION_DAYS."""
    yield _by_state("dreambooth_webhook_events", "Webhook events in the outbox by state.", session, WebhookEvent,
                    WebhookStatus)  # fmt: skip
    failed = WebhookDelivery.error.is_not(None)
    counts = dict(session.execute(select(failed, func.count()).group_by(failed)).all())
    attempts = GaugeMetricFamily(
        "dreambooth_webhook_attempts", "Webhook delivery attempts the outbox keeps, by result.", labels=["result"]
    )
    attempts.add_metric(["delivered"], counts.get(False, 0))
    attempts.add_metric(["failed"], counts.get(True, 0))
    yield attempts


# What the database tells, one function each: (session) -> metrics.
DATABASE_SOURCES: tuple[Callable[[Session], Iterator[Metric]], ...] = (work_metrics, worker_metrics, webhook_metrics)


def _by_state(name: str, documentation: str, session: Session, model, states) -> Metric:
    """A gauge of `model`'s rows by status, every state present (0 when none is in it)."""
    counts = dict(session.execute(select(model.status, func.count()).group_by(model.status)).all())
    gauge = GaugeMetricFamily(name, documentation, labels=["state"])
    for state in states:
        gauge.add_metric([state.value], counts.get(state.value, 0))
    return gauge


def queue_names(session: Session) -> list[str]:
    """The Celery queues in use: every queue jobs were routed to, those live workers consume, and "gpu"."""
    routed = session.scalars(select(Job.queue).where(Job.queue.is_not(None)).distinct())
    return sorted({queue.GPU_QUEUE, *routed, *routing.live_queues(session)})


# ---------------------------------------------------------------------- from the broker


def queue_metrics(names: list[str]) -> Metric:
    """Messages waiting in each Celery queue (delivered but unacknowledged ones are not waiting)."""
    depth = GaugeMetricFamily("dreambooth_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"])
    with queue.client().connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)
        channel = connection.default_channel
        for name in names:
            # note: kombu's own count for its transport: LLEN of the queue's lists on Redis (one per priority),
            # the visible rows of kombu_message with the embedded SQLite broker
            depth.add_metric([name], channel._size(name))
    return depth


# ---------------------------------------------------------------------- the collector


class StudioCollector(Collector):
    """Everything /metrics shows, gathered at each scrape. A source that fails (the database, the broker) is
    left out, with dreambooth_metrics_source_up 0 for it, and the other still answers."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "dreambooth_metrics_source_up", "Whether a source of these metrics answered this scrape.", labels=["source"]
        )
        gathered: list[Metric] = []
        names = [queue.GPU_QUEUE]
        with _answering(up, "database"), get_sessionmaker()() as session:
            gathered += [metric for source in DATABASE_SOURCES for metric in source(session)]
            names = queue_names(session)
        with _answering(up, "broker"):
            gathered.append(queue_metrics(names))
        yield from gathered
        yield up


@contextmanager
def _answering(up: GaugeMetricFamily, source: str) -> Iterator[None]:
    """Runs the block that reads `source`, and notes in `up` whether it answered; a failure is logged, not raised."""
    try:
        yield
    except Exception as exc:
        log.warning("metrics: the %s is unavailable: %s", source, exc)
        up.add_metric([source], 0)
    else:
        up.add_metric([source], 1)


REGISTRY = CollectorRegistry()
REGISTRY.register(StudioCollector())

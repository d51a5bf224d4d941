"""Task names and the Celery client the API uses to enqueue by name (it never imports worker code)."""

from functools import lru_cache

from celery import Celery

from backend.settings import Settings, get_settings

TRAIN_TASK = "dreambooth.train"
GENERATE_TASK = "dreambooth.generate"
GPU_QUEUE = "gpu"


def make_celery(settings: Settings) -> Celery:
    """The Celery app both sides share: broker, routing and reliability settings."""
    app = Celery("dreambooth_studio", broker=settings.broker_url)
    app.conf.update(
        # note: Postgres is the source of truth for results; Celery only carries wake-up calls.
        task_ignore_result=True,
        task_default_queue=GPU_QUEUE,
        # A job is acknowledged only after it ran, so a worker killed mid-job leaves it to redeliver.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def _transport_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("sqla+"):
        # note: kombu's SQLAlchemy transport hands every option to create_engine, so none apply.
        return {}
    return {"visibility_timeout": settings.broker_visibility_timeout_seconds}


@lru_cache
def client() -> Celery:
    return make_celery(get_settings())


def enqueue_training(job_id: str, queue: str | None = None) -> None:
    """Send a job's wake-up call to the queue it was routed to (backend/routing.py); `gpu` for jobs made
    before routing, which every worker reads."""
    client().send_task(TRAIN_TASK, args=[job_id], queue=queue or GPU_QUEUE)


def enqueue_generation(generation_id: str) -> None:
    """Queue a generation behind the training jobs already waiting: same GPU queue, first in first out."""
    client().send_task(GENERATE_TASK, args=[generation_id], queue=GPU_QUEUE)

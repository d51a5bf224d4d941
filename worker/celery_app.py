"""The worker's Celery app: the shared broker settings, the tasks this process runs, its reaper.

Start it with `celery -A worker.celery_app worker --pool solo --concurrency 1` (one per GPU).
"""

import logging

from celery.signals import setup_logging, worker_ready, worker_shutdown

from backend.queue import make_celery
from backend.settings import get_settings
from worker.reaper import Reaper

app = make_celery(get_settings())
app.conf.update(
    include=["worker.tasks", "worker.generation_tasks"],
    # note: with late acks, a task cut off by a lost broker connection is redelivered, not lost.
    worker_cancel_long_running_tasks_on_connection_loss=True,
    worker_hijack_root_logger=False,
)


@setup_logging.connect
def _configure_logging(**_kwargs) -> None:
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(name)s [%(processName)s] %(message)s",
    )


_reaper: Reaper | None = None


@worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    global _reaper
    _reaper = Reaper()
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    if _reaper is not None:
        _reaper.stop()

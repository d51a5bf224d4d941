"""The worker's Celery app: the shared broker settings plus the tasks this process runs.

Start it with `celery -A worker.celery_app worker --pool solo --concurrency 1` (one per GPU).
"""

import logging

from celery.signals import setup_logging

from backend.queue import make_celery
from backend.settings import get_settings

app = make_celery(get_settings())
app.conf.update(
    include=["worker.tasks"],
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

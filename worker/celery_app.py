"""The worker's Celery app: the shared broker settings, the tasks this process runs, its reaper.

Start it with `celery -A worker.celery_app worker --pool solo --concurrency 1` (one per GPU).
"""

import logging
from contextvars import Token

from celery.signals import celeryd_init, setup_logging, task_postrun, task_prerun, worker_ready, worker_shutdown
from kombu import Queue

from backend.logs import bind_work_ids, configure_logging, unbind_work_ids
from backend.queue import GENERATE_TASK, TRAIN_TASK, make_celery
from backend.settings import get_settings
from worker import metrics
from worker.presence import Presence, default_name, detect_hardware, queues_for
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
    configure_logging("%(asctime)s %(levelname)s %(name)s [%(processName)s] %(message)s")
    if get_settings().log_format == "json":
        # note: what libraries write to stderr themselves (transformers' notices, progress bars) becomes JSON
        # lines too, as Celery does when it sets up logging itself (our handler keeps the real stderr)
        redirected = logging.getLogger("celery.redirected")
        app.log.redirect_stdouts_to_logger(redirected, app.conf.worker_redirect_stdouts_level)


# The id a task's log lines carry while it runs (backend/logs.py): its one argument.
WORK_ID_FIELDS = {TRAIN_TASK: "job_id", GENERATE_TASK: "generation_id"}
_work_id_tokens: dict[str, Token] = {}


@task_prerun.connect
def _bind_work_id(task_id: str, task, args, **_kwargs) -> None:
    if (field := WORK_ID_FIELDS.get(task.name)) and args:
        _work_id_tokens[task_id] = bind_work_ids(**{field: args[0]})


@task_postrun.connect
def _unbind_work_id(task_id: str, **_kwargs) -> None:
    if token := _work_id_tokens.pop(task_id, None):
        unbind_work_ids(token)


@worker_ready.connect
def _serve_metrics(**_kwargs) -> None:
    metrics.serve(get_settings().worker_metrics_port)


_reaper: Reaper | None = None
_presence: Presence | None = None


@celeryd_init.connect
def _choose_queues(conf, options, **_kwargs) -> None:
    """Read the queues this worker's GPU fits (backend/routing.py), unless `-Q` named them."""
    global _presence
    hardware = detect_hardware()
    if named := options.get("queues"):
        queues = named if isinstance(named, list) else [name.strip() for name in str(named).split(",")]
    else:
        queues = queues_for(hardware)
        conf.task_queues = [Queue(name) for name in queues]
    _presence = Presence(default_name(), hardware, queues)
    logging.getLogger(__name__).info("worker: %s, reading the queues %s", hardware, ", ".join(queues))


@worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    global _reaper
    if _presence is not None:
        _presence.start()
    _reaper = Reaper()
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    if _reaper is not None:
        _reaper.stop()
    if _presence is not None:
        _presence.stop()

"""Which Celery queue a job goes to, and which queues a worker reads: routing by GPU memory.

Workers are grouped into GPU classes by their memory (GPU_CLASSES_GIB, for example 12, 16, 24, 48 and 80
GiB). Each class has a queue, `gpu-24gb` say. A worker reads the queue of its own class and of every
smaller class, so a large GPU also takes small jobs when it has nothing else to do, and a job goes to the
queue of the smallest class that can fit it (formats/families.py's least memory for its family and
training method). So a job that needs 30 GiB is only ever read by workers of 48 GiB and more.

A job whose queue no live worker reads waits, queued, with the note `waiting_for_gpu`; its message waits in
its queue, and the first worker that reads that queue takes it. Workers record what they have in the
`workers` table (worker/presence.py) at start and every few seconds; each worker's reaper brings the notes
up to date, so a note appears when the last fitting worker goes away and clears when one comes.

Generations and the legacy queue `gpu` are read by every worker: rendering fits any class.
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend.models import Job, JobStatus, Worker, utcnow
from backend.queue import GPU_QUEUE
from backend.settings import get_settings
from formats.families import min_gpu_memory_gib

WAITING_FOR_GPU = "waiting_for_gpu"

# A card sold as "16 GB" reports less to the driver (a T4: 14.7 GiB; a "24 GB" 4090: 23.6 GiB). A worker
# belongs to a class when it has at least this share of the class's memory.
CLASS_SHARE = 0.9


def gpu_classes() -> list[float]:
    """The GPU classes in GiB, smallest first (GPU_CLASSES_GIB)."""
    return sorted({float(value) for value in get_settings().gpu_classes_gib.split(",") if value.strip()})


def class_queue(gib: float) -> str:
    """The queue of a GPU class: "gpu-24gb"."""
    return f"gpu-{gib:g}gb"


def needed_gib(family: str | None, settings: dict[str, Any]) -> float:
    """The least GPU memory a job with these training settings needs (0: any GPU)."""
    method = settings.get("training_method", "full")
    if method == "pivotal":
        # note: a pivotal run's second phase is the larger; its first trains a few embedding rows
        method = settings.get("pivotal_second_phase", "full")
    return min_gpu_memory_gib(family, method)


def job_queue(family: str | None, settings: dict[str, Any]) -> str:
    """The queue of the smallest GPU class that fits the job (the largest class when none does)."""
    need = needed_gib(family, settings)
    classes = gpu_classes()
    return class_queue(next((gib for gib in classes if gib >= need), classes[-1]))


def all_queues() -> list[str]:
    """Every queue a job or a generation may be sent to: each GPU class's, smallest first, then `gpu`."""
    return [*(class_queue(gib) for gib in gpu_classes()), GPU_QUEUE]


def worker_queues(gpu_memory_gib: float | None) -> list[str]:
    """The queues a worker with this much GPU memory reads: its class and every smaller one, and `gpu`.

    A worker without a GPU (demo mode, a CPU test box) reads every queue: whatever it takes it trains slowly,
    and nothing would wait for it otherwise. A GPU below the smallest class reads the smallest class's queue
    (the memory planner fits what it can).
    """
    if gpu_memory_gib is None:
        return all_queues()
    classes = gpu_classes()
    fitting = [gib for gib in classes if gpu_memory_gib >= gib * CLASS_SHARE] or classes[:1]
    return [*(class_queue(gib) for gib in fitting), GPU_QUEUE]


def live_workers(session: Session) -> list[Worker]:
    """Workers heard from within the stale period, newest first."""
    since = utcnow() - timedelta(seconds=get_settings().heartbeat_stale_seconds)
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= since).order_by(Worker.name)))


def live_queues(session: Session) -> set[str]:
    """Every queue some live worker reads."""
    return {name for worker in live_workers(session) for name in worker.queues}


def note_for(queue: str, queues_read: set[str]) -> str | None:
    """The note of a queued job in `queue` when the live workers read `queues_read`."""
    return None if queue in queues_read else WAITING_FOR_GPU


def route(session: Session, job: Job) -> str:
    """Give a new job its queue and note (uncommitted); returns the queue."""
    job.queue = job_queue(job.family, job.settings)
    job.note = note_for(job.queue, live_queues(session))
    return job.queue


def refresh_notes(session: Session) -> None:
    """Bring the `waiting_for_gpu` notes of queued jobs up to date with the live workers (committed)."""
    queues_read = live_queues(session)
    queued = Job.status == JobStatus.queued
    waiting = Job.queue.not_in(queues_read) if queues_read else Job.queue.is_not(None)
    session.execute(update(Job).where(queued, waiting, Job.note.is_(None)).values(note=WAITING_FOR_GPU))
    if queues_read:
        session.execute(
            update(Job).where(queued, Job.queue.in_(queues_read), Job.note == WAITING_FOR_GPU).values(note=None)
        )
    session.commit()


# A worker not heard from in this long is forgotten (its row deleted).
FORGET_WORKERS_AFTER = timedelta(days=1)


def forget_gone_workers(session: Session) -> None:
    """Delete the rows of workers not heard from in a day (committed)."""
    session.execute(delete(Worker).where(Worker.heartbeat_at < utcnow() - FORGET_WORKERS_AFTER))
    session.commit()

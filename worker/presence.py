"""A worker's presence: what it has (GPU, memory, families, queues), recorded in the `workers` table.

The worker writes its row when it starts and every `worker_heartbeat_seconds` after, from a daemon thread;
the API reads the live rows to route jobs and to say which ones wait for a GPU (backend/routing.py), and
`/api/info` shows them. A row whose heartbeat is older than `heartbeat_stale_seconds` is a worker gone; the
reaper deletes rows not heard from in a day.
"""

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from backend import routing
from backend.db import get_sessionmaker
from backend.models import Worker, utcnow
from backend.settings import get_settings
from formats.families import FAMILIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    """The GPUs this worker process may use: the first one's name and memory, and how many there are."""

    gpu_name: str | None = None
    gpu_memory_gib: float | None = None
    gpu_count: int = 0
    families: list[str] = field(default_factory=lambda: list(FAMILIES))


def detect_hardware() -> Hardware:
    """What CUDA shows this process (CUDA_VISIBLE_DEVICES applies); no GPU on a machine without one."""
    import torch  # note: only the worker calls this, once at start; the first job imports torch anyway

    if not torch.cuda.is_available():
        return Hardware()
    properties = torch.cuda.get_device_properties(0)
    return Hardware(
        gpu_name=properties.name,
        gpu_memory_gib=round(properties.total_memory / 2**30, 2),
        gpu_count=torch.cuda.device_count(),
    )


def queues_for(hardware: Hardware) -> list[str]:
    """The queues this worker reads: WORKER_QUEUES when set, else those its GPU's memory picks."""
    chosen = [name.strip() for name in get_settings().worker_queues.split(",") if name.strip()]
    return chosen or routing.worker_queues(hardware.gpu_memory_gib)


def default_name() -> str:
    """A name unique to this process: several workers may share a host and even a Celery node name."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Presence:
    """Writes this worker's row now and then every `worker_heartbeat_seconds` on a daemon thread, until stopped."""

    def __init__(self, name: str, hardware: Hardware, queues: list[str]):
        self.name, self.hardware, self.queues = name, hardware, queues
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)

    def start(self) -> None:
        self.beat()
        routing_refresh()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and mark the row gone at once, so no job is routed to this worker any more."""
        self._stopped.set()
        self._thread.join(timeout=10)
        try:
            with get_sessionmaker()() as session:
                if worker := session.get(Worker, self.name):
                    session.delete(worker)
                    session.commit()
            routing_refresh()
        except Exception:
            log.exception("presence: could not remove this worker's row")

    def beat(self) -> None:
        """Insert or update this worker's row."""
        now = utcnow()
        with get_sessionmaker()() as session:
            worker = session.get(Worker, self.name) or Worker(name=self.name, started_at=now)
            worker.hostname = socket.gethostname()
            worker.gpu_name = self.hardware.gpu_name
            worker.gpu_memory_gib = self.hardware.gpu_memory_gib
            worker.gpu_count = self.hardware.gpu_count
            worker.families = self.hardware.families
            worker.queues = self.queues
            worker.heartbeat_at = now
            session.add(worker)
            session.commit()

    def _run(self) -> None:
        while not self._stopped.wait(get_settings().worker_heartbeat_seconds):
            try:
                self.beat()
            except Exception:
                # note: the database may be down for a while; the next beat tries again.
                log.exception("presence: a heartbeat failed")


def routing_refresh() -> None:
    """Clear the waiting notes of jobs this worker can take (and set those nobody can), right away."""
    try:
        with get_sessionmaker()() as session:
            routing.refresh_notes(session)
    except Exception:
        log.exception("presence: could not bring the waiting notes up to date")

"""Progress reports from the training loop to the job row: throttled, fenced, with a heartbeat.

The core calls `on_progress` every step and `should_stop` every step; this turns that into at most
about one database write a second, plus a background heartbeat so long silent phases (loading a
model, sampling) never look like a dead worker. Past the soft time limit `should_stop` says stop.
"""

import logging
import threading
import time

from backend import jobs
from backend.db import get_sessionmaker
from backend.jobs import Lease, LeaseLost
from backend.settings import get_settings
from worker.dreambooth.config import Progress

log = logging.getLogger(__name__)


class JobReporter:
    """Reports one job's progress under its lease; use as a context manager to run the heartbeat."""

    def __init__(self, lease: Lease):
        self.lease = lease
        settings = get_settings()
        self._interval = settings.progress_interval_seconds
        self._heartbeat_every = max(1.0, settings.heartbeat_stale_seconds / 4)
        self._deadline = time.monotonic() + settings.job_soft_time_limit_seconds
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._last_phase: str | None = None
        self._cancel_requested = False
        self.lease_lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{lease.job_id}", daemon=True)

    def __enter__(self) -> "JobReporter":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stopped.set()
        self._thread.join()

    def on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        phase_changed = progress.phase != self._last_phase
        if not phase_changed and now - self._last_write < self._interval:
            return
        self._last_phase = progress.phase
        self._write(
            jobs.record_progress,
            phase=progress.phase,
            step=progress.step,
            total_steps=progress.total_steps,
            loss=progress.loss,
            eta_seconds=progress.eta_seconds,
        )

    @property
    def timed_out(self) -> bool:
        """Whether this attempt has run past the soft time limit."""
        return time.monotonic() >= self._deadline

    def should_stop(self) -> bool:
        """Whether to stop: the owner cancelled, the job is no longer ours, or it ran out of time."""
        if time.monotonic() - self._last_write >= self._interval:
            self._write(jobs.heartbeat)
        return self._cancel_requested or self.lease_lost or self.timed_out

    def _beat(self) -> None:
        while not self._stopped.wait(self._heartbeat_every):
            self._write(jobs.heartbeat)

    def _write(self, write, **values) -> None:
        if self.lease_lost:
            return
        with self._lock, get_sessionmaker()() as session:
            self._last_write = time.monotonic()
            try:
                self._cancel_requested = write(session, self.lease, **values)
            except LeaseLost:
                log.warning("job %s: lease lost, stopping", self.lease.job_id)
                self.lease_lost = True
            except Exception:
                # note: a database blip must not kill a long training run; the next write retries.
                log.exception("job %s: progress write failed", self.lease.job_id)

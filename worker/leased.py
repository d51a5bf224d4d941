"""The worker's side of leased work (backend/leases.py), for training jobs and generations alike.

While the work runs, a Heartbeat keeps its lease fresh from a background thread, so long silent
phases (loading a model, sampling, rendering) never look like a dead worker, and fences every write
under the lease. At the end, `record_outcome` writes the outcome, riding out a database outage.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Self, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from backend import leases
from backend.db import get_sessionmaker
from backend.leases import Lease, LeaseLost
from backend.settings import get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a database that is down (or restarting) raises.
DATABASE_DOWN = (OperationalError, InterfaceError)


class Heartbeat:
    """Holds a lease while its work runs: beats every quarter of the stale period on a daemon thread, and
    notes when the lease is lost. Use as a context manager."""

    def __init__(self, lease: Lease):
        self.lease = lease
        self.lease_lost = False
        self.last_write = 0.0
        self._every = max(1.0, get_settings().heartbeat_stale_seconds / 4)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.id}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stopped.set()
        self._thread.join()

    def beat(self) -> None:
        """Prove the worker is alive."""
        self.write(leases.heartbeat)

    def write(self, write: Callable[..., T], **values) -> T | None:
        """write(session, lease, **values), one at a time; None once the lease is lost, or if the database failed."""
        if self.lease_lost:
            return None
        with self._lock, get_sessionmaker()() as session:
            self.last_write = time.monotonic()
            try:
                return write(session, self.lease, **values)
            except LeaseLost:
                log.warning("%s: lease lost, stopping", self.lease)
                self.lease_lost = True
            except Exception:
                # note: a database blip must not stop the work; the next write retries.
                log.exception("%s: a write under the lease failed", self.lease)
        return None

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            self.beat()


def record_outcome(lease: Lease, status: str, finish: Callable[[Session], None]) -> bool:
    """finish(session), the fenced write of the outcome; False if the lease was lost meanwhile.

    While the database is down it retries with backoff for `finish_retry_seconds`, then raises
    and leaves the work to the reaper.
    """
    deadline = time.monotonic() + get_settings().finish_retry_seconds
    delay = 1.0
    while True:
        try:
            with get_sessionmaker()() as session:
                finish(session)
            return True
        except LeaseLost:
            log.warning("%s: lease lost before it could be marked %s", lease, status)
            return False
        except DATABASE_DOWN as exc:
            if time.monotonic() + delay > deadline:
                log.error("%s: the database stayed unreachable; leaving it to the reaper", lease)
                raise
            log.warning("%s: could not record %s (%s); retrying in %.0f s", lease, status, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def clean_up_after_lost_lease(lease: Lease, clean_up: Callable[[Session], None]) -> None:
    """clean_up(session): remove what this run wrote if its work is gone or ended; the files stay if the database
    cannot say."""
    log.warning("%s: lease lost; stopping", lease)
    try:
        with get_sessionmaker()() as session:
            clean_up(session)
    except DATABASE_DOWN:
        log.exception("%s: could not check it after losing its lease", lease)

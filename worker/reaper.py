"""The reaper: a thread in every worker that moves on the jobs the normal flow lost.

Every `reaper_interval_seconds` it
* ends running jobs no worker will finish: stale and cancelled (`cancelled`), stale at the attempt
  limit (`worker_lost`), past the hard time limit (`timeout`), and removes their partial outputs;
* sends another wake-up call for jobs that need one: queued too long (the message may be lost), or
  running with a stale heartbeat and attempts left (a new worker claims and resumes them);
* deletes the raw photos of jobs that ended longer ago than `photo_retention_days`;
* brings the `waiting_for_gpu` notes of queued jobs up to date with the live workers, and forgets
  workers not heard from in a day (backend/routing.py);
* deletes webhook events that ended longer ago than `webhook_retention_days`, with their attempts;
* does the same for generations: fails stale ones at the attempt limit (`worker_lost`) and removes
  their partial images, and wakes queued ones that waited too long and stale ones with attempts left.

Why a thread in each worker rather than Celery beat: beat is one more process to deploy and must
run exactly once, and a dead beat would stop all recovery silently. Every worker already has the
database and the broker; each step is a conditional UPDATE, so any number of reapers can run at
once. A fresh worker sweeps at start, so jobs left by a crash are picked up as soon as any worker
is back.
"""

import logging
import shutil
import threading

from backend import generations, jobs, queue, routing, storage, webhooks
from backend.db import get_sessionmaker
from backend.settings import get_settings

log = logging.getLogger(__name__)


def sweep() -> None:
    """One pass of the reaper."""
    with get_sessionmaker()() as session:
        ended = jobs.end_abandoned_jobs(session)
        to_wake = jobs.jobs_to_wake(session)
        jobs.purge_expired_photos(session)
        ended_generations = generations.end_abandoned_generations(session)
        generations_woken = generations.generations_to_wake(session)
        routing.refresh_notes(session)
        routing.forget_gone_workers(session)
        webhooks.forget_old_events(session)
    for job_id in ended:
        storage.remove_job_outputs(job_id)
    for job_id, job_queue in to_wake:
        log.info("job %s: sending another wake-up call", job_id)
        queue.enqueue_training(str(job_id), job_queue)
    for job_id, generation_id in ended_generations:
        shutil.rmtree(generations.generation_dir(job_id, generation_id), ignore_errors=True)
    for generation_id in generations_woken:
        log.info("generation %s: sending another wake-up call", generation_id)
        queue.enqueue_generation(str(generation_id))


class Reaper:
    """Runs `sweep` now and then every interval on a daemon thread, until stopped."""

    def __init__(self, interval_seconds: float | None = None):
        self.interval = interval_seconds or get_settings().reaper_interval_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                sweep()
            except Exception:
                # note: the database or broker may be down for a while; the next pass tries again.
                log.exception("reaper: a sweep failed")
            self._stopped.wait(self.interval)

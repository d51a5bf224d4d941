"""Each worker's own Prometheus metrics: what happens inside its jobs, served on WORKER_METRICS_PORT.

note: counted in the process, unlike the API's (backend/metrics.py), because only the process that ran a job
saw how long its phases took, how fast it trained and how much GPU memory it used. Prometheus scrapes every
worker and sums or compares across them. A worker runs one job at a time (--pool solo), so the gauges of
"the last job" are that worker's last job.
"""

import logging
import sys
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from worker.dreambooth.config import Progress

log = logging.getLogger(__name__)

# How an attempt ended: the status recorded, or "lost" (the job was deleted, ended or taken over meanwhile).
OUTCOMES = ("succeeded", "failed", "cancelled", "lost")
LOST = "lost"

# From a few seconds (builtin:tiny on a CPU) to the 6 h soft time limit.
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)
PHASE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)

JOB_SECONDS = Histogram(
    "dreambooth_worker_job_duration_seconds",
    "Seconds an attempt at a training job took, from its claim to its outcome, by outcome.",
    ["outcome"],
    buckets=JOB_BUCKETS,
)
JOBS_PROCESSED = Counter(
    "dreambooth_worker_jobs_processed", "Attempts at training jobs this worker finished, by outcome.", ["outcome"]
)
PHASE_SECONDS = Histogram(
    "dreambooth_worker_phase_duration_seconds",
    "Seconds an attempt spent in each phase (preparing, generating_class_images, inversion, training, sampling, "
    "exporting): one observation per phase per attempt, its stretches summed.",
    ["phase"],
    buckets=PHASE_BUCKETS,
)
STEPS_PER_SECOND = Gauge(
    "dreambooth_worker_training_steps_per_second",
    "Optimizer steps per second of the last job that trained two steps or more (checkpoint saves included, "
    "sampling not).",
)
PEAK_GPU_MEMORY = Gauge(
    "dreambooth_worker_peak_gpu_memory_bytes",
    "Peak GPU memory PyTorch allocated during the last job on the device (torch.cuda.max_memory_allocated).",
    ["device"],  # note: labelled, so that a worker without CUDA shows no series at all rather than a 0
)
for _outcome in OUTCOMES:
    # note: every outcome's series exists from the start, so a rate over it sees the first job
    JOBS_PROCESSED.labels(_outcome)
    JOB_SECONDS.labels(_outcome)


def serve(port: int) -> None:
    """Serve this process's metrics on `port` (all interfaces) from a daemon thread; 0 serves nothing."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as exc:
        # note: a second worker on the same host and port must not fail to start; it goes unscraped, and says so
        log.error("metrics: cannot serve on port %d (%s); set WORKER_METRICS_PORT per worker", port, exc)
        return
    log.info("metrics: serving on port %d", port)


class JobClock:
    """Times one attempt at a job from its progress reports: seconds per phase, and training's steps per second.

    The core reports every step (worker/progress.py throttles only the database writes), so the steps per
    second come from consecutive training reports: the first step after a phase change (model loading,
    compilation, a validation) is not counted.
    """

    def __init__(self):
        self.started = time.monotonic()
        self.phase_seconds: dict[str, float] = {}
        self._phase: str | None = None
        self._phase_since = self.started
        self._last_training: tuple[float, int] | None = None  # (when, step) of the previous training report
        self._training_seconds, self._training_steps = 0.0, 0
        _reset_gpu_peak()

    def on_progress(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase != self._phase:
            self._end_phase(now)
            self._phase, self._phase_since, self._last_training = progress.phase, now, None
        if progress.phase == "training":
            if self._last_training is not None:
                then, step = self._last_training
                self._training_seconds += now - then
                self._training_steps += progress.step - step
            self._last_training = (now, progress.step)

    @property
    def steps_per_second(self) -> float | None:
        """Training's steps per second in this attempt; None before two training reports."""
        return self._training_steps / self._training_seconds if self._training_seconds > 0 else None

    def finish(self) -> float:
        """End the current phase; the attempt's seconds so far."""
        now = time.monotonic()
        self._end_phase(now)
        self._phase = None
        return now - self.started

    def _end_phase(self, now: float) -> None:
        if self._phase is not None:
            self.phase_seconds[self._phase] = self.phase_seconds.get(self._phase, 0.0) + now - self._phase_since


def observe_job(clock: JobClock, outcome: str) -> None:
    """Record an attempt that ended with `outcome` (one of OUTCOMES)."""
    JOB_SECONDS.labels(outcome).observe(clock.finish())
    JOBS_PROCESSED.labels(outcome).inc()
    for phase, seconds in clock.phase_seconds.items():
        PHASE_SECONDS.labels(phase).observe(seconds)
    if clock.steps_per_second is not None:
        STEPS_PER_SECOND.set(clock.steps_per_second)
    if cuda := _cuda():
        PEAK_GPU_MEMORY.labels(f"cuda:{cuda.current_device()}").set(cuda.max_memory_allocated())


def _cuda():
    """torch.cuda when this process already uses CUDA, else None (never imports torch or starts CUDA itself)."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_initialized() else None


def _reset_gpu_peak() -> None:
    """Start the peak over for a new attempt (the first attempt's process has not touched CUDA yet)."""
    if cuda := _cuda():
        cuda.reset_peak_memory_stats()

"""Progress reports from the training loop to the job row: throttled, fenced, with a heartbeat.

The core calls `on_progress` every step and `should_stop` every step; this turns that into at most
about one database write a second, on top of the lease's background heartbeat (worker/leased.py).
Past the soft time limit `should_stop` says stop.
"""

import time

from backend import jobs, storage
from backend.leases import Lease
from backend.models import Artifact
from backend.settings import get_settings
from worker.dreambooth.config import MemoryPlan, Progress
from worker.dreambooth.steps import Validation
from worker.leased import Heartbeat
from worker.metrics import JobClock

# The loss curve a job keeps: at most this many points, whatever the number of steps.
MAX_LOSS_POINTS = 400


class LossHistory:
    """A training loss curve in bounded memory: [step, mean loss] points, each the mean of `span` steps.

    When the points fill up, neighbours merge pairwise and the span doubles, so a 20,000-step run
    keeps a few hundred evenly spaced points, the same shape a plot of every step would show.
    """

    def __init__(self, points: list | None = None, max_points: int = MAX_LOSS_POINTS):
        self.max_points = max_points
        self.points: list[list] = [list(point) for point in points or []]
        self.span = _span_of(self.points)
        self._sum, self._count = 0.0, 0

    def add(self, step: int, loss: float) -> None:
        self._sum += loss
        self._count += 1
        if self._count < self.span:
            return
        self.points.append([step, round(self._sum / self._count, 6)])
        self._sum, self._count = 0.0, 0
        if len(self.points) >= self.max_points:
            pairs = zip(self.points[0::2], self.points[1::2])
            self.points = [[second[0], round((first[1] + second[1]) / 2, 6)] for first, second in pairs]
            self.span *= 2


def _span_of(points: list) -> int:
    """The span the saved points were made with (a resumed job goes on with it)."""
    if len(points) < 2:
        return 1
    return max(1, points[-1][0] - points[-2][0])


class JobReporter(Heartbeat):
    """Reports one job's progress under its lease; use as a context manager to run the heartbeat."""

    def __init__(self, lease: Lease, loss_history: list | None = None):
        super().__init__(lease)
        self.losses = LossHistory(loss_history)
        settings = get_settings()
        self._interval = settings.progress_interval_seconds
        self._deadline = time.monotonic() + settings.job_soft_time_limit_seconds
        self._last_phase: str | None = None
        self._last_loss: float | None = None
        self._cancel_requested = False
        self.clock = JobClock()  # the attempt's phase durations and steps per second, for the worker's metrics

    def on_progress(self, progress: Progress) -> None:
        self.clock.on_progress(progress)
        if progress.phase == "training" and progress.loss is not None:
            self.losses.add(progress.step, progress.loss)
            self._last_loss = progress.loss
        now = time.monotonic()
        phase_changed = progress.phase != self._last_phase
        if not phase_changed and now - self.last_write < self._interval:
            return
        self._last_phase = progress.phase
        self._write(
            jobs.record_progress,
            phase=progress.phase,
            step=progress.step,
            total_steps=progress.total_steps,
            # note: sampling and exporting report no loss of their own; the job keeps showing the last one
            loss=progress.loss if progress.loss is not None else self._last_loss,
            eta_seconds=progress.eta_seconds,
            loss_history=self.losses.points,
        )

    def on_validation(self, validation: Validation) -> None:
        """Record a validation step's samples, kept weights and scores at once (not throttled)."""
        artifacts = [
            Artifact(
                kind="sample",
                path=storage.relative(sample.path),
                size_bytes=sample.path.stat().st_size,
                step=sample.step,
                prompt=sample.prompt,
                seed=sample.seed,
            )
            for sample in validation.samples
        ]
        if validation.weights_dir is not None:
            artifacts.append(
                Artifact(
                    kind="weights",
                    path=storage.relative(validation.weights_dir),
                    size_bytes=sum(f.stat().st_size for f in validation.weights_dir.rglob("*") if f.is_file()),
                    step=validation.step,
                    format=validation.weights_format,
                    dtype="fp32",
                )
            )
        kept = set(validation.kept_steps)
        self._write(jobs.record_validation, artifacts=artifacts, kept_steps=kept, evaluation=validation.evaluation)

    def on_memory_plan(self, plan: MemoryPlan) -> None:
        """Record which memory savers memory_profile chose for this attempt (not throttled)."""
        self._write(jobs.record_memory_plan, memory_plan=plan.as_dict())

    @property
    def timed_out(self) -> bool:
        """Whether this attempt has run past the soft time limit."""
        return time.monotonic() >= self._deadline

    def should_stop(self) -> bool:
        """Whether to stop: the owner cancelled, the job is no longer ours, or it ran out of time."""
        if time.monotonic() - self.last_write >= self._interval:
            self.beat()
        return self._cancel_requested or self.lease_lost or self.timed_out

    def beat(self) -> None:
        """Prove the worker is alive, and hear whether the owner asked to cancel."""
        self._write(jobs.heartbeat)

    def _write(self, write, **values) -> None:
        """A fenced job write (see Heartbeat.write) that keeps the cancel flag it returns."""
        cancel_requested = self.write(write, **values)
        if cancel_requested is not None:
            self._cancel_requested = cancel_requested

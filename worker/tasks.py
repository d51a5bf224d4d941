"""Celery tasks: the only glue between the job table and the Dreambooth core.

A task claims its job (a duplicate delivery finds it taken and returns), runs the core with a
reporter, records the files the core made, and ends the job. The message is only a wake-up call:
everything the task needs it reads again from the database.
"""

import dataclasses
import errno
import logging
import shutil
import uuid
from pathlib import Path

from backend import jobs, storage
from backend.db import get_sessionmaker
from backend.jobs import Lease, LeaseLost
from backend.models import Artifact, Job, JobStatus
from backend.queue import TRAIN_TASK
from worker.celery_app import app
from worker.dreambooth.config import TrainConfig, TrainResult
from worker.progress import JobReporter

log = logging.getLogger(__name__)


class JobError(Exception):
    """A failure with a stable code and a message the user can act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> None:
    run_training_job(uuid.UUID(job_id))


def run_training_job(job_id: uuid.UUID) -> None:
    """Claim the job, train, and record the outcome; safe to call twice for the same job."""
    with get_sessionmaker()() as session:
        lease = jobs.claim_job(session, job_id)
        if lease is None:
            log.info("job %s: not claimable (taken, finished, cancelled or gone); skipping", job_id)
            return
        job = session.get(Job, job_id)
        config = training_config(job)
    log.info("job %s: attempt %d started", job_id, lease.attempt)

    with JobReporter(lease) as reporter:
        try:
            result = _train(config, reporter)
            if reporter.lease_lost:
                return
            if result.stopped:
                _finish(lease, JobStatus.cancelled)
                return
            _finish(lease, JobStatus.succeeded, artifacts=_artifacts(result))
        except LeaseLost:
            log.warning("job %s: lease lost; another worker or a delete took over", job_id)
        except JobError as error:
            _finish(lease, JobStatus.failed, error.code, error.message)
        except Exception as exc:
            log.exception("job %s: training failed", job_id)
            _finish(lease, JobStatus.failed, "training_error", f"Training failed: {exc}"[:1000])


def training_config(job: Job) -> TrainConfig:
    """The core's configuration for a job: its settings, its photos and its output folder."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {key: value for key, value in job.settings.items() if key in known}
    for key in ("validation_prompts",):
        settings[key] = tuple(settings.get(key) or ())
    output_dir = storage.job_dir(job.id) / "output"
    # note: no resume yet, so a re-delivered job starts from a clean output folder.
    shutil.rmtree(output_dir, ignore_errors=True)
    return TrainConfig(
        **settings,
        instance_images=tuple(storage.resolve(photo.path) for photo in job.photos if photo.kind == "instance"),
        output_dir=output_dir,
        models_dir=storage.models_dir(),
    )


def _train(config: TrainConfig, reporter: JobReporter) -> TrainResult:
    # note: the ML stack is imported here, not at module load, so the worker starts quickly.
    import torch

    from worker.dreambooth.train import train as train_dreambooth

    try:
        return train_dreambooth(config, on_progress=reporter.on_progress, should_stop=reporter.should_stop)
    except torch.cuda.OutOfMemoryError:
        raise JobError(
            "out_of_memory",
            "The GPU ran out of memory. Lower train_batch_size or resolution, or turn on "
            "use_8bit_adam, gradient_checkpointing and mixed_precision fp16.",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise JobError("storage_error", "The server's disk is full; the job was stopped.") from None
        raise


def _artifacts(result: TrainResult) -> list[Artifact]:
    """Rows for the files the core wrote: samples, then the single-file checkpoints."""
    samples = [
        Artifact(
            kind="sample",
            path=storage.relative(sample.path),
            size_bytes=sample.path.stat().st_size,
            step=sample.step,
            prompt=sample.prompt,
            seed=sample.seed,
        )
        for sample in result.samples
    ]
    checkpoints = [
        Artifact(
            kind="checkpoint",
            path=storage.relative(path),
            size_bytes=Path(path).stat().st_size,
            step=result.final_step,
            format="single",
            dtype=dtype,
        )
        for dtype, path in result.checkpoints.items()
    ]
    return samples + checkpoints


def _finish(
    lease: Lease,
    status: JobStatus,
    code: str | None = None,
    message: str | None = None,
    artifacts: list[Artifact] = (),
) -> None:
    with get_sessionmaker()() as session:
        try:
            jobs.finish_job(session, lease, status, code, message, artifacts)
        except LeaseLost:
            log.warning("job %s: lease lost before it could be marked %s", lease.job_id, status)

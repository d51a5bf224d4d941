"""Celery tasks: the only glue between the job table and the Dreambooth core.

A task claims its job (a duplicate delivery finds it taken and returns), runs the core with a
reporter, records the files the core made, and ends the job. The message is only a wake-up call:
everything the task needs it reads again from the database.
"""

import functools
import logging
import shutil
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import jobs, storage
from backend.db import get_sessionmaker
from backend.leases import Lease, LeaseLost
from backend.models import Artifact, Job, JobStatus
from backend.queue import TRAIN_TASK
from backend.settings import get_settings
from formats.embedding import EMBEDDING_FORMAT
from formats.lora import LORA_FORMATS
from worker import metrics
from worker.celery_app import app
from worker.core_config import core_config, drop_training_state, job_photos
from worker.dreambooth.config import STATE_DIR, TrainConfig, TrainResult
from worker.dreambooth.errors import JobError, storage_failure_as_error
from worker.dreambooth.steps import EVALUATION_FILE, SAMPLES_DIR, STEPS_DIR
from worker.leased import clean_up_after_lost_lease, record_outcome
from worker.progress import JobReporter

log = logging.getLogger(__name__)


# What a resumed attempt keeps of an earlier one's outputs (besides the training state).
VALIDATION_OUTPUTS = (SAMPLES_DIR, STEPS_DIR, EVALUATION_FILE)


# note: no Celery time_limit: the solo pool cannot enforce one. The soft limit stops training from
# inside (JobReporter), and the reaper fails a job still running at the hard limit.
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
    log.info("job %s: attempt %d started", job_id, lease.attempt)

    with get_sessionmaker()() as session:
        # note: a new attempt resumes from the last saved training state and redoes what came after it
        resume_step = _saved_step(storage.job_dir(job_id) / "output")
        jobs.forget_outputs_after(session, lease, resume_step)
        loss_history = session.scalar(select(Job.loss_history).where(Job.id == job_id))

    with JobReporter(lease, loss_history) as reporter:
        try:
            result = _run_core(job_id, reporter)
        except LeaseLost:
            outcome = _clean_up_after_lost_lease(lease)
        except JobError as error:
            outcome = _finish(lease, JobStatus.failed, error.code, error.message)
        except Exception as exc:
            log.exception("job %s: training failed", job_id)
            outcome = _finish(lease, JobStatus.failed, "training_error", f"Training failed: {exc}"[:1000])
        else:
            if reporter.lease_lost:
                outcome = _clean_up_after_lost_lease(lease)
            elif result.stopped and reporter.timed_out:
                limit = get_settings().job_soft_time_limit_seconds
                outcome = _finish(lease, JobStatus.failed, "timeout", jobs.timeout_message(limit))
            elif result.stopped:
                outcome = _finish(lease, JobStatus.cancelled)
            else:
                outcome = _finish(lease, JobStatus.succeeded, result=result)
    metrics.observe_job(reporter.clock, outcome)


def _run_core(job_id: uuid.UUID, reporter: JobReporter) -> TrainResult:
    """Read the job's configuration and train; a failing file store becomes `storage_error`."""

    def run() -> TrainResult:
        with get_sessionmaker()() as session:
            _auto_caption(session, reporter.lease, session.get(Job, job_id))
            config = training_config(session.get(Job, job_id))
        return _train(config, reporter)

    message = "The server could not write the job's files (its disk is full or failing)."
    return storage_failure_as_error(run, message, f"job {job_id}")


def _auto_caption(session: Session, lease: Lease, job: Job) -> None:
    """With caption_mode instance_plus_auto_caption, caption the instance photos their owner gave no caption and
    record the captions on their rows (once: a resumed attempt finds them captioned)."""
    if job.settings.get("caption_mode") != "instance_plus_auto_caption":
        return
    photos = [p for p in job.photos if p.kind == "instance" and not p.caption and not p.auto_caption]
    if not photos:
        return
    model = get_settings().caption_model
    if model == "none":
        message = "This server no longer captions photos (CAPTION_MODEL is none); caption them or use instance_only."
        raise JobError("captioning_unavailable", message)
    # note: the ML stack is imported here, not at module load, so the worker starts quickly
    from worker.dreambooth.captioner import caption_photos

    log.info("job %s: captioning %d photos with %s", job.id, len(photos), model)
    try:
        captions = caption_photos([storage.resolve(photo.path) for photo in photos], model, storage.models_dir())
    except OSError as exc:
        # note: from_pretrained's error for a model that is neither cached nor downloadable (HF_HUB_OFFLINE)
        message = f"The captioning model {model} could not be loaded: {exc}"[:1000]
        raise JobError("caption_model_error", message) from exc
    found = {photo.position: caption for photo, caption in zip(photos, captions, strict=True) if caption}
    jobs.record_auto_captions(session, lease, found)


def training_config(job: Job) -> TrainConfig:
    """The core's configuration for a job: its settings, photos and output folder, resuming any saved state."""
    output_dir = storage.job_dir(job.id) / "output"
    _clear_stale_outputs(output_dir)
    return core_config(
        job.settings,
        **job_photos(job.photos),
        output_dir=output_dir,
        models_dir=storage.models_dir(),
        cache_dir=storage.data_dir() / "cache",
        resume_from_checkpoint="latest",
    )


def _saved_step(output_dir: Path) -> int:
    """The step of the newest saved training state (what a new attempt resumes from); 0 for none."""
    # note: read from the folder names here; worker.dreambooth.state would import torch into every task
    steps = [int(path.name.split("-")[1]) for path in (output_dir / STATE_DIR).glob("checkpoint-[0-9]*")]
    return max(steps, default=0)


def _clear_stale_outputs(output_dir: Path) -> None:
    """Remove what an earlier attempt wrote but its saved training state, which this attempt resumes from,
    and its validation outputs (the core drops those after the resumed step)."""
    for path in output_dir.iterdir() if output_dir.is_dir() else ():
        if path.name in (STATE_DIR, *VALIDATION_OUTPUTS):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@functools.cache
def _base_models():
    """The worker's base-model cache: the last base model stays loaded between jobs."""
    from worker.dreambooth.components import ComponentCache

    return ComponentCache()


def _train(config: TrainConfig, reporter: JobReporter) -> TrainResult:
    # note: the ML stack is imported here, not at module load, so the worker starts quickly.
    from worker.dreambooth.train import train as train_dreambooth

    result = train_dreambooth(
        config,
        on_progress=reporter.on_progress,
        should_stop=reporter.should_stop,
        models=_base_models(),
        on_validation=reporter.on_validation,
        on_memory_plan=reporter.on_memory_plan,
    )
    if not result.stopped:
        drop_training_state(config)
    return result


FILE_FORMATS = (*LORA_FORMATS, EMBEDDING_FORMAT)  # final files named by their format, not by their dtype


def _artifacts(result: TrainResult) -> list[Artifact]:
    """Rows for the final files the core wrote: the single-file checkpoints, then the diffusers pipeline (the
    source the API builds diffusers downloads from). Samples and kept weights were recorded as they came."""
    checkpoints = [
        Artifact(
            kind="checkpoint",
            path=storage.relative(path),
            size_bytes=Path(path).stat().st_size,
            step=result.final_step,
            # note: the core names its files by dtype ("fp16", "fp32": single files) or by format (LoRA, the
            # learned embedding: fp32)
            format=name if name in FILE_FORMATS else "single",
            dtype="fp32" if name in FILE_FORMATS else name,
        )
        for name, path in result.checkpoints.items()
    ]
    pipeline = Artifact(
        kind="pipeline",
        path=storage.relative(result.pipeline_dir),
        size_bytes=sum(file.stat().st_size for file in result.pipeline_dir.rglob("*") if file.is_file()),
        step=result.final_step,
        format="diffusers",
        dtype="fp32",  # note: the core saves the pipeline in full precision; downloads may ask for fp16
    )
    return [*checkpoints, pipeline]


def _finish(
    lease: Lease,
    status: JobStatus,
    code: str | None = None,
    message: str | None = None,
    result: TrainResult | None = None,
) -> str:
    """Record the outcome (through a database outage, see record_outcome); a run that did not succeed leaves
    no partial outputs behind. Returns the outcome for the worker's metrics: `status`, or "lost"."""

    def finish(session: Session) -> None:
        jobs.finish_job(session, lease, status, code, message, _artifacts(result) if result else [])

    if not record_outcome(lease, status, finish):
        return _clean_up_after_lost_lease(lease)
    if status != JobStatus.succeeded:
        storage.remove_job_outputs(lease.id)
    return status.value


def _clean_up_after_lost_lease(lease: Lease) -> str:
    """Remove what this run wrote if its job was deleted or ended meanwhile (by its owner or the
    reaper); leave everything when another worker took the job over. Returns the outcome: "lost"."""

    def clean_up(session: Session) -> None:
        status = session.scalar(select(Job.status).where(Job.id == lease.id))
        if status is None:
            storage.remove_job_files(lease.id)
        elif status in (JobStatus.failed, JobStatus.cancelled):
            storage.remove_job_outputs(lease.id)

    clean_up_after_lost_lease(lease, clean_up)
    return metrics.LOST

"""Celery task of generations: claim one, render it from its job's trained weights, record the images.

Generations share the GPU queue with training jobs, first in first out. The trained model used last
stays loaded in the worker process, so more images from the same job and step start rendering at
once. As with training, the message is only a wake-up call: the task reads everything again.
"""

import functools
import logging
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import generations, storage
from backend.db import get_sessionmaker
from backend.generations import generation_dir
from backend.leases import Lease, LeaseLost
from backend.models import WEIGHT_KINDS, Generation, GenerationStatus, Job
from backend.queue import GENERATE_TASK
from backend.settings import get_settings
from worker.celery_app import app
from worker.dreambooth.errors import JobError, out_of_memory_as_error, storage_failure_as_error
from worker.leased import Heartbeat, clean_up_after_lost_lease, record_outcome

if TYPE_CHECKING:
    from worker.dreambooth.render import RenderedImage, RenderRequest, TrainedModel

log = logging.getLogger(__name__)


@app.task(name=GENERATE_TASK)
def generate(generation_id: str) -> None:
    run_generation(uuid.UUID(generation_id))


def run_generation(generation_id: uuid.UUID) -> None:
    """Claim the generation, render it, and record the outcome; safe to call twice for the same one."""
    with get_sessionmaker()() as session:
        lease = generations.claim_generation(session, generation_id)
        job_id = session.scalar(select(Generation.job_id).where(Generation.id == generation_id))
    if lease is None or job_id is None:
        log.info("generation %s: not claimable (taken, finished or gone); skipping", generation_id)
        return
    log.info("generation %s of job %s: attempt %d started", generation_id, job_id, lease.attempt)

    with Heartbeat(lease) as beat:
        try:
            images = _render(generation_id, beat)
        except LeaseLost:
            _clean_up_after_lost_lease(lease, job_id)
        except JobError as error:
            _finish(lease, job_id, GenerationStatus.failed, error_code=error.code, error_message=error.message)
        except Exception as exc:
            log.exception("generation %s: rendering failed", generation_id)
            message = f"Rendering failed: {exc}"[:1000]
            _finish(lease, job_id, GenerationStatus.failed, error_code="generation_error", error_message=message)
        else:
            if beat.lease_lost:
                _clean_up_after_lost_lease(lease, job_id)
            else:
                _finish(lease, job_id, GenerationStatus.succeeded, images=images)


def _render(generation_id: uuid.UUID, beat: Heartbeat) -> list[dict]:
    """Read the generation and its job, render, and return the images as stored: [{"path", "seed"}]."""
    from worker.dreambooth.render import RenderRequest

    with get_sessionmaker()() as session:
        generation = session.get(Generation, generation_id)
        job = session.get(Job, generation.job_id) if generation else None
        if job is None:
            raise LeaseLost(f"generation {generation_id} was deleted with its job")
        params = generation.params
        model = trained_model(job, params["step"])
        request = RenderRequest(
            prompt=params["prompt"],
            negative_prompt=params.get("negative_prompt"),
            scheduler=params["scheduler"],
            num_inference_steps=params["num_inference_steps"],
            guidance_scale=params["guidance_scale"],
            seed=params["seed"],
            num_images=params["num_images"],
            resolution=job.settings["resolution"],
        )
    out_dir = generation_dir(job.id, generation_id)
    images = storage_failure_as_error(
        lambda: _render_with(model, request, out_dir, generation_id, lambda: beat.lease_lost),
        "The server could not write the images (its disk is full or failing).",
        f"generation {generation_id}",
    )
    return [{"path": storage.relative(image.path), "seed": image.seed} for image in images]


def trained_model(job: Job, step: int) -> "TrainedModel":
    """Where the job's weights at `step` are (a worker.dreambooth.render.TrainedModel).

    The final step is a whole pipeline folder; a kept earlier step holds only what training changed:
    diffusers weights replace the final pipeline's components, LoRA adapters and learned embeddings go on the base
    model.
    """
    from worker.dreambooth.render import TrainedModel

    kept = {(artifact.kind, artifact.step): artifact for artifact in job.artifacts if artifact.kind in WEIGHT_KINDS}
    pipelines = sorted((a for a in job.artifacts if a.kind == "pipeline"), key=lambda artifact: artifact.step)
    if pipeline := kept.get(("pipeline", step)):
        return TrainedModel(pipeline_dir=_folder(pipeline.path, step))
    weights = kept.get(("weights", step))
    if weights is None:
        raise JobError("weights_missing", f"This job keeps no weights at step {step}; generate from a kept step.")
    if weights.format in ("lora", "embedding"):
        # note: pivotal tuning's phase-one steps are an embedding on the base model
        return TrainedModel(
            weights_dir=_folder(weights.path, step),
            weights_format=weights.format,
            base_model=job.settings.get("base_model") or get_settings().base_model,
            models_dir=storage.models_dir(),
        )
    if not pipelines:
        raise JobError("weights_missing", "This job's trained pipeline is no longer on the server.")
    return TrainedModel(
        pipeline_dir=_folder(pipelines[-1].path, pipelines[-1].step),
        weights_dir=_folder(weights.path, step),
        weights_format=weights.format or "diffusers",
    )


def _folder(stored: str, step: int) -> Path:
    folder = storage.resolve(stored)
    if not folder.is_dir():
        raise JobError("weights_missing", f"The trained weights of step {step} are no longer on the server.")
    return folder


@functools.cache
def _pipelines():
    """The worker's trained-model cache: the last trained pipeline stays loaded between generations."""
    from worker.dreambooth.render import PipelineCache

    return PipelineCache()


def _render_with(
    model: "TrainedModel", request: "RenderRequest", out_dir: Path, generation_id: uuid.UUID, should_stop
) -> list["RenderedImage"]:
    # note: the ML stack is imported here, not at module load, so the worker starts quickly.
    from worker.dreambooth.render import render

    def load_and_render() -> list["RenderedImage"]:
        loaded, reused = _pipelines().get(model)
        source = "reusing the loaded model" if reused else "loaded the model from disk"
        log.info("generation %s: %s (%s)", generation_id, source, model.weights_dir or model.pipeline_dir)
        return render(loaded, request, out_dir, should_stop)

    return out_of_memory_as_error(
        load_and_render,
        f"The GPU ran out of memory rendering at {request.resolution} px. Try again when the GPU is less "
        "busy, or with guidance_scale 1 (no classifier-free guidance, half the memory).",
    )


def _finish(lease: Lease, job_id: uuid.UUID, status: GenerationStatus, **outcome) -> None:
    """Record the outcome (through a database outage, see record_outcome); a generation that did not succeed
    leaves no partial images behind."""

    def finish(session: Session) -> None:
        generations.finish_generation(session, lease, status, **outcome)

    if not record_outcome(lease, status, finish):
        _clean_up_after_lost_lease(lease, job_id)
    elif status != GenerationStatus.succeeded:
        shutil.rmtree(generation_dir(job_id, lease.id), ignore_errors=True)


def _clean_up_after_lost_lease(lease: Lease, job_id: uuid.UUID) -> None:
    """Remove what this run wrote if the generation was deleted meanwhile (with its job); leave it
    when another worker took the generation over."""

    def clean_up(session: Session) -> None:
        if session.get(Job, job_id) is None:
            # note: the job's files went with it; any image written since would be left over
            storage.remove_job_files(job_id)
        elif session.get(Generation, lease.id) is None:
            shutil.rmtree(generation_dir(job_id, lease.id), ignore_errors=True)

    clean_up_after_lost_lease(lease, clean_up)

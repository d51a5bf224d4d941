"""How a job looks to its owner: the `JobOut` built from the ORM row, with artifact and photo URLs."""

from backend.models import Artifact, Job, Photo, kept_steps
from backend.schemas import ArtifactOut, ErrorOut, Evaluation, JobOut, MemoryPlanOut, PhotoOut, Progress
from formats.captions import photo_prompt


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        status=job.status,
        phase=job.phase,
        progress=Progress(step=job.step, total_steps=job.total_steps, loss=job.loss, eta_seconds=job.eta_seconds),
        settings=job.settings,
        error=ErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        cancel_requested=job.cancel_requested,
        attempts=job.attempts,
        photo_count=sum(photo.kind == "instance" for photo in job.photos),
        photos=[photo_out(job, photo) for photo in job.photos if photo.kind == "instance"],
        artifacts=[_artifact_out(job, artifact) for artifact in job.artifacts],
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        photos_purged_at=job.photos_purged_at,
        loss_history=job.loss_history or [],
        kept_steps=kept_steps(job),
        evaluation=Evaluation.model_validate(job.evaluation) if job.evaluation else None,
        memory_plan=MemoryPlanOut.model_validate(job.memory_plan) if job.memory_plan else None,
        family=job.family,
        queue=job.queue,
        note=job.note,
        webhook_url=job.webhook_url,
    )


def photo_out(job: Job, photo: Photo) -> PhotoOut:
    """A stored instance photo with the prompt it trains on, and its URL while the retention rule has kept it."""
    settings = job.settings
    return PhotoOut(
        position=photo.position,
        name=photo.name,
        width=photo.width,
        height=photo.height,
        crop_box=photo.crop_box,
        caption=photo.caption,
        auto_caption=photo.auto_caption,
        prompt=photo_prompt(
            settings["instance_prompt"],
            photo.caption or photo.auto_caption,
            settings.get("caption_mode", "instance_only"),
        ),
        checks=photo.checks,
        url=None if job.photos_purged_at else f"/api/jobs/{job.id}/photos/{photo.position}",
    )


def _artifact_out(job: Job, artifact: Artifact) -> ArtifactOut:
    if artifact.kind in ("checkpoint", "pipeline", "weights"):
        url = (
            f"/api/jobs/{job.id}/checkpoint?format={artifact.format or 'single'}"
            f"&dtype={artifact.dtype}&step={artifact.step}"
        )
    else:
        url = f"/api/jobs/{job.id}/samples/{artifact.id}"
    return ArtifactOut(
        id=artifact.id,
        kind=artifact.kind,
        step=artifact.step,
        url=url,
        size_bytes=artifact.size_bytes,
        prompt=artifact.prompt,
        seed=artifact.seed,
        format=artifact.format,
        dtype=artifact.dtype,
    )

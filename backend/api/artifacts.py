"""Downloads of a job's files: its checkpoints and its sample images."""

import mimetypes
import uuid
from pathlib import PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from backend import jobs, storage
from backend.auth import CurrentUser
from backend.db import SessionDep
from backend.errors import Conflict, NotFound
from backend.models import Artifact, JobStatus

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


@router.get("/{job_id}/checkpoint", response_class=FileResponse)
def download_checkpoint(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    checkpoint_format: Annotated[Literal["single", "diffusers", "lora"], Query(alias="format")] = "single",
    dtype: Literal["fp16", "fp32"] = "fp16",
    step: Annotated[int | None, Query(ge=0, description="A kept earlier step; default: last")] = None,
) -> FileResponse:
    """The trained model: `single` is one .safetensors file in the original Stable Diffusion layout."""
    job = jobs.get_job(session, user, job_id)
    if job.status != JobStatus.succeeded:
        raise Conflict(f"the job is {job.status}; checkpoints can be downloaded once it has succeeded")
    matches = [
        artifact
        for artifact in job.artifacts
        if artifact.kind == "checkpoint"
        and (artifact.format or "single") == checkpoint_format
        and artifact.dtype == dtype
        and (step is None or artifact.step == step)
    ]
    if not matches:
        at_step = f" at step {step}" if step is not None else ""
        raise NotFound(f"this job has no {checkpoint_format} {dtype} checkpoint{at_step}")
    checkpoint = max(matches, key=lambda artifact: artifact.step)
    name = f"dreambooth-{job.id.hex[:8]}-step{checkpoint.step}-{dtype}{PurePath(checkpoint.path).suffix}"
    return _file(checkpoint, name)


@router.get("/{job_id}/samples/{sample_id}", response_class=FileResponse)
def sample_image(job_id: uuid.UUID, sample_id: int, session: SessionDep, user: CurrentUser) -> FileResponse:
    """One sample image (PNG) the job made while training."""
    job = jobs.get_job(session, user, job_id)
    sample = next((a for a in job.artifacts if a.id == sample_id and a.kind == "sample"), None)
    if sample is None:
        raise NotFound(f"job {job_id} has no sample {sample_id}")
    return _file(sample, f"dreambooth-{job.id.hex[:8]}-step{sample.step}-sample{sample.id}.png", "inline")


def _file(artifact: Artifact, filename: str, disposition: str = "attachment") -> FileResponse:
    media_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return FileResponse(
        storage.resolve(artifact.path),
        media_type=media_type,
        filename=filename,
        content_disposition_type=disposition,
    )

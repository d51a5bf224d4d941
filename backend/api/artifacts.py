"""Downloads of a job's files: its checkpoints, its sample images and its instance photos.

Files stream from disk with Content-Length and an ETag; Starlette's FileResponse answers Range and
If-Range (206, 416), so an interrupted multi-gigabyte download resumes; If-None-Match answers 304 here.
"""

import mimetypes
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, Response

from backend import exports, jobs, storage
from backend.auth import CurrentUser
from backend.db import SessionDep
from backend.errors import NotFound

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

IfNoneMatch = Annotated[str | None, Header(description="An ETag from an earlier download: 304 if unchanged")]


@router.get("/{job_id}/checkpoint", response_class=FileResponse)
def download_checkpoint(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    checkpoint_format: Annotated[exports.Format, Query(alias="format")] = "single",
    dtype: exports.Dtype = "fp16",
    step: Annotated[int | None, Query(ge=0, description="A kept earlier step; default: last")] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The trained model at its last or a kept earlier step: `single` is one .safetensors file in the original
    Stable Diffusion layout, `diffusers` a zip of the pipeline folder (DDIM scheduler), `lora` and `lora_kohya`
    a LoRA job's adapter file (diffusers' or kohya's layout), `embedding` a pivotal job's learned token
    (AUTOMATIC1111's layout); what the job did not keep as such is built on the first request and then kept."""
    download = exports.checkpoint_download(jobs.get_job(session, user, job_id), checkpoint_format, dtype, step)
    # note: building and sending take minutes for a real model; hold no database connection meanwhile
    session.close()
    return _file(download.ready(), download.filename, download.media_type, if_none_match)


@router.get("/{job_id}/samples/{sample_id}", response_class=FileResponse)
def sample_image(
    job_id: uuid.UUID, sample_id: int, session: SessionDep, user: CurrentUser, if_none_match: IfNoneMatch = None
) -> Response:
    """One sample image (PNG) the job made while training."""
    job = jobs.get_job(session, user, job_id)
    sample = next((a for a in job.artifacts if a.id == sample_id and a.kind == "sample"), None)
    if sample is None:
        raise NotFound(f"job {job_id} has no sample {sample_id}")
    filename = f"{exports.download_stem(job)}-step{sample.step}-sample{sample.id}.png"
    return _file(storage.resolve(sample.path), filename, "image/png", if_none_match, "inline")


@router.get("/{job_id}/photos/{position}", response_class=FileResponse)
def job_photo(
    job_id: uuid.UUID, position: int, session: SessionDep, user: CurrentUser, if_none_match: IfNoneMatch = None
) -> Response:
    """One instance photo as stored and trained on (upright, at most 2048 px a side): the pixels its crop box is
    in. Gone, with a 404 that says so, once the retention rule has deleted the job's photos."""
    job = jobs.get_job(session, user, job_id)
    photo = next((p for p in job.photos if p.kind == "instance" and p.position == position), None)
    if photo is None:
        raise NotFound(f"job {job_id} has no photo {position}")
    path = storage.resolve(photo.path)
    # note: the retention rule deletes the files before it marks the job, so a missing file is the same news
    if job.photos_purged_at is not None or not path.is_file():
        when = f" on {job.photos_purged_at:%Y-%m-%d}" if job.photos_purged_at else ""
        raise NotFound(f"the photos of job {job_id} were deleted{when} by the photo retention rule")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    filename = f"{exports.download_stem(job)}-photo{position}{path.suffix}"
    return _file(path, filename, media_type, if_none_match, "inline")


def _file(
    path: Path, filename: str, media_type: str, if_none_match: str | None, disposition: str = "attachment"
) -> Response:
    response = FileResponse(
        path, media_type=media_type, filename=filename, content_disposition_type=disposition, stat_result=path.stat()
    )
    etag = response.headers["etag"]
    if if_none_match and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
        return Response(status_code=304, headers={"ETag": etag})
    return response


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header, compared weakly (RFC 9110 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}

"""Jobs: create from uploaded photos, list, read, cancel and delete (the owner's side of the job service)."""

import hashlib
import logging
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from backend import jobs, queue, routing, schemas, webhooks
from backend.api import job_view
from backend.api.job_form import check_photos, ingest_uploads, parse_training_settings
from backend.api.job_view import job_out
from backend.auth import CurrentUser
from backend.db import SessionDep
from backend.schemas import JobList, JobOut
from backend.settings import get_settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

# Part of every version ETag: the code that shapes a job's answer, so that after an upgrade that shapes the
# same row differently no poller is told its old copy is current. The same in every process of one deploy.
SHAPE = hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in (job_view, schemas))).hexdigest()


@router.post("", status_code=202)
def create_job(
    session: SessionDep,
    user: CurrentUser,
    response: Response,
    photos: Annotated[list[UploadFile], File(description="Photos of the subject (JPEG, PNG or WebP)")],
    settings: Annotated[str, Form(description="TrainingSettings as a JSON object")],
    class_photos: Annotated[list[UploadFile] | None, File(description="Optional class photos")] = None,
    webhook_url: Annotated[
        str | None, Form(max_length=2000, description="Where the job's end is POSTed; default: your default URL")
    ] = None,
    captions: Annotated[
        str | None, Form(description="A JSON object from photo file name to caption (see caption_mode)")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=200, description="Retrying with the same key returns the same job"),
    ] = None,
) -> JobOut:
    """Store the photos and queue a training job; the job is the reply, its URL the Location.

    With an `Idempotency-Key` the caller used before, that job is returned and nothing new is made.
    """
    if idempotency_key and (existing := jobs.find_job_by_key(session, user, idempotency_key)):
        response.headers["Location"] = f"/api/jobs/{existing.id}"
        return job_out(existing)
    jobs.check_quotas(session, user)
    limits = get_settings()
    training, base_model = parse_training_settings(settings)
    webhook_url = webhooks.checked_url(webhook_url, "webhook_url")
    instance = ingest_uploads(photos, "photos", limits.max_photos, analyse=True)
    checks = check_photos(instance, training, captions)
    extra = ingest_uploads(class_photos or [], "class_photos", limits.max_class_photos)
    job = jobs.create_job(
        session,
        user,
        training,
        instance,
        extra,
        idempotency_key,
        family=base_model.family_name,
        checks=checks,
        webhook_url=webhook_url,
    )
    job_queue = routing.route(session, job)
    session.commit()
    try:
        queue.enqueue_training(str(job.id), job_queue)
    except Exception:
        # note: the job row is the truth and stays queued; a later delivery can still start it.
        log.exception("job %s: could not reach the broker to queue it", job.id)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return job_out(job)


@router.get("")
def list_jobs(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> JobList:
    """The caller's jobs, newest first."""
    items, total = jobs.list_jobs(session, user, limit, offset)
    return JobList(items=[job_out(job) for job in items], total=total, limit=limit, offset=offset)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses={304: {"description": "The job is as it was when the ETag sent in If-None-Match was given"}},
)
def get_job(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    if_none_match: Annotated[str | None, Header(max_length=1000)] = None,
) -> Response:
    """The job. Its ETag names this exact answer: a poller that sends it back in If-None-Match gets an empty 304
    until the job changes.

    On Postgres the ETag comes from the row's version (jobs.job_version), so an unchanged job is answered
    from one small query, without loading or serializing it; elsewhere it is a hash of the answer.
    """
    version = jobs.job_version(session, user, job_id)
    etag = f'"{_digest(f"{SHAPE}:{version}".encode())}"' if version else None
    if etag and if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    body = JSONResponse(jsonable_encoder(job_out(jobs.get_job(session, user, job_id)))).body
    etag = etag or f'"{_digest(body)}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak or strong, or `*`)."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


@router.post("/{job_id}/cancel", status_code=202)
def cancel_job(job_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> JobOut:
    """Cancel a job: a queued one at once, a running one at its next training step. Idempotent."""
    return job_out(jobs.request_cancel(session, user, job_id))


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> None:
    """Delete a job and every file it owns."""
    jobs.delete_job(session, user, job_id)

"""Live job updates as server-sent events: the job object now, and again whenever it changes."""

import uuid

import anyio
from fastapi import APIRouter
from sse_starlette import EventSourceResponse

from backend import jobs
from backend.api.job_view import job_out
from backend.auth import CurrentUser
from backend.db import SessionDep, consistent_reads, get_sessionmaker
from backend.errors import NotFound
from backend.models import TERMINAL_STATUSES, User
from backend.schemas import JobOut

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

# Workers write progress about once a second, so polling faster would show nothing new.
POLL_SECONDS = 1.0


@router.get("/{job_id}/events", response_class=EventSourceResponse)
def job_events(job_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> EventSourceResponse:
    """`data:` lines carrying the job as JSON; the stream ends once the job has finished."""
    jobs.get_job(session, user, job_id)
    # note: release the request's connection now; the stream polls with short sessions of its own.
    session.close()
    return EventSourceResponse(_job_updates(user, job_id), ping=15)


async def _job_updates(owner: User, job_id: uuid.UUID):
    sent = None
    while (job := await anyio.to_thread.run_sync(_read_job, owner, job_id)) is not None:
        data = job.model_dump_json()
        if data != sent:
            yield {"data": data}
            sent = data
        if job.status in TERMINAL_STATUSES:
            return
        await anyio.sleep(POLL_SECONDS)


def _read_job(owner: User, job_id: uuid.UUID) -> JobOut | None:
    """The job as it is now, or None once it was deleted."""
    with get_sessionmaker()() as session:
        consistent_reads(session)
        try:
            return job_out(jobs.get_job(session, owner, job_id))
        except NotFound:
            return None

"""Generations: new images on demand from a finished job's weights, rendered by a GPU worker."""

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import FileResponse

from backend import generations, jobs, queue, storage, webhooks
from backend.api.generation_view import generation_out
from backend.auth import CurrentUser
from backend.db import SessionDep
from backend.errors import NotFound
from backend.generation_schemas import MAX_IMAGES, GenerationCreate, GenerationList, GenerationOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["generations"])


def _owned_job(job_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> uuid.UUID:
    """The caller's job id. A dependency runs before the body is validated, so another user's job is
    a 404 whatever the body holds, exactly like a job that does not exist."""
    jobs.get_job(session, user, job_id)
    # note: give the connection back before the route waits for a thread (see backend/auth.py)
    session.commit()
    return job_id


OwnedJobId = Annotated[uuid.UUID, Depends(_owned_job)]


@router.post("/jobs/{job_id}/generations", status_code=202)
def create_generation(
    job_id: OwnedJobId, params: GenerationCreate, session: SessionDep, user: CurrentUser, response: Response
) -> GenerationOut:
    """Queue new images from a job that succeeded, behind the GPU work already waiting;
    the generation is the reply, its URL the Location."""
    webhook_url = webhooks.checked_url(params.webhook_url, "webhook_url")
    generation = generations.create_generation(
        session, user, job_id, params.model_dump(exclude={"webhook_url"}), webhook_url
    )
    try:
        queue.enqueue_generation(str(generation.id))
    except Exception:
        # note: the row stays queued; the reaper sends another wake-up call later.
        log.exception("generation %s: could not reach the broker to queue it", generation.id)
    response.headers["Location"] = f"/api/generations/{generation.id}"
    return generation_out(generation)


@router.get("/jobs/{job_id}/generations")
def list_generations(
    job_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> GenerationList:
    """The job's generations, newest first."""
    items, total = generations.list_generations(session, user, job_id, limit, offset)
    return GenerationList(items=[generation_out(item) for item in items], total=total, limit=limit, offset=offset)


@router.get("/generations/{generation_id}")
def get_generation(generation_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> GenerationOut:
    return generation_out(generations.get_generation(session, user, generation_id))


@router.get("/generations/{generation_id}/images/{index}", response_class=FileResponse)
def generation_image(
    generation_id: uuid.UUID, index: Annotated[int, Path(ge=0, lt=MAX_IMAGES)], session: SessionDep, user: CurrentUser
) -> Response:
    """One image (PNG) of a generation that succeeded."""
    generation = generations.get_generation(session, user, generation_id)
    if index >= len(generation.images):
        raise NotFound(f"generation {generation_id} has no image {index} (it is {generation.status})")
    path = storage.resolve(generation.images[index]["path"])
    if not path.is_file():
        raise NotFound(f"image {index} of generation {generation_id} is no longer on the server")
    return FileResponse(
        path,
        media_type="image/png",
        filename=f"generation-{generation_id.hex[:8]}-{index}.png",
        content_disposition_type="inline",
    )

"""How a generation looks to its owner: the `GenerationOut` built from the ORM row, with image URLs."""

from backend.generation_schemas import GenerationImage, GenerationOut, GenerationParams
from backend.models import Generation
from backend.schemas import ErrorOut


def generation_out(generation: Generation) -> GenerationOut:
    return GenerationOut(
        id=generation.id,
        job_id=generation.job_id,
        status=generation.status,
        params=GenerationParams.model_validate(generation.params),
        images=[
            GenerationImage(url=f"/api/generations/{generation.id}/images/{index}", seed=image["seed"])
            for index, image in enumerate(generation.images)
        ],
        error=ErrorOut(code=generation.error_code, message=generation.error_message or "")
        if generation.error_code
        else None,
        created_at=generation.created_at,
        started_at=generation.started_at,
        finished_at=generation.finished_at,
        webhook_url=generation.webhook_url,
    )

"""Photo previews: each photo's checks, crop box and prompt under a job's settings, without making a job.

The same ingest and the same `check_photos` as job creation, so what the page shows is what the trainer uses.
"""

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from backend.api.job_form import ingest_uploads, parse_captions, parse_training_settings
from backend.auth import CurrentUser
from backend.photo_checks import assess_photos
from backend.schemas import PhotoOut, PhotoPreviewOut
from backend.settings import get_settings

router = APIRouter(prefix="/api/photos", tags=["photos"])

# note: the page previews photos before the user has named the subject; checks need a prompt for token counts
STAND_IN_PROMPT = "a photo of the subject"


@router.post("/preview")
def preview_photos(
    _user: CurrentUser,
    photos: Annotated[list[UploadFile], File(description="Photos of the subject (JPEG, PNG, WebP or HEIC)")],
    settings: Annotated[str, Form(description="TrainingSettings as a JSON object; instance_prompt may be left out")],
    captions: Annotated[str | None, Form(description="A JSON object from photo file name to caption")] = None,
) -> PhotoPreviewOut:
    """What POST /api/jobs would store for these photos: crop boxes, prompts and warnings. Nothing is kept."""
    raw = json.loads(settings) if settings.strip().startswith("{") else None
    if isinstance(raw, dict) and not raw.get("instance_prompt"):
        settings = json.dumps({**raw, "instance_prompt": STAND_IN_PROMPT})
    training, _facts = parse_training_settings(settings)
    ingested = ingest_uploads(photos, "photos", get_settings().max_photos, analyse=True)
    names = [photo.name or f"photos[{index}]" for index, photo in enumerate(ingested)]
    checks = assess_photos(
        [photo.facts for photo in ingested], names, training, parse_captions(captions, [p.name for p in ingested])
    )
    items = [
        PhotoOut(
            position=index,
            name=photo.name,
            width=photo.width,
            height=photo.height,
            crop_box=list(check.crop_box) if check.crop_box else None,
            caption=check.caption,
            prompt=check.prompt,
            checks=check.as_dict(),
        )
        for index, (photo, check) in enumerate(zip(ingested, checks))
    ]
    usable = sum(check.usable for check in checks)
    return PhotoPreviewOut(photos=items, usable=usable, needed=get_settings().min_usable_photos)

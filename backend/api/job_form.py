"""The create-job form: its settings JSON and uploaded photos, all checked before anything is stored."""

import json

from fastapi import UploadFile
from pydantic import ValidationError

from backend.base_models import ModelFacts, memory_refusal, model_facts
from backend.errors import InvalidInput, invalid_field
from backend.images import IngestedPhoto, ingest_photo
from backend.photo_checks import PhotoCheck, assess_photos, refuse_too_few_usable
from backend.settings import get_settings
from backend.training_settings import TrainingSettings, model_context
from formats.captions import MAX_CAPTION_CHARS


def parse_training_settings(raw: str) -> tuple[dict, ModelFacts]:
    """The `settings` form field as stored on the job (validated, base model and preset filled in, the
    defaults fitted to the base model), and the base model's facts."""
    data = _json_object(raw)
    base_model = _offered_base_model(data.get("base_model"))
    facts = model_facts(base_model)
    try:
        training = TrainingSettings.model_validate(
            {**data, "base_model": base_model}, context=model_context(base_model, facts.family_name, facts.resolution)
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise invalid_field(("settings", *error["loc"]), error["msg"]) from None
    gpu_memory_gib = get_settings().gpu_memory_gib
    if refusal := memory_refusal(facts, training.training_method, gpu_memory_gib, training.pivotal_second_phase):
        raise InvalidInput(f"settings.training_method: {refusal}", "settings.training_method")
    return training.model_dump(mode="json"), facts


def _json_object(raw: str) -> dict:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"settings: not valid JSON ({exc})", "settings") from None
    if not isinstance(data, dict):
        raise InvalidInput("settings: must be a JSON object of training settings", "settings")
    return data


def _offered_base_model(requested) -> str:
    """The base model a job asks for, or the server's default; one the server does not offer is refused.

    note: a value that is not a string is passed on, so that validation names its type.
    """
    settings = get_settings()
    if requested is None:
        return settings.base_model
    if isinstance(requested, str) and requested not in settings.allowed_base_models:
        offered = ", ".join(settings.allowed_base_models)
        raise InvalidInput(f"settings.base_model: this server offers {offered}", "settings.base_model")
    return requested


def ingest_uploads(uploads: list[UploadFile], field: str, limit: int, analyse: bool = False) -> list[IngestedPhoto]:
    """Decode and re-encode every upload of one form field; the first bad one refuses the request. With `analyse`,
    each photo's quality facts and faces are measured too (backend/photo_checks.py)."""
    if len(uploads) > limit:
        raise InvalidInput(f"at most {limit} files are accepted in {field}", field)
    # note: one byte over the limit is enough for ingest_photo to refuse a file; never read more.
    max_bytes = get_settings().max_photo_bytes + 1
    return [
        ingest_photo(
            upload.file.read(max_bytes),
            field,
            f"{field}[{index}] ({(upload.filename or '')[:100]})",
            analyse,
            (upload.filename or "")[:200],
        )
        for index, upload in enumerate(uploads)
    ]


def check_photos(photos: list[IngestedPhoto], settings: dict, raw_captions: str | None) -> list[PhotoCheck]:
    """Each instance photo's crop box, caption, prompt and warnings under the job's settings; too few usable
    photos, or captions for files not uploaded, refuse the request (before anything is stored)."""
    names = [photo.name or f"photos[{index}]" for index, photo in enumerate(photos)]
    captions = parse_captions(raw_captions, [photo.name for photo in photos])
    checks = assess_photos([photo.facts for photo in photos], names, settings, captions)
    refuse_too_few_usable(checks, names)
    return checks


def parse_captions(raw: str | None, names: list[str]) -> list[str | None]:
    """The `captions` form field (a JSON object from uploaded file name to caption) as one caption per photo."""
    if not raw:
        return [None] * len(names)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"captions: not valid JSON ({exc})", "captions") from None
    if not isinstance(data, dict) or not all(isinstance(value, str) for value in data.values()):
        raise InvalidInput("captions: must be a JSON object from photo file name to caption text", "captions")
    if unknown := sorted(set(data) - set(names)):
        raise InvalidInput(f"captions: no uploaded photo is named {', '.join(map(repr, unknown))}", "captions")
    if long := sorted(name for name, caption in data.items() if len(caption) > MAX_CAPTION_CHARS):
        raise InvalidInput(f"captions: over {MAX_CAPTION_CHARS} characters for {', '.join(long)}", "captions")
    return [(data[name].strip() or None) if name in data else None for name in names]

"""The create-job form: its settings JSON and uploaded photos, all checked before anything is stored."""

import json

from fastapi import UploadFile
from pydantic import ValidationError

from backend.base_models import ModelFacts, memory_refusal, model_facts
from backend.errors import InvalidInput, invalid_field
from backend.images import IngestedPhoto, ingest_photo
from backend.settings import get_settings
from backend.training_settings import TrainingSettings, model_context


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


def ingest_uploads(uploads: list[UploadFile], field: str, limit: int) -> list[IngestedPhoto]:
    """Decode and re-encode every upload of one form field; the first bad one refuses the request."""
    if len(uploads) > limit:
        raise InvalidInput(f"at most {limit} files are accepted in {field}", field)
    # note: one byte over the limit is enough for ingest_photo to refuse a file; never read more.
    max_bytes = get_settings().max_photo_bytes + 1
    return [
        ingest_photo(upload.file.read(max_bytes), field, f"{field}[{index}] ({(upload.filename or '')[:100]})")
        for index, upload in enumerate(uploads)
    ]

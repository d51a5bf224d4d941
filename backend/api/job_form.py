"""The create-job form: its settings JSON and uploaded photos, all checked before anything is stored."""

from fastapi import UploadFile
from pydantic import ValidationError

from backend.errors import InvalidInput, invalid_field
from backend.images import IngestedPhoto, ingest_photo
from backend.settings import get_settings
from backend.training_settings import TrainingSettings


def parse_training_settings(raw: str) -> dict:
    """The `settings` form field as stored on the job: validated, preset applied, base model filled in."""
    try:
        training = TrainingSettings.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise invalid_field(("settings", *error["loc"]), error["msg"]) from None
    settings = get_settings()
    if training.base_model is None:
        training.base_model = settings.base_model
    elif training.base_model not in settings.allowed_base_models:
        offered = ", ".join(settings.allowed_base_models)
        raise InvalidInput(f"settings.base_model: this server offers {offered}", "settings.base_model")
    return training.model_dump(mode="json")


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

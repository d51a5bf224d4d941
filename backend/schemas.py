"""Request and response models. `TrainingSettings` uses the names of diffusers' train_dreambooth.py."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from backend.presets import PRESETS

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class TrainingSettings(BaseModel):
    """What a user may set for a job. A preset fills every field the request leaves out."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["object", "face", "custom"] = "object"
    base_model: str | None = Field(None, description="Hub id offered by this server; default: the server's")

    instance_prompt: Prompt = Field(description="Names the subject, e.g. 'a photo of rufus the dog'")
    with_prior_preservation: bool = False
    # note: after with_prior_preservation, so that its validator can see it and name this field.
    class_prompt: Prompt | None = Field(
        None, validate_default=True, description="The subject's class, for prior preservation"
    )
    num_class_images: int = Field(200, ge=1, le=1000)
    prior_loss_weight: float = Field(1.0, ge=0, le=10)
    train_text_encoder: bool = False

    max_train_steps: int = Field(400, ge=1, le=20_000)
    learning_rate: float = Field(2e-6, gt=0, le=1e-3)
    train_batch_size: int = Field(4, ge=1, le=64)
    gradient_accumulation_steps: int = Field(1, ge=1, le=64)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=20_000)
    resolution: int = Field(512, ge=64, le=1024, description="Square training size in pixels, a multiple of 64")
    center_crop: bool = False
    random_flip: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    validation_prompts: list[Prompt] = Field(default_factory=list, max_length=8)
    num_validation_images: int = Field(1, ge=1, le=8)
    num_inference_steps: int = Field(100, ge=1, le=500, description="DDIM steps for samples; the study: ~100")
    guidance_scale: float = Field(7.5, ge=0, le=30)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset", "object") in PRESETS:
            return {**PRESETS[data.get("preset", "object")].values, **data}
        return data

    @field_validator("resolution")
    @classmethod
    def _multiple_of_64(cls, value: int) -> int:
        if value % 64:
            raise ValueError("must be a multiple of 64")
        return value

    @field_validator("class_prompt")
    @classmethod
    def _prior_needs_class_prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("with_prior_preservation") and not value:
            raise ValueError("required when with_prior_preservation is on")
        return value


class Progress(BaseModel):
    step: int
    total_steps: int
    loss: float | None
    eta_seconds: float | None


class ErrorOut(BaseModel):
    code: str
    message: str


class ArtifactOut(BaseModel):
    id: int
    kind: str
    step: int
    url: str
    size_bytes: int
    prompt: str | None = None
    seed: int | None = None
    format: str | None = None
    dtype: str | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    status: str
    phase: str | None
    progress: Progress
    settings: dict[str, Any]
    error: ErrorOut | None
    cancel_requested: bool  # a running job stops at its next step
    attempts: int
    photo_count: int
    artifacts: list[ArtifactOut]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class PresetOut(BaseModel):
    name: str
    title: str
    summary: str
    values: dict[str, Any]


class InfoOut(BaseModel):
    version: str
    demo_mode: bool
    gpu_present: bool
    base_models: list[str]
    default_base_model: str
    limits: dict[str, int]

"""Request and response models of generations: new images on demand from a finished job's weights."""

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from backend.schemas import ErrorOut
from backend.training_settings import Prompt, Scheduler

NegativePrompt = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
MAX_IMAGES = 8  # per generation


class GenerationCreate(BaseModel):
    """What a user may ask for. The defaults are the study's: DDIM at about 100 steps suits overfit models."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description="What to draw; name the subject as the instance prompt did")
    negative_prompt: NegativePrompt | None = Field(None, description="What to keep out of the images")
    scheduler: Scheduler = Field("ddim", description="The sampler; the study: DDIM")
    num_inference_steps: int = Field(100, ge=1, le=500, description="Sampling steps per image; the study: ~100")
    guidance_scale: float = Field(7.5, ge=0, le=30, allow_inf_nan=False)
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Image i uses seed + i; default: one picked now and kept"
    )
    num_images: int = Field(4, ge=1, le=MAX_IMAGES)
    step: int | None = Field(None, ge=0, le=2**31 - 1, description="A kept step of the job; default: its last")
    webhook_url: str | None = Field(
        None, max_length=2000, description="Where its end is POSTed (http or https); default: your default URL"
    )

    @field_validator("negative_prompt")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class GenerationParams(BaseModel):
    """The parameters a generation was made with: every default filled in, so its images can be made again."""

    prompt: str
    negative_prompt: str | None
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int
    step: int


class GenerationImage(BaseModel):
    url: str  # a PNG, for the owner only
    seed: int


class GenerationOut(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID
    status: str  # queued | running | succeeded | failed
    params: GenerationParams
    images: list[GenerationImage]  # empty until it has succeeded
    error: ErrorOut | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook_url: str | None = None  # where its end is POSTed; None: the owner's default (see backend/webhooks.py)


class GenerationList(BaseModel):
    items: list[GenerationOut]
    total: int
    limit: int
    offset: int

"""Request and response models (the training settings have their own module, training_settings.py)."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)


class Progress(BaseModel):
    step: int
    total_steps: int
    loss: float | None
    eta_seconds: float | None


class ErrorOut(BaseModel):
    code: str
    message: str


class ErrorDetail(ErrorOut):
    field: str | None = None  # the request field at fault, dotted: "settings.learning_rate"


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx reply: `{"error": {"code", "message", "field"?}}`."""

    error: ErrorDetail


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


class StepScore(BaseModel):
    """How the samples of one validation step score, each in [0, 1]."""

    step: int
    subject_fidelity: float  # samples look like the instance photos
    prompt_fidelity: float  # new-context samples match their prompts
    memorisation: float  # share of samples that are near-copies of a training photo
    score: float  # the balance the recommendation maximises


class Evaluation(BaseModel):
    scorer: str  # the image-text model that scored the samples
    steps: list[StepScore]  # one per scored validation step, ascending
    recommended_step: int | None
    reason: str | None  # one sentence on why that step
    recommended_is_final: bool


class MemoryPlanOut(BaseModel):
    profile: str  # the worker's tier: "24gb", "16gb", "12gb"; "cpu" without a GPU; "none" when turned off
    gpu_memory_gib: float | None  # the worker GPU's total memory
    changes: dict[str, Any]  # settings the profile changed for this run, e.g. {"use_8bit_adam": true}


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
    photos_purged_at: datetime | None = None  # the retention rule deleted the raw photos then
    loss_history: list[tuple[int, float]] = []  # [step, mean loss], downsampled to a few hundred points
    kept_steps: list[int] = []  # steps whose weights can be downloaded (?step=N) and generated from
    evaluation: Evaluation | None = None  # per-step scores and the recommended step, once scored
    memory_plan: MemoryPlanOut | None = None  # the memory savers the worker chose, once training starts


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


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in_days: float | None = Field(
        None, gt=0, le=3650, description="Default: the server's token_ttl_days (or never)"
    )


class TokenOut(BaseModel):
    """An API token as listed: never the token itself, which only its creator ever sees."""

    id: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str  # shown once

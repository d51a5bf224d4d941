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
    # the worker's tier: "24gb", "16gb", "12gb" (SDXL: "sdxl-80gb", "sdxl-40gb", "sdxl-lora-24gb" / 16gb / 12gb);
    # "cpu" without a GPU; "none" when turned off
    profile: str
    gpu_memory_gib: float | None  # the worker GPU's total memory
    changes: dict[str, Any]  # settings the profile changed for this run, e.g. {"use_8bit_adam": true}


class PhotoWarningOut(BaseModel):
    code: str  # too_small | blurred | duplicate | no_face | several_faces | prompt_too_long
    message: str


class PhotoChecksOut(BaseModel):
    usable: bool  # counts toward the usable photos a job needs (not too small, no duplicate, one face for face crops)
    warnings: list[PhotoWarningOut]
    faces: list[list[int]]  # detected faces, [left, top, right, bottom] in the stored photo, largest first
    sharpness: float | None  # variance of the Laplacian (under 100 warns "blurred")
    jpeg_quality: int | None = None  # the upload's JPEG quality, estimated (under 50 warns "low_jpeg_quality")
    bucket: list[int] | None = None  # [width, height] the photo trains at with crop "bucket"; else None


class PhotoOut(BaseModel):
    """An instance photo as the trainer uses it (backend/photo_checks.py)."""

    position: int
    name: str | None  # the uploaded file's name
    width: int  # of the stored photo: upright, at most 2048 px a side; the crop box is in these pixels
    height: int
    crop_box: list[int] | None  # [left, top, right, bottom] the trainer crops; None: random crops
    caption: str | None
    auto_caption: str | None = None  # the captioning model's, for photos given no caption (instance_plus_auto_caption)
    prompt: str | None = None  # what the text encoder is given for this photo
    checks: PhotoChecksOut | None  # None for photos stored before checks existed
    url: str | None = None  # the stored photo (GET /api/jobs/{id}/photos/{position}); None in previews, once purged


class PhotoPreviewOut(BaseModel):
    photos: list[PhotoOut]
    usable: int
    needed: int  # usable photos a job needs (MIN_USABLE_PHOTOS)


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
    photos: list[PhotoOut] = []  # the instance photos with their crop boxes, captions and checks
    artifacts: list[ArtifactOut]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    photos_purged_at: datetime | None = None  # the retention rule deleted the raw photos then
    loss_history: list[tuple[int, float]] = []  # [step, mean loss], downsampled to a few hundred points
    kept_steps: list[int] = []  # steps whose weights can be downloaded (?step=N) and generated from
    evaluation: Evaluation | None = None  # per-step scores and the recommended step, once scored
    memory_plan: MemoryPlanOut | None = None  # the memory savers the worker chose, once training starts
    family: str | None = None  # the base model's family at creation ("sd1", "sd2", "sdxl"); None: unknown then
    queue: str | None = None  # the GPU class queue it was routed to by its memory need ("gpu-24gb")
    # why a queued job waits: "waiting_for_gpu" when no live worker's GPU can fit it (it starts when one comes)
    note: str | None = None
    webhook_url: str | None = None  # where its end is POSTed; None: the owner's default (see backend/webhooks.py)


class JobList(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class PresetOut(BaseModel):
    name: str
    title: str
    summary: str
    families: list[str]  # the model families it fits
    reason: str  # one line: why it fits them, and where its values come from
    values: dict[str, Any]


class BaseModelOut(BaseModel):
    """A base model the server offers, as far as the API can tell without loading it."""

    name: str
    family: str | None  # "sd1", "sd2", "sdxl"; None while unknown (a Hub model not downloaded yet)
    family_title: str | None
    resolution: int | None  # the side it draws at, the default resolution of its jobs; None while unknown
    presets: list[str]  # the presets that fit it, its default first (every preset while the family is unknown)


class WorkerOut(BaseModel):
    """A live worker as admins see it (backend/routing.py)."""

    name: str  # host:pid
    hostname: str
    gpu_name: str | None  # None: no GPU
    gpu_memory_gib: float | None
    gpu_count: int
    families: list[str]  # the model families it can train
    queues: list[str]  # the GPU class queues it reads
    started_at: datetime
    heartbeat_at: datetime


class InfoOut(BaseModel):
    version: str
    demo_mode: bool
    gpu_present: bool
    base_models: list[str]  # the names of `models`, for older clients
    default_base_model: str
    models: list[BaseModelOut]  # the same models with their families, the default first
    gpu_memory_gib: float | None  # the workers' GPU memory (GPU_MEMORY_GIB); None: not told
    limits: dict[str, int]
    live_workers: int = 0  # workers heard from within the stale period
    workers: list[WorkerOut] | None = None  # each live worker, for admins (ADMIN_USERS) only


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

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
# Samplers a user may pick for samples and generations (worker/dreambooth/schedulers.py builds them).
Scheduler = Literal["ddim", "pndm", "lms", "euler", "euler_a", "dpmpp_2m"]


class TrainingSettings(BaseModel):
    """What a user may set for a job. A preset fills every field the request leaves out."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["object", "face", "custom"] = "object"
    base_model: str | None = Field(None, description="Hub id offered by this server; default: the server's")

    instance_prompt: Prompt = Field(description="Names the subject, e.g. 'a photo of rufus the dog'")
    with_prior_preservation: bool = Field(
        False, description="Also train on class images, so the model keeps what the class looks like (faces)"
    )
    # note: after with_prior_preservation, so that its validator can see it and name this field.
    class_prompt: Prompt | None = Field(
        None, validate_default=True, description="The subject's class, for prior preservation"
    )
    num_class_images: int = Field(
        200, ge=1, le=1000, description="Class images in all; the base model generates what class_photos lack"
    )
    prior_loss_weight: float = Field(1.0, ge=0, le=10, description="Weight of the class images' loss")
    sample_batch_size: int = Field(4, ge=1, le=64, description="Class images generated per batch")
    class_negative_prompt: Prompt | None = Field(None, description="Negative prompt for generated class images")
    train_text_encoder: bool = Field(
        False, description="Fine-tune the text encoder too: better faces and prompts, more memory"
    )
    text_encoder_lr: float | None = Field(
        None, gt=0, le=1e-3, description="The text encoder's learning rate; default: learning_rate"
    )

    max_train_steps: int = Field(400, ge=1, le=20_000)
    learning_rate: float = Field(2e-6, gt=0, le=1e-3)
    scale_lr: bool = Field(False, description="Multiply the learning rates by the effective batch size")
    train_batch_size: int = Field(4, ge=1, le=64)
    gradient_accumulation_steps: int = Field(1, ge=1, le=64)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=20_000)
    lr_num_cycles: int = Field(1, ge=1, le=100, description="Hard restarts of cosine_with_restarts")
    lr_power: float = Field(1.0, gt=0, le=10, description="Power of the polynomial schedule")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW second-moment decay")
    adam_weight_decay: float = Field(1e-2, ge=0, le=1, description="AdamW decoupled weight decay")
    adam_epsilon: float = Field(1e-8, gt=0, le=1e-3, description="AdamW denominator guard")
    max_grad_norm: float = Field(1.0, gt=0, le=100, description="Gradient clipping threshold")
    use_ema: bool = Field(False, description="Export an exponential moving average of the UNet weights")
    snr_gamma: float | None = Field(
        None, gt=0, le=100, description="Min-SNR loss weighting; 5.0 is recommended; default: off"
    )
    offset_noise: bool = Field(False, description="Noise offset, so very dark or bright images can be learned")
    resolution: int = Field(512, ge=64, le=1024, description="Square training size in pixels, a multiple of 64")
    center_crop: bool = Field(False, description="Center-crop the photos; default: random crops")
    random_flip: bool = Field(False, description="Flip photos horizontally at random")
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    gradient_checkpointing: bool = Field(False, description="Recompute activations: less memory, slower steps")
    use_8bit_adam: bool = Field(False, description="bitsandbytes 8-bit AdamW: much less optimizer memory")
    enable_xformers_memory_efficient_attention: bool = Field(
        False, description="xformers attention where installed; default: PyTorch's SDPA"
    )
    allow_tf32: bool = Field(False, description="TF32 matmuls on Ampere and newer GPUs: faster, slightly less precise")
    memory_profile: Literal["auto", "none"] = Field(
        "auto", description="auto turns memory savers on to fit the worker's GPU; none keeps the settings as given"
    )
    checkpointing_steps: int | None = Field(
        None, ge=1, le=20_000, description="Save the training state every N steps; default: every quarter or 500"
    )
    checkpoints_total_limit: int | None = Field(
        None, ge=1, le=100, description="Saved training states kept; default: the newest only"
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    training_method: Literal["full", "lora"] = Field(
        "full", description="full fine-tunes every weight; lora trains small adapters: far less memory, small files"
    )
    lora_rank: int = Field(4, ge=1, le=256, description="LoRA adapter rank: larger learns more, files grow")
    lora_alpha: float | None = Field(
        None, gt=0, le=1024, description="LoRA scale numerator (the update is scaled by alpha/rank); default: the rank"
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA adapters' input")

    validation_prompts: list[Prompt] = Field(
        default_factory=list,
        max_length=8,
        description="Prompts sampled during training; default: the instance prompt and three new contexts",
    )
    num_validation_images: int = Field(1, ge=1, le=8, description="Images per validation prompt, seeds fixed")
    validation_steps: int | None = Field(
        None, ge=1, le=20_000, description="Sample (and keep the weights) every N steps; default: five points"
    )
    validation_scheduler: Scheduler = Field("ddim", description="Sampler for samples; the study: DDIM")
    validation_inference_steps: int = Field(
        100, ge=1, le=500, description="Sampling steps per sample; the study: DDIM at ~100"
    )
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

    @field_validator("training_method")
    @classmethod
    def _lora_has_no_ema(cls, value: str, info: ValidationInfo) -> str:
        if value == "lora" and info.data.get("use_ema"):
            raise ValueError("lora cannot be combined with use_ema; turn use_ema off")
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

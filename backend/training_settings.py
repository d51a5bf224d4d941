"""The training settings a user may give a job: the one source of every setting's name, default, range,
one-line help and place on the page. The API validates with it, the page and the command line read it
(`GET /api/training-settings`, `describe_settings`), and the README's table is generated from it.

Names follow diffusers' train_dreambooth.py. A preset fills every field the request leaves out. Validated with
the base model's facts as context (`TrainingSettings.model_validate(data, context=model_context(...))`), a
preset must fit the model's family, a left-out preset is the family's default, and a left-out resolution the
model's own; without that context (the model unknown) the object preset and 512 px are the defaults.
"""

from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from backend.presets import PRESETS, default_preset, misfit_message
from backend.settings import get_settings
from formats import embedding

Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
# Samplers a user may pick for samples and generations (worker/dreambooth/schedulers.py builds them).
Scheduler = Literal["ddim", "pndm", "lms", "euler", "euler_a", "dpmpp_2m"]
# note: built from the presets' table, so a preset added there is a valid name at once
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
LrScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]

# The page's groups, in the order it shows them; "Subject" holds what the new-job form asks for first.
MIN_RESOLUTION, MAX_RESOLUTION = 64, 1024
GROUPS = (
    "Subject", "Training", "LoRA", "Pivotal tuning", "Photos", "Memory", "Prior preservation", "Samples", "Optimizer",
    "State",
)  # fmt: skip


def _one_word(value: str) -> str:
    if any(character.isspace() for character in value):
        raise ValueError("must be one word, without spaces")
    return value


# A token of its own: one word (AUTOMATIC1111 and ComfyUI name an embedding's file after it, and call it by that).
Token = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32), AfterValidator(_one_word)]
# The page shows a setting when any of these conditions holds (each: {other_field: value, ...}, all of them).
LORA_TRAINED = [{"training_method": "lora"}, {"training_method": "pivotal", "pivotal_second_phase": "lora"}]
FULLY_TRAINED = [{"training_method": "full"}, {"training_method": "pivotal", "pivotal_second_phase": "full"}]
PIVOTAL = {"training_method": "pivotal"}


def setting(
    default: Any = PydanticUndefined,
    *,
    group: str,
    help: str,
    shown_when: dict | list[dict] | None = None,
    multiple_of: int | None = None,
    **constraints,
) -> Any:
    """A field with its one-line help and its group on the page (shown_when: {other_field: value}, or a list of
    such of which any may hold); no default makes it required. `multiple_of` is checked by a validator of the
    model's own, with a friendlier message."""
    extra = {"group": group, "shown_when": shown_when, "multiple_of": multiple_of}
    return Field(default, description=help, json_schema_extra={k: v for k, v in extra.items() if v}, **constraints)


class TrainingSettings(BaseModel):
    """What a user may set for a job. A preset fills every field the request leaves out."""

    model_config = ConfigDict(extra="forbid")

    # ---------------------------------------------------------------- subject
    preset: PresetName = setting(
        "object", group="Subject",
        help="Starting values: object, face or face_16gb (SD 1.x and 2.x, from the study), sdxl_object or "
        "sdxl_face (SDXL, LoRA), or custom (your own); left out: the base model's first",
    )  # fmt: skip
    instance_prompt: Prompt = setting(
        group="Subject", help="Names the subject, e.g. 'a photo of rufus dog'; a natural word works, not only 'sks'"
    )
    base_model: str | None = setting(
        None, group="Training",
        help="The Stable Diffusion model to fine-tune, from those the server offers; empty: the server's default",
    )  # fmt: skip
    training_method: Literal["full", "lora", "pivotal"] = setting(
        "full", group="Training",
        help="full fine-tunes every weight; lora trains small adapters: far less GPU memory, small files; pivotal "
        "learns a new token first, then Dreambooth: the study found it beat plain Dreambooth (not text-encoder "
        "training) and may fit 16 GB",
    )  # fmt: skip
    max_train_steps: int = setting(
        400, group="Training", ge=1, le=20_000,
        help="Optimizer steps; Dreambooth overfits fast: start low, add steps until the samples satisfy",
    )  # fmt: skip
    learning_rate: float = setting(
        2e-6, group="Training", gt=0, le=1e-3,
        help="Lower won in every case of the study: 2e-6 for objects, 1e-6 for faces; LoRA takes about 1e-4",
    )  # fmt: skip
    lr_scheduler: LrScheduler = setting("constant", group="Training", help="How the learning rate changes over the run")
    lr_warmup_steps: int = setting(
        0, group="Training", ge=0, le=20_000, help="Steps over which the learning rate ramps up from zero"
    )
    train_text_encoder: bool = setting(
        False, group="Training", help="Fine-tune the text encoder too: the study's biggest quality gain; more memory"
    )
    seed: int | None = setting(
        None, group="Training", ge=0, le=2**32 - 1, help="Makes training and samples repeatable; empty: a random one"
    )

    # ---------------------------------------------------------------- LoRA
    lora_rank: int = setting(
        4, group="LoRA", shown_when=LORA_TRAINED, ge=1, le=256,
        help="Adapter rank: larger learns more detail, and the file grows",
    )  # fmt: skip
    lora_alpha: float | None = setting(
        None, group="LoRA", shown_when=LORA_TRAINED, gt=0, le=1024,
        help="Scales the adapters' update by alpha / rank; empty: the rank",
    )  # fmt: skip
    lora_dropout: float = setting(
        0.0, group="LoRA", shown_when=LORA_TRAINED, ge=0, lt=1,
        help="Dropout on the adapters' input; 0 turns it off",
    )  # fmt: skip

    # ---------------------------------------------------------------- pivotal tuning (the study's finding 8)
    pivotal_second_phase: Literal["full", "lora"] = setting(
        "full", group="Pivotal tuning", shown_when=PIVOTAL,
        help="What the Dreambooth phase trains after textual inversion: full (the study's) or lora",
    )  # fmt: skip
    # note: after instance_prompt and training_method, so that its validator sees both; the default is checked too
    placeholder_token: Token = setting(
        "<sks>", group="Pivotal tuning", shown_when=PIVOTAL, validate_default=True,
        help="The new token the instance prompt names the subject with, e.g. 'a photo of <sks> dog'; one new word",
    )  # fmt: skip
    num_vectors: int = setting(
        1, group="Pivotal tuning", shown_when=PIVOTAL, ge=1, le=16,
        help="Embedding vectors the token stands for; more learn more detail (extra tokens <sks>_1, ...)",
    )  # fmt: skip
    initializer_token: Token | None = setting(
        None, group="Pivotal tuning", shown_when=PIVOTAL,
        help="A one-token word the new vectors start from; empty: the class noun (the word after the token)",
    )  # fmt: skip
    textual_inversion_steps: int = setting(
        2000, group="Pivotal tuning", shown_when=PIVOTAL, ge=1, le=20_000,
        help="Steps of textual inversion before Dreambooth's max_train_steps (the study: 2000, then 500)",
    )  # fmt: skip
    textual_inversion_lr: float = setting(
        5e-4, group="Pivotal tuning", shown_when=PIVOTAL, gt=0, le=1e-2,
        help="Textual inversion's learning rate; learning_rate is the Dreambooth phase's",
    )  # fmt: skip

    # ---------------------------------------------------------------- photos
    resolution: int = setting(
        512, group="Photos", ge=MIN_RESOLUTION, le=MAX_RESOLUTION, multiple_of=64,
        help="Square training size in pixels, a multiple of 64; left out: the base model's own "
        "(SD 1.5: 512, SDXL: 1024)",
    )  # fmt: skip
    center_crop: bool = setting(False, group="Photos", help="Crop the centre of each photo instead of a random square")
    random_flip: bool = setting(False, group="Photos", help="Mirror photos at random, for more variety")
    crop: Literal["auto", "center", "random", "face", "bucket"] = setting(
        "auto", group="Photos",
        help="How each photo is cut: face a square around the detected face (faces presets), center the middle "
        "square, random a different square each time, auto follows center_crop; bucket keeps each photo's shape "
        "at the nearest aspect-ratio bucket (resolution^2 pixels at most, sides multiples of 64), cutting only the "
        "rounding (centred with center_crop)",
    )  # fmt: skip
    masked_loss: bool = setting(
        False, group="Photos",
        help="Weigh the loss towards each photo's largest detected face, masked_loss_background elsewhere (as kohya's "
        "masked loss); photos without a face weigh evenly",
    )  # fmt: skip
    masked_loss_background: float = setting(
        0.3, group="Photos", ge=0, le=1, shown_when={"masked_loss": True},
        help="The loss weight outside the face with masked_loss (1: no masking, 0: the face alone)",
    )  # fmt: skip
    caption_mode: Literal["instance_only", "instance_plus_caption", "instance_plus_auto_caption"] = setting(
        "instance_only", group="Photos",
        help="instance_plus_caption trains each photo on the instance prompt followed by its caption; "
        "instance_plus_auto_caption too, with an automatic caption (CAPTION_MODEL) for photos given none; "
        "instance_only on the instance prompt alone",
    )  # fmt: skip

    # ---------------------------------------------------------------- memory
    train_batch_size: int = setting(4, group="Memory", ge=1, le=64, help="Photos per step")
    gradient_accumulation_steps: int = setting(
        1, group="Memory", ge=1, le=64, help="Micro-batches per optimizer step: a larger batch in less memory"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = setting(
        "fp16", group="Memory", help="Half-precision training where the device supports it"
    )
    gradient_checkpointing: bool = setting(
        False, group="Memory", help="Recompute activations to save memory, at some speed"
    )
    use_8bit_adam: bool = setting(False, group="Memory", help="8-bit AdamW from bitsandbytes: fits 16 GB GPUs")
    compile_unet: Literal["auto", "on", "off"] = setting(
        "auto", group="Memory",
        help="torch.compile the UNet's training steps: minutes to compile, then faster steps; auto: on a GPU for "
        "runs of 3000 or more micro-steps, where it pays back",
    )  # fmt: skip
    memory_profile: Literal["auto", "none"] = setting(
        "auto", group="Memory",
        help="auto turns memory savers on to fit the worker's GPU (the job records which); none keeps the settings",
    )  # fmt: skip
    enable_xformers_memory_efficient_attention: bool = setting(
        False, group="Memory", help="xformers attention where installed; otherwise PyTorch's own"
    )
    allow_tf32: bool = setting(
        False, group="Memory", help="TF32 matrix products on Ampere and newer GPUs: faster, slightly less precise"
    )

    # ---------------------------------------------------------------- prior preservation
    with_prior_preservation: bool = setting(
        False, group="Prior preservation",
        help="Also train on generated images of the class, so the model keeps what the class looks like (faces)",
    )  # fmt: skip
    # note: after with_prior_preservation, so that its validator can see it and name this field
    class_prompt: Prompt | None = setting(
        None, group="Subject", validate_default=True,
        help="The subject's class, e.g. 'a photo of a dog'; needed for prior preservation",
    )  # fmt: skip
    num_class_images: int = setting(
        200, group="Prior preservation", ge=1, le=1000,
        help="Class images in all; uploaded class photos count first, the base model generates the rest",
    )  # fmt: skip
    prior_loss_weight: float = setting(
        1.0, group="Prior preservation", ge=0, le=10, help="Weight of the class images' loss"
    )
    sample_batch_size: int = setting(
        4, group="Prior preservation", ge=1, le=64, help="Class images generated per batch"
    )
    class_negative_prompt: Prompt | None = setting(
        None, group="Prior preservation", help="Negative prompt for generated class images"
    )

    # ---------------------------------------------------------------- samples across the run
    validation_prompts: list[Prompt] = setting(
        default_factory=list, group="Samples", max_length=8,
        help="Prompts sampled during training, up to 8; empty: the instance prompt and three new contexts",
    )  # fmt: skip
    validation_steps: int | None = setting(
        None, group="Samples", ge=1, le=20_000,
        help="Sample, and keep the weights, every N steps; empty: about five points",
    )  # fmt: skip
    num_validation_images: int = setting(
        1, group="Samples", ge=1, le=8, help="Images per validation prompt, with fixed seeds"
    )
    validation_scheduler: Scheduler = setting("ddim", group="Samples", help="Sampler for the samples; the study: DDIM")
    validation_inference_steps: int = setting(
        100, group="Samples", ge=1, le=500, help="Sampling steps per sample; DDIM at about 100 rescues overfit models"
    )
    guidance_scale: float = setting(7.5, group="Samples", ge=0, le=30, help="How closely samples follow the prompt")

    # ---------------------------------------------------------------- optimizer
    text_encoder_lr: float | None = setting(
        None, group="Optimizer", gt=0, le=1e-3, help="The text encoder's learning rate; empty: learning_rate"
    )
    scale_lr: bool = setting(False, group="Optimizer", help="Multiply the learning rates by the effective batch size")
    lr_num_cycles: int = setting(
        1, group="Optimizer", ge=1, le=100, help="Hard restarts of the cosine_with_restarts schedule"
    )
    lr_power: float = setting(1.0, group="Optimizer", gt=0, le=10, help="Power of the polynomial schedule")
    adam_beta1: float = setting(0.9, group="Optimizer", ge=0, lt=1, help="AdamW first-moment decay")
    adam_beta2: float = setting(0.999, group="Optimizer", ge=0, lt=1, help="AdamW second-moment decay")
    adam_weight_decay: float = setting(1e-2, group="Optimizer", ge=0, le=1, help="AdamW decoupled weight decay")
    adam_epsilon: float = setting(1e-8, group="Optimizer", gt=0, le=1e-3, help="AdamW denominator guard")
    max_grad_norm: float = setting(1.0, group="Optimizer", gt=0, le=100, help="Gradient clipping threshold")
    # note: the validator below refuses it with LoRA, so the page shows it only for full fine-tuning
    use_ema: bool = setting(
        False, group="Optimizer", shown_when=FULLY_TRAINED,
        help="Export an exponential moving average of the UNet (the study: no visible gain)",
    )  # fmt: skip
    snr_gamma: float | None = setting(
        None, group="Optimizer", gt=0, le=100, help="Min-SNR loss weighting; 5.0 is recommended; empty: off"
    )
    offset_noise: bool = setting(
        False, group="Optimizer", help="Noise offset, so very dark or very bright images can be learned"
    )

    # ---------------------------------------------------------------- training state
    checkpointing_steps: int | None = setting(
        None, group="State", ge=1, le=20_000,
        help="Save the training state every N steps (a job resumes from it); empty: every quarter or 500",
    )  # fmt: skip
    checkpoints_total_limit: int | None = setting(
        None, group="State", ge=1, le=100,
        help="Validation steps whose weights are kept; empty: all (the final and recommended always)",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill what the request leaves out: first from the preset, then from the base model's facts."""
        if not isinstance(data, dict):
            return data
        context = info.context or {}
        data = {"preset": default_preset(context.get("family")), **data}
        resolution = context.get("resolution")
        model_defaults = {"resolution": _fitting_resolution(resolution)} if resolution else {}
        preset = PRESETS.get(data["preset"]) if isinstance(data["preset"], str) else None
        return {**model_defaults, **(preset.values if preset else {}), **data}

    @field_validator("preset")
    @classmethod
    def _preset_fits_the_model(cls, value: str, info: ValidationInfo) -> str:
        context = info.context or {}
        if context.get("family") and (problem := misfit_message(value, context["family"], context["base_model"])):
            raise ValueError(problem)
        return value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_64(cls, value: int) -> int:
        if value % 64:
            raise ValueError("must be a multiple of 64")
        return value

    @field_validator("use_ema")
    @classmethod
    def _no_ema_with_lora(cls, value: bool, info: ValidationInfo) -> bool:
        # note: training_method and pivotal_second_phase are declared (so validated) earlier
        if value and dreambooth_method(info.data) == "lora":
            pivotal = info.data.get("training_method") == "pivotal"
            refused = "training_method pivotal and pivotal_second_phase lora" if pivotal else "training_method lora"
            raise ValueError(f"cannot be combined with {refused}; turn use_ema off")
        return value

    @field_validator("placeholder_token")
    @classmethod
    def _placeholder_in_instance_prompt(cls, value: str, info: ValidationInfo) -> str:
        """The worker teaches the token through the instance prompt, so a pivotal job's prompt must hold it."""
        prompt = info.data.get("instance_prompt")
        if info.data.get("training_method") == "pivotal" and prompt is not None and value not in prompt:
            raise ValueError(
                f"the instance_prompt must name the subject with {value!r} when training_method is pivotal, "
                f"e.g. 'a photo of {value} dog' (or set placeholder_token to a word of the prompt's)"
            )
        return value

    @field_validator("caption_mode")
    @classmethod
    def _auto_captions_need_a_model(cls, value: str) -> str:
        if value == "instance_plus_auto_caption" and get_settings().caption_model == "none":
            raise ValueError("this server has no captioning model (CAPTION_MODEL is none); caption the photos yourself")
        return value

    @field_validator("class_prompt")
    @classmethod
    def _prior_needs_class_prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("with_prior_preservation") and not value:
            raise ValueError("required when with_prior_preservation is on")
        return value


def dreambooth_method(settings: Mapping[str, Any]) -> str:
    """What a job's Dreambooth steps train, "full" or "lora": for a pivotal job, its second phase."""
    return embedding.dreambooth_method(
        settings.get("training_method", "full"), settings.get("pivotal_second_phase", "full")
    )


def model_context(base_model: str, family: str | None, resolution: int | None) -> dict:
    """The validation context of a job on `base_model`, of this family and default resolution (None: unknown)."""
    return {"base_model": base_model, "family": family, "resolution": resolution}


def _fitting_resolution(resolution: int) -> int:
    """A model's own resolution as a valid setting: a multiple of 64 within the allowed range."""
    return max(MIN_RESOLUTION, min(MAX_RESOLUTION, resolution // 64 * 64))


# ---------------------------------------------------------------------- describing the settings


class SettingOut(BaseModel):
    """One training setting as clients show it."""

    name: str
    type: Literal["int", "float", "bool", "string", "choice", "list"]
    default: Any  # the value when neither the request nor the preset sets it
    required: bool
    nullable: bool  # null (empty) is allowed, and means what `help` says
    choices: list[str] | None  # the allowed values of a choice
    minimum: int | float | None
    maximum: int | float | None
    exclusive_minimum: bool  # the value must be above `minimum`, not equal to it
    exclusive_maximum: bool
    multiple_of: int | None
    max_items: int | None  # for lists
    max_length: int | None  # characters, of a string or of each item of a list
    help: str
    group: str
    # the page shows it only when these settings have these values (a list: when any of its conditions holds)
    shown_when: dict[str, Any] | list[dict[str, Any]] | None


class SettingsOut(BaseModel):
    groups: list[str]
    settings: list[SettingOut]


def describe_settings() -> SettingsOut:
    """Every training setting, in the order of TrainingSettings."""
    settings = [_describe(name, field) for name, field in TrainingSettings.model_fields.items()]
    return SettingsOut(groups=list(GROUPS), settings=settings)


def _describe(name: str, field: FieldInfo) -> SettingOut:
    annotation, nullable = _unwrap_optional(field.annotation)
    limits = _limits(field.metadata)
    extra = field.json_schema_extra or {}
    return SettingOut(
        name=name,
        type=_type_name(annotation),
        default=None if field.is_required() else field.get_default(call_default_factory=True),
        required=field.is_required(),
        nullable=nullable,
        choices=list(get_args(annotation)) if get_origin(annotation) is Literal else None,
        minimum=limits.get("minimum"),
        maximum=limits.get("maximum"),
        exclusive_minimum=limits.get("exclusive_minimum", False),
        exclusive_maximum=limits.get("exclusive_maximum", False),
        multiple_of=extra.get("multiple_of"),
        max_items=limits.get("max_items"),
        max_length=_max_length(annotation, field.metadata),
        help=field.description or "",
        group=extra["group"],
        shown_when=extra.get("shown_when"),
    )


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    arguments = get_args(annotation)
    if type(None) in arguments:
        (inner,) = [argument for argument in arguments if argument is not type(None)]
        return inner, True
    return annotation, False


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "choice"
    if get_origin(annotation) is list:
        return "list"
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return {int: "int", float: "float", bool: "bool", str: "string"}[annotation]


def _max_length(annotation: Any, metadata: list) -> int | None:
    """The most characters a string may have; for a list, each of its items."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    constraints = [*metadata, *(get_args(annotation)[1:] if get_origin(annotation) is Annotated else ())]
    lengths = [item.max_length for item in constraints if isinstance(item, StringConstraints) and item.max_length]
    return lengths[0] if lengths else None


def _limits(metadata: list) -> dict:
    limits: dict = {}
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            limits["minimum"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            limits |= {"minimum": item.gt, "exclusive_minimum": True}
        elif isinstance(item, annotated_types.Le):
            limits["maximum"] = item.le
        elif isinstance(item, annotated_types.Lt):
            limits |= {"maximum": item.lt, "exclusive_maximum": True}
        elif isinstance(item, annotated_types.MaxLen):
            limits["max_items"] = item.max_length
    return limits

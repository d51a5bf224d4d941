"""What a training run is asked to do, and what it reports back. Torch-free on purpose."""

from dataclasses import dataclass, field
from pathlib import Path

from formats.captions import CAPTION_MODES, photo_prompt
from formats.embedding import dreambooth_method

MIXED_PRECISIONS = ("no", "fp16", "bf16")
STATE_DIR = "training-state"  # under output_dir: the saved training states a run resumes from
MEMORY_PROFILES = ("auto", "none")
TRAINING_METHODS = ("full", "lora", "pivotal")
SECOND_PHASES = ("full", "lora")  # what pivotal tuning's phase two trains


@dataclass(frozen=True)
class TrainConfig:
    """One Dreambooth run; field names and meanings follow diffusers' train_dreambooth.py."""

    base_model: str  # Hub id, local diffusers folder, or "builtin:tiny" / "builtin:small"
    instance_images: tuple[Path, ...]  # already-ingested RGB photos (PNG/JPEG)
    instance_prompt: str  # e.g. "a photo of sks dog"
    output_dir: Path  # pipeline/, samples/, checkpoints/ and training-state/ are written here
    models_dir: Path  # where builtin models are generated and cached
    revision: str | None = None  # Hub revision (branch, tag or commit) of base_model; None = main

    # prior preservation: train on the class as well, so the model keeps what the class looks like
    with_prior_preservation: bool = False  # add the class loss (the study: matters for faces)
    class_prompt: str | None = None  # e.g. "a photo of a dog"; conditions the class images
    class_images: tuple[Path, ...] = ()  # uploaded class photos, used before any generated ones
    num_class_images: int = 200  # class images in all; the base model generates what uploads lack
    prior_loss_weight: float = 1.0  # weight of the class loss
    sample_batch_size: int = 4  # class images generated per batch
    class_negative_prompt: str | None = None  # negative prompt for generated class images
    class_inference_steps: int = 25  # DPM-Solver++ steps per generated class image
    class_guidance_scale: float = 7.5  # classifier-free guidance for generated class images
    cache_dir: Path | None = None  # shared class-image cache; None = output_dir / "cache"
    class_cache_max_bytes: int = 5 * 2**30  # the cache evicts least recently used class sets beyond this

    # data
    resolution: int = 512  # square training and sampling side, in pixels (with crop "bucket": the training area)
    center_crop: bool = False  # False = random crop, as the reference script
    random_flip: bool = False  # horizontal flip with probability 0.5
    train_batch_size: int = 1  # instance photos per micro-step (as many class images ride along)
    # each instance photo's square crop, (left, top, right, bottom) in its pixels, chosen at upload (face crops);
    # None for a photo, or () for all: center_crop / random crops as above
    instance_crop_boxes: tuple[tuple[int, int, int, int] | None, ...] = ()
    # the crop setting the boxes were chosen by (backend/photo_checks.py); the boxes decide, but "bucket" trains each
    # photo without a box at its aspect-ratio bucket (data.py) instead of a square: centred or, without center_crop,
    # at random within the bucket's rounding
    crop: str = "auto"
    instance_captions: tuple[str | None, ...] = ()  # each instance photo's caption; () = none
    # "instance_plus_caption" (or "instance_plus_auto_caption"): each photo's prompt is instance prompt + caption
    caption_mode: str = "instance_only"
    # masked loss: weigh the instance photos' loss towards the subject's box (a detected face), `masked_loss_background`
    # elsewhere; each instance photo's box, (left, top, right, bottom) in its pixels, or None (weighed evenly)
    masked_loss: bool = False
    masked_loss_background: float = 0.3
    instance_subject_boxes: tuple[tuple[int, int, int, int] | None, ...] = ()

    # optimisation
    train_text_encoder: bool = False  # fine-tune the text encoder with the UNet (the study: best quality)
    text_encoder_lr: float | None = None  # text encoder's learning rate; None = learning_rate
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step
    max_train_steps: int = 400  # optimizer steps
    learning_rate: float = 2e-6  # the study's safe default for objects
    scale_lr: bool = False  # multiply the rates by batch size x accumulation x processes
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0  # linear warmup, in optimizer steps
    lr_num_cycles: int = 1  # hard restarts of cosine_with_restarts
    lr_power: float = 1.0  # power of the polynomial schedule
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.999  # AdamW second-moment decay
    adam_weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_epsilon: float = 1e-8  # AdamW denominator guard
    max_grad_norm: float = 1.0  # gradient clipping threshold
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit: much less optimizer memory
    use_ema: bool = False  # keep an exponential moving average of the UNet and export it
    snr_gamma: float | None = None  # Min-SNR loss weighting (5.0 is recommended); None = plain MSE
    offset_noise: bool = False  # add 0.1 x per-channel noise, so the model learns very dark/bright images

    # memory
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"; falls back to "no" where the device can't
    gradient_checkpointing: bool = False  # recompute activations (UNet and text encoder): less memory, slower
    enable_xformers_memory_efficient_attention: bool = False  # when xformers is installed; else PyTorch SDPA
    allow_tf32: bool = False  # TF32 matmuls on Ampere and newer GPUs: faster, slightly less precise
    compile_unet: str = "auto"  # torch.compile the UNet's training steps: "on", "off", or "auto" (see trainees)
    memory_profile: str = "auto"  # "auto" turns memory savers on by the GPU's memory; "none" leaves settings as given

    # training state, so a run can resume
    checkpointing_steps: int | None = 500  # save the full training state every N steps; None = never
    checkpoints_total_limit: int | None = None  # keep at most N states; None = all
    resume_from_checkpoint: str | None = None  # "latest", or a state folder (name under training-state/ or path)

    # LoRA: train small low-rank adapters instead of every weight (far less memory, small files)
    training_method: str = "full"  # "full" | "lora" | "pivotal" (textual inversion, then full or LoRA)
    lora_rank: int = 4  # adapter rank
    lora_alpha: float | None = None  # adapter scale numerator (the update is scaled by alpha / rank); None = rank
    lora_dropout: float = 0.0  # dropout on the adapters' input

    # pivotal tuning (pivotal.py): textual inversion of new tokens, then Dreambooth with them
    pivotal_second_phase: str = "full"  # what phase two trains: "full" | "lora"
    placeholder_token: str = "<sks>"  # the new token; the instance prompt names the subject with it
    num_vectors: int = 1  # embedding vectors (tokens) the placeholder stands for
    initializer_token: str | None = None  # the word the new rows start from; None = the class noun
    textual_inversion_steps: int = 2000  # phase one's optimizer steps (the study: 2000)
    textual_inversion_lr: float = 5e-4  # phase one's learning rate

    seed: int | None = None  # None = nondeterministic training; samples then use seed 0
    # validation: samples across the run, the weights at each of those steps, and their scores
    validation_prompts: tuple[str, ...] = ()  # () = the instance prompt and three new contexts (score.py)
    num_validation_images: int = 1  # images per validation prompt, seeded alike at every step
    validation_steps: int | None = None  # sample every N steps (and at the last); None = about five points
    validation_scheduler: str = "ddim"  # sampler for samples (schedulers.py); the study: DDIM
    validation_inference_steps: int = 50  # sampling steps per sample
    guidance_scale: float = 7.5  # classifier-free guidance for samples
    keep_step_weights: bool = True  # keep each validation step's weights, so any of them can be exported
    kept_steps_limit: int | None = None  # keep at most N steps' weights (the final and recommended always); None = all
    scorer_model: str | None = None  # image-text model scoring the samples (score.py); None = no scoring
    device: str | None = None  # "cuda" | "cpu"; None = cuda if available (choose via CUDA_VISIBLE_DEVICES)

    def __post_init__(self):
        """Refuse settings the training loop cannot run with; take any sequence where a tuple is due."""
        for name in (
            "instance_images",
            "class_images",
            "validation_prompts",
            "instance_crop_boxes",
            "instance_captions",
            "instance_subject_boxes",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.instance_images:
            raise ValueError("instance_images is empty")
        for name in ("instance_crop_boxes", "instance_captions", "instance_subject_boxes"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.instance_images):
                raise ValueError(f"{name} must have one entry per instance image, or none")
        if not 0 <= self.masked_loss_background <= 1:
            raise ValueError("masked_loss_background must be between 0 and 1")
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {', '.join(CAPTION_MODES)}, not {self.caption_mode!r}")
        counts = (self.max_train_steps, self.train_batch_size, self.gradient_accumulation_steps, self.sample_batch_size)
        if min(counts) < 1:
            raise ValueError(
                "max_train_steps, train_batch_size, gradient_accumulation_steps and sample_batch_size must be >= 1"
            )
        if self.compile_unet not in ("auto", "on", "off"):
            raise ValueError(f"compile_unet must be auto, on or off, not {self.compile_unet!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")
        if self.memory_profile not in MEMORY_PROFILES:
            raise ValueError(f"memory_profile must be auto or none, not {self.memory_profile!r}")
        if self.with_prior_preservation and not self.class_prompt:
            raise ValueError("with_prior_preservation needs a class_prompt")
        if self.with_prior_preservation and min(self.num_class_images, self.class_inference_steps) < 1:
            raise ValueError("num_class_images and class_inference_steps must be >= 1")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError("snr_gamma must be > 0")
        if self.training_method not in TRAINING_METHODS:
            raise ValueError(f"training_method must be full, lora or pivotal, not {self.training_method!r}")
        if self.pivotal_second_phase not in SECOND_PHASES:
            raise ValueError(f"pivotal_second_phase must be full or lora, not {self.pivotal_second_phase!r}")
        if self.training_method == "pivotal":
            if self.placeholder_token not in self.instance_prompt:
                raise ValueError(f"the instance prompt must name the subject with {self.placeholder_token!r}")
            if min(self.num_vectors, self.textual_inversion_steps) < 1:
                raise ValueError("num_vectors and textual_inversion_steps must be >= 1")
        if self.lora_rank < 1:
            raise ValueError("lora_rank must be >= 1")
        if self.adapter_method == "lora" and self.use_ema:
            raise ValueError("use_ema is not supported with training_method lora")
        for name in ("checkpointing_steps", "checkpoints_total_limit", "validation_steps", "kept_steps_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None")

    @property
    def adapter_method(self) -> str:
        """What the Dreambooth steps train: "full" or "lora" (pivotal tuning's phase two, for a pivotal run)."""
        return dreambooth_method(self.training_method, self.pivotal_second_phase)

    @property
    def crop_boxes(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        """Each instance photo's crop box (None: center_crop or random crops)."""
        return self.instance_crop_boxes or (None,) * len(self.instance_images)

    @property
    def subject_boxes(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        """Each instance photo's subject box for masked loss (None: none)."""
        return self.instance_subject_boxes or (None,) * len(self.instance_images)

    @property
    def bucketed(self) -> bool:
        """Whether photos without a crop box train at their aspect-ratio bucket rather than a square."""
        return self.crop == "bucket"

    @property
    def photo_prompts(self) -> tuple[str, ...]:
        """Each instance photo's prompt: the instance prompt, and with instance_plus_caption its caption after."""
        captions = self.instance_captions or (None,) * len(self.instance_images)
        return tuple(photo_prompt(self.instance_prompt, caption, self.caption_mode) for caption in captions)

    @property
    def inversion_steps(self) -> int:
        """Textual-inversion steps before the Dreambooth ones (pivotal tuning's phase one; else none)."""
        return self.textual_inversion_steps if self.training_method == "pivotal" else 0

    @property
    def total_steps(self) -> int:
        """The run's optimizer steps in all: its steps are numbered 1..total_steps across both phases."""
        return self.inversion_steps + self.max_train_steps

    @property
    def class_cache_dir(self) -> Path:
        """Where generated class images are cached: cache_dir, else a folder of this run's own."""
        return self.cache_dir if self.cache_dir is not None else self.output_dir / "cache"


@dataclass(frozen=True)
class Progress:
    """A progress report; step numbers only grow within one phase."""

    phase: str  # "preparing" | "generating_class_images" | "inversion" | "training" | "sampling" | "exporting"
    step: int  # inversion, training: optimizer steps done (across both); generating_class_images: images made
    total_steps: int  # inversion, training: total_steps; generating_class_images: images needed
    loss: float | None  # mean loss of the last step, when training
    eta_seconds: float | None  # estimated seconds left in this phase


@dataclass(frozen=True)
class Sample:
    """One generated image on disk."""

    path: Path  # PNG file
    prompt: str  # the prompt it was made from
    seed: int  # its torch.Generator seed
    step: int  # the training step of the weights that made it


@dataclass(frozen=True)
class MemoryPlan:
    """The memory savers memory_profile "auto" chose, and why."""

    profile: str  # "none" (as asked) | "cpu" | "24gb" | "16gb" | "12gb" | "sdxl-...": the tier the device fell in
    gpu_memory_gib: float | None  # the GPU's total memory; None on the CPU
    changes: tuple[tuple[str, object], ...] = ()  # (setting, value) pairs it changed

    def as_dict(self) -> dict:
        """What the job records: {"profile", "gpu_memory_gib", "changes": {setting: value}}."""
        gib = None if self.gpu_memory_gib is None else round(self.gpu_memory_gib, 1)
        return {"profile": self.profile, "gpu_memory_gib": gib, "changes": dict(self.changes)}

    def describe(self) -> str:
        changed = ", ".join(f"{name}={value}" for name, value in self.changes) or "no changes"
        memory = f"{self.gpu_memory_gib:.0f} GiB GPU" if self.gpu_memory_gib is not None else "no GPU"
        return f"memory profile {self.profile} ({memory}): {changed}"


@dataclass(frozen=True)
class TrainResult:
    """What a run left behind."""

    stopped: bool  # True when should_stop() ended it early (no samples/exports then)
    final_step: int  # optimizer steps done
    pipeline_dir: Path | None  # diffusers folder (safetensors) of the trained pipeline
    samples: tuple[Sample, ...]  # validation images of this run, by step, then prompt and index
    checkpoints: dict[str, Path]  # {"fp16": path, "fp32": path} single files; LoRA runs add "lora", "lora_kohya"
    memory_plan: MemoryPlan | None = None  # what memory_profile chose
    class_images_generated: int = 0  # class images this run made (the rest came from uploads or the cache)
    resumed_from_step: int = 0  # the saved training state's step this run continued from; 0 = fresh
    kept_steps: dict[int, Path] = field(default_factory=dict)  # intermediate steps' kept weights, by step
    evaluation: dict | None = None  # the scores and the recommended step (validate.Evaluator.evaluation)

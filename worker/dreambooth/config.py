"""What a training run is asked to do, and what it reports back. Torch-free on purpose."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    """One Dreambooth run; field names follow diffusers' train_dreambooth.py."""

    base_model: str  # Hub id, local diffusers folder, or "builtin:tiny" / "builtin:small"
    instance_images: tuple[Path, ...]  # already-ingested RGB photos (PNG/JPEG)
    instance_prompt: str  # e.g. "a photo of sks dog"
    output_dir: Path  # pipeline/, samples/ and checkpoints/ are written here
    models_dir: Path  # where builtin models are generated and cached
    resolution: int = 512  # square training and sampling side, in pixels
    center_crop: bool = False  # False = random crop, as the reference script
    random_flip: bool = False  # horizontal flip with probability 0.5
    train_batch_size: int = 1  # photos per micro-step
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step
    max_train_steps: int = 400  # optimizer steps
    learning_rate: float = 2e-6  # the study's safe default for objects
    scale_lr: bool = False  # multiply the rate by batch size x accumulation x processes
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0  # linear warmup, in optimizer steps
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.999  # AdamW second-moment decay
    adam_weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_epsilon: float = 1e-8  # AdamW denominator guard
    max_grad_norm: float = 1.0  # gradient clipping threshold
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit: much less optimizer memory
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"; falls back to "no" where the device can't
    gradient_checkpointing: bool = False  # recompute activations: less memory, slower steps
    seed: int | None = None  # None = nondeterministic training; samples then use seed 0
    validation_prompts: tuple[str, ...] = ()  # sampled after training with DDIM; () = the instance prompt
    num_validation_images: int = 1  # images per validation prompt
    num_inference_steps: int = 50  # DDIM steps per sample
    guidance_scale: float = 7.5  # classifier-free guidance for samples
    device: str | None = None  # "cuda" | "cpu"; None = cuda if available (choose via CUDA_VISIBLE_DEVICES)

    def __post_init__(self):
        """Refuse settings the training loop cannot run with."""
        if not self.instance_images:
            raise ValueError("instance_images is empty")
        if min(self.max_train_steps, self.train_batch_size, self.gradient_accumulation_steps) < 1:
            raise ValueError("max_train_steps, train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")


@dataclass(frozen=True)
class Progress:
    """A progress report; step numbers only grow within one phase."""

    phase: str  # "preparing" | "training" | "sampling" | "exporting"
    step: int  # optimizer steps done
    total_steps: int  # max_train_steps
    loss: float | None  # mean loss of the last step, when training
    eta_seconds: float | None  # estimated seconds of training left


@dataclass(frozen=True)
class Sample:
    """One generated image on disk."""

    path: Path  # PNG file
    prompt: str  # the prompt it was made from
    seed: int  # its torch.Generator seed
    step: int  # the training step of the weights that made it


@dataclass(frozen=True)
class TrainResult:
    """What a run left behind."""

    stopped: bool  # True when should_stop() ended it early (no samples/exports then)
    final_step: int  # optimizer steps done
    pipeline_dir: Path | None  # diffusers folder (safetensors) of the trained pipeline
    samples: tuple[Sample, ...]  # validation images, in prompt then index order
    checkpoints: dict[str, Path]  # {"fp16": path, "fp32": path} single files

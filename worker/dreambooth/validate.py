"""The validator: at a validation step, sample the trained weights, keep them, score the samples, report.

Which steps are validated, where their outputs go and how they are scored is steps.py's bookkeeping.
"""

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from formats.embedding import EMBEDDING_FILE

from .components import Components, frozen_on, pipeline_for, release
from .config import Progress, Sample, TrainConfig
from .export import checkpoint_metadata
from .files import atomic_dir
from .lora import lora_settings, save_lora
from .pivotal import learned_vectors, save_embedding
from .sample import sample_images
from .saving import save_model
from .steps import (
    SAMPLES_DIR,
    Evaluator,
    Validation,
    kept_step_dirs,
    prune,
    sample_seeds,
    step_dir,
    validation_prompts,
)
from .trainees import Trainees


class Validator:
    """Samples, keeps and scores the weights at a validation step, then reports it."""

    def __init__(
        self,
        config: TrainConfig,
        parts: Components,
        accelerator: Accelerator,
        photos: list,
        start: int,
        on_progress: Callable[[Progress], None],
        on_validation: Callable[[Validation], None],
    ):
        self.config, self.parts, self.accelerator = config, parts, accelerator
        self.on_progress, self.on_validation = on_progress, on_validation
        prompts = validation_prompts(config)
        per_prompt = config.num_validation_images
        self.prompts = [prompt for prompt, _ in prompts for _ in range(per_prompt)]
        self.contexts = [context for _, context in prompts for _ in range(per_prompt)]
        self.seeds = sample_seeds(config, len(self.prompts))
        self.evaluator = Evaluator(
            config, photos, accelerator.device, start, functools.partial(_scorer, models_dir=config.models_dir)
        )
        self.samples: list[Sample] = []
        self.evaluation: dict | None = None

    @torch.no_grad()
    def __call__(self, step: int, run: Trainees) -> None:
        config = self.config
        self.on_progress(Progress("sampling", step, config.total_steps, None, None))
        with run.evaluated() as (unet, text_encoders):
            samples = self._sample(step, unet, text_encoders)
            final = step == config.total_steps
            weights_dir = self._keep(step, unet, text_encoders) if config.keep_step_weights and not final else None
        release(self.accelerator.device)
        self.samples += samples
        self.evaluator.score(step, samples, self.contexts)
        kept = kept_step_dirs(config.output_dir)
        self.evaluation = self.evaluator.evaluation(set(kept) | {step})
        recommended = self.evaluation["recommended_step"] if self.evaluation else None
        kept = prune(kept, config.kept_steps_limit, protected={step, recommended})
        self.on_validation(
            Validation(
                step=step,
                samples=tuple(samples),
                weights_dir=weights_dir,
                weights_format=self.weights_format(step),
                kept_steps=tuple(kept),
                evaluation=self.evaluation,
            )
        )

    def _sample(self, step: int, unet: torch.nn.Module, text_encoders: tuple) -> list[Sample]:
        config, accelerator, parts = self.config, self.accelerator, self.parts
        device, dtype = accelerator.device, _weight_dtype(accelerator)
        text_encoders = text_encoders or tuple(frozen_on(m, device, dtype) for m in parts.text_encoders)
        pipeline = pipeline_for(parts, unet, frozen_on(parts.vae, device, dtype), text_encoders)
        with accelerator.autocast():
            return sample_images(
                pipeline, self.prompts, self.seeds, config.validation_inference_steps, config.guidance_scale,
                config.resolution, config.output_dir / SAMPLES_DIR, step, scheduler=config.validation_scheduler,
            )  # fmt: skip

    def weights_format(self, step: int) -> str:
        """How a step's weights are kept: "lora" files, "diffusers" model folders, or (pivotal tuning's phase one)
        the learned "embedding" alone."""
        if step <= self.config.inversion_steps:
            return "embedding"
        return "lora" if self.config.adapter_method == "lora" else "diffusers"

    def _keep(self, step: int, unet: torch.nn.Module, text_encoders: tuple) -> Path:
        """Save what training changed at this step: the LoRA files, or the trained models laid out like the
        pipeline folder; with pivotal tuning, the learned embedding too (alone in phase one)."""
        config, parts, path = self.config, self.parts, step_dir(self.config.output_dir, step)
        kind = self.weights_format(step)
        with atomic_dir(path) as tmp:
            if kind == "lora":
                metadata = checkpoint_metadata(config, step, parts.family.info.name)
                save_lora(tmp, unet, text_encoders, lora_settings(config), parts.family, metadata)
            elif kind == "diffusers":
                save_model(unet, tmp / "unet")
                for folder, text_encoder in zip(parts.family.info.text_encoders, text_encoders):
                    save_model(text_encoder, tmp / folder)
            if config.training_method == "pivotal":
                vectors = learned_vectors(parts.tokenizers, text_encoders or parts.text_encoders, config)
                save_embedding(tmp / EMBEDDING_FILE, vectors, config, step)
        return path


def _weight_dtype(accelerator: Accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


# The scorer loaded last, by (model, device, models dir): a worker scores job after job with it.
_SCORERS: dict[tuple, object] = {}


def _scorer(model: str, device: torch.device, models_dir: Path):
    """The scorer for `model`, loaded once per process (a worker scores many jobs)."""
    from .score import Scorer

    key = (model, str(device), models_dir)
    if key not in _SCORERS:
        _SCORERS.clear()  # note: one scoring model in memory at a time
        _SCORERS[key] = Scorer(model, models_dir, device)
    return _SCORERS[key]

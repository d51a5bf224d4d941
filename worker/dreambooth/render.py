"""Render images on demand from a trained model: load it once, keep it, sample with the sampler asked for.

A trained model is a complete pipeline folder (a job's final weights), that folder with some
components replaced by a kept step's weights, or a base model with a kept step's LoRA adapters or learned
embedding (pivotal tuning), or both.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open

from formats.embedding import EMBEDDING_FILE
from formats.lora import LORA_FILES

from .components import model_identity, resolve_base_model
from .families import Family, family_of
from .files import atomic_file
from .pivotal import load_embedding
from .schedulers import make_scheduler

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("diffusers", "lora", "embedding")
ON_BASE_MODEL = ("lora", "embedding")  # the weights formats that go on the base model


@dataclass(frozen=True)
class TrainedModel:
    """Where a trained model's weights are."""

    pipeline_dir: Path | None = None  # a complete diffusers pipeline folder: the job's final weights
    weights_dir: Path | None = None  # a kept step's weights: a folder laid out like the pipeline's
    weights_format: str | None = None  # "diffusers": replace pipeline_dir's components; "lora", "embedding": on
    # base_model (a kept step of pivotal tuning also holds the embedding of its new tokens, loaded first)
    base_model: str | None = None  # for LoRA and embedding weights: a Hub id, a diffusers folder, or builtin:NAME
    models_dir: Path | None = None  # where builtin base models are generated

    def __post_init__(self):
        if self.weights_dir is not None and self.weights_format not in WEIGHT_FORMATS:
            raise ValueError(f"weights_format must be diffusers, lora or embedding, not {self.weights_format!r}")
        on_base = self.weights_format in ON_BASE_MODEL
        if on_base and (self.base_model is None or self.models_dir is None):
            raise ValueError("LoRA and embedding weights need a base_model and a models_dir")
        if not on_base and self.pipeline_dir is None:
            raise ValueError("a pipeline_dir is needed unless the weights go on a base model")


@dataclass(frozen=True)
class RenderRequest:
    prompt: str
    negative_prompt: str | None
    scheduler: str  # a name of schedulers.SCHEDULERS
    num_inference_steps: int
    guidance_scale: float
    seed: int  # image i uses seed + i
    num_images: int
    resolution: int  # square side in pixels


@dataclass(frozen=True)
class RenderedImage:
    path: Path  # PNG file
    seed: int


@dataclass
class LoadedModel:
    """A trained pipeline kept in memory (on the CPU between renders), with its own sampler's config."""

    pipeline: DiffusionPipeline
    scheduler_config: dict  # the saved scheduler's config: every sampler starts from this noise schedule
    device: torch.device


def model_key(model: TrainedModel) -> tuple[str, ...]:
    """What names the exact weights `model` loads (paths plus file sizes and times), cheap to compute."""
    sources = [model.weights_format or "pipeline"]
    if model.weights_format in ON_BASE_MODEL:
        sources.append(model_identity(resolve_base_model(model.base_model, model.models_dir)))
    else:
        sources.append(model_identity(str(model.pipeline_dir)))
    if model.weights_dir is not None:
        sources.append(model_identity(str(model.weights_dir)))
    return tuple(sources)


def load_trained(model: TrainedModel) -> LoadedModel:
    """Load a trained pipeline without a safety checker, in fp16 when a GPU will run it; it stays on the CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if model.weights_format in ON_BASE_MODEL:
        location = resolve_base_model(model.base_model, model.models_dir)
        family = family_of(location)
        pipeline = family.pipeline_class.from_pretrained(location, **family.load_options())
        if (model.weights_dir / EMBEDDING_FILE).is_file():
            load_embedding_into(pipeline, family, model.weights_dir / EMBEDDING_FILE)
        if model.weights_format == "lora":
            pipeline.load_lora_weights(str(model.weights_dir), weight_name=LORA_FILES["lora"])
    else:
        family = family_of(str(model.pipeline_dir))
        options = family.load_options()
        if model.weights_format == "diffusers":
            options.update(_trained_components(family, model.weights_dir))
        pipeline = family.pipeline_class.from_pretrained(model.pipeline_dir, **options)
    if device.type == "cuda":
        pipeline.to(dtype=torch.float16)
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipeline, scheduler_config=dict(pipeline.scheduler.config), device=device)


def load_embedding_into(pipeline: DiffusionPipeline, family: Family, path: Path) -> None:
    """Add a learned embedding's tokens to each of the pipeline's text encoders (diffusers' own loader)."""
    with safe_open(path, "pt") as file:
        token = file.metadata()["placeholder_token"]
    for vectors, tokenizer, encoder in zip(load_embedding(path), family.info.tokenizers, family.info.text_encoders):
        pipeline.load_textual_inversion(
            vectors, token=token, tokenizer=getattr(pipeline, tokenizer), text_encoder=getattr(pipeline, encoder)
        )


def _trained_components(family: Family, weights_dir: Path) -> dict:
    """The components a kept step's diffusers weights replace: the UNet, and the text encoders if they were
    trained."""
    components = {"unet": UNet2DConditionModel.from_pretrained(weights_dir, subfolder="unet")}
    for cls, folder in zip(family.text_encoder_classes, family.info.text_encoders):
        if (weights_dir / folder).is_dir():
            components[folder] = cls.from_pretrained(weights_dir, subfolder=folder)
    return components


class PipelineCache:
    """The trained model used last, kept loaded between renders (an LRU of one), keyed by what it was
    loaded from; `loads` counts the loads from disk."""

    def __init__(self):
        self._key: tuple[str, ...] | None = None
        self._loaded: LoadedModel | None = None
        self.loads = 0

    def get(self, model: TrainedModel) -> tuple[LoadedModel, bool]:
        """The loaded model, and whether it was already loaded."""
        key = model_key(model)
        if self._loaded is not None and key == self._key:
            log.debug("reusing loaded trained model %s", key[1])
            return self._loaded, True
        # note: drop the old model before loading the new one, so two never share the memory
        self.clear()
        self._loaded = load_trained(model)
        self._key = key
        self.loads += 1
        log.info("loaded trained model %s (load %d of this process)", key[1], self.loads)
        return self._loaded, False

    def clear(self) -> None:
        self._key = self._loaded = None


def render(
    loaded: LoadedModel,
    request: RenderRequest,
    out_dir: Path,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[RenderedImage]:
    """Make request.num_images PNGs as out_dir/<index>.png, image i from seed + i; stops early if told to.

    The pipeline visits the GPU only for the render, so a training job that comes next has all of it.
    """
    pipeline = loaded.pipeline.to(loaded.device)
    images: list[RenderedImage] = []
    try:
        for index in range(request.num_images):
            if should_stop():
                break
            seed = request.seed + index
            # note: one image per call, each with a fresh sampler and a CPU generator, so image i is the
            # same whatever num_images was and whichever device rendered it
            pipeline.scheduler = make_scheduler(request.scheduler, loaded.scheduler_config)
            image = pipeline(
                request.prompt,
                negative_prompt=request.negative_prompt,
                height=request.resolution,
                width=request.resolution,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]
            path = out_dir / f"{index}.png"
            with atomic_file(path) as tmp:
                image.save(tmp, format="PNG")
            images.append(RenderedImage(path=path, seed=seed))
    finally:
        if loaded.device.type == "cuda":
            pipeline.to("cpu")
            torch.cuda.empty_cache()
    return images

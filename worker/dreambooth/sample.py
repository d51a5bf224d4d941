"""Sample images from a pipeline with DDIM, deterministically per seed."""

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from .config import Sample
from .files import atomic_file
from .schedulers import make_scheduler

log = logging.getLogger(__name__)


def load_pipeline(pipeline_dir: Path, device: str | None = None) -> DiffusionPipeline:
    """Load a trained pipeline folder for sampling, on `device` (None = cuda if available)."""
    pipeline = DiffusionPipeline.from_pretrained(pipeline_dir)
    return pipeline.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def sample_images(
    pipeline: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    out_dir: Path,
    step: int,
    negative_prompt: str | None = None,
    scheduler: str = "ddim",
) -> list[Sample]:
    """Make one PNG per (prompt, seed) pair as out_dir/<step>-<index>.png, with the named sampler."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    # note: the study found DDIM gives much better images than PNDM or LMS on overfit Dreambooth models
    pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    samples = []
    for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
        # note: a CPU generator draws the same starting noise whatever device the pipeline runs on
        image = pipeline(
            prompt,
            negative_prompt=negative_prompt,
            height=resolution,
            width=resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        path = out_dir / f"{step}-{index}.png"
        with atomic_file(path) as tmp:
            image.save(tmp, format="PNG")
        samples.append(Sample(path=path, prompt=prompt, seed=seed, step=step))
    log.info("sampled %d images at step %d into %s", len(samples), step, out_dir)
    return samples

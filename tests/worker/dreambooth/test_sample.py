"""Validation samples: PNGs of the right size, reproducible from their seed."""

from pathlib import Path

import numpy as np
from PIL import Image

from worker.dreambooth.config import Progress, TrainConfig, TrainResult
from worker.dreambooth.sample import load_pipeline, sample_images

Run = tuple[TrainConfig, TrainResult, list[Progress]]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_training_samples_every_prompt_with_the_same_seeds_at_each_validation_step(trained: Run):
    config, result, _ = trained
    prompts = (("a photo of sks toy", 0), ("a sks toy on the beach", 1))
    # note: a 3-step run has about five validation points: every step
    assert [(s.prompt, s.seed, s.step) for s in result.samples] == [
        (prompt, seed, step) for step in (1, 2, 3) for prompt, seed in prompts
    ]
    for sample in result.samples:
        assert sample.path == config.output_dir / "samples" / f"{sample.step}-{sample.seed}.png"
        assert pixels(sample.path).shape == (config.resolution, config.resolution, 3)


def test_same_seed_same_pixels(trained: Run, tmp_path: Path):
    config, result, _ = trained
    pipeline = load_pipeline(result.pipeline_dir, "cpu")
    first = result.samples[-2]  # the final step's first sample
    again = sample_images(
        pipeline,
        [first.prompt, first.prompt, first.prompt],
        [first.seed, first.seed, first.seed + 1],
        config.validation_inference_steps,
        config.guidance_scale,
        config.resolution,
        tmp_path,
        step=first.step,
    )
    # note: the saved pipeline reproduces the sample made in memory during training
    assert np.array_equal(pixels(again[0].path), pixels(first.path))
    assert np.array_equal(pixels(again[1].path), pixels(first.path))
    assert not np.array_equal(pixels(again[2].path), pixels(first.path))

"""Validation across the run: samples at the expected steps and seeds, kept weights, pruning, scores, resume."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.dreambooth.config import TrainConfig
from worker.dreambooth.sample import load_pipeline, sample_images
from worker.dreambooth.steps import (
    Validation,
    forget_after,
    is_validation_step,
    kept_step_dirs,
    prune,
    save_scores,
    validation_prompts,
)
from worker.dreambooth.train import train

from .helpers import changed, weights

PROMPTS = ("a photo of sks toy", "a sks toy on the beach")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def validated(make_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory):
    """A 5-step run validating every 2 steps (and at the last), with what it reported."""
    config = make_config(
        tmp_path_factory.mktemp("validated"),
        max_train_steps=5,
        validation_steps=2,
        validation_prompts=PROMPTS,
        validation_inference_steps=2,
    )
    reports: list[Validation] = []
    return config, train(config, on_validation=reports.append), reports


def test_samples_come_at_the_validation_steps_with_the_same_seeds(validated):
    _config, result, reports = validated
    assert [report.step for report in reports] == [2, 4, 5]
    for report in reports:
        assert [(s.prompt, s.seed, s.step) for s in report.samples] == [
            (prompt, seed, report.step) for seed, prompt in enumerate(PROMPTS)
        ]
        assert all(s.path.is_file() for s in report.samples)
    assert result.samples == tuple(s for report in reports for s in report.samples)


def test_each_intermediate_step_keeps_its_weights_and_the_last_is_the_pipeline(validated):
    config, result, reports = validated
    assert [report.weights_dir for report in reports] == [
        config.output_dir / "steps" / "step-2",
        config.output_dir / "steps" / "step-4",
        None,
    ]
    assert reports[-1].kept_steps == (2, 4) and set(result.kept_steps) == {2, 4}
    # note: only what training changed is kept: the UNet (the text encoder was frozen)
    assert sorted(p.name for p in result.kept_steps[2].iterdir()) == ["unet"]
    assert changed(weights(result.kept_steps[2] / "unet"), weights(result.pipeline_dir / "unet"))


def test_kept_weights_are_exactly_what_the_loop_had_at_that_step(
    validated, make_config: Callable[..., TrainConfig], tmp_path: Path
):
    _config, result, _ = validated
    # note: the same seed trains the same first two steps, so a 2-step run ends where the 5-step run was at step 2
    short = train(
        make_config(tmp_path, max_train_steps=2, validation_prompts=PROMPTS[:1], validation_inference_steps=1)
    )
    assert not changed(weights(result.kept_steps[2] / "unet"), weights(short.pipeline_dir / "unet"))


def test_a_kept_step_resamples_its_sample_exactly(validated, tmp_path: Path):
    config, result, reports = validated
    pipeline = load_pipeline(result.pipeline_dir, "cpu")
    pipeline.unet.load_state_dict(weights(result.kept_steps[4] / "unet"))
    first = reports[1].samples[0]
    again = sample_images(
        pipeline,
        [first.prompt],
        [first.seed],
        config.validation_inference_steps,
        config.guidance_scale,
        config.resolution,
        tmp_path,
        step=first.step,
    )
    assert np.array_equal(pixels(again[0].path), pixels(first.path))


def test_default_schedule_is_about_five_points_and_always_the_last_step(make_config, tmp_path: Path):
    config = make_config(tmp_path, max_train_steps=400)
    assert [s for s in range(401) if is_validation_step(config, s)] == [80, 160, 240, 320, 400]
    odd = make_config(tmp_path, max_train_steps=7, validation_steps=3)
    assert [s for s in range(8) if is_validation_step(odd, s)] == [3, 6, 7]


def test_default_prompts_are_the_instance_prompt_then_new_contexts(make_config, tmp_path: Path):
    prompts = validation_prompts(make_config(tmp_path))
    assert prompts[0] == ("a photo of sks toy", False)
    assert len(prompts) == 4 and all(context and "sks toy" in p for p, context in prompts[1:])


def make_steps(root: Path, steps: list[int]) -> dict[int, Path]:
    for step in steps:
        (root / "steps" / f"step-{step}" / "unet").mkdir(parents=True)
    return kept_step_dirs(root)


def test_pruning_keeps_the_limit_counting_the_final_and_never_a_protected_step(tmp_path: Path):
    kept = make_steps(tmp_path, [10, 20, 30, 40])
    after = prune(kept, limit=3, protected={10, 40})
    # note: 3 = two intermediate steps + the final one to come; 10 (recommended) and 40 (newest) stay
    assert list(after) == [10, 40] and list(kept_step_dirs(tmp_path)) == [10, 40]
    assert prune(after, limit=1, protected={10, 40}) == after
    assert list(prune(make_steps(tmp_path / "b", [1, 2]), limit=None, protected=set())) == [1, 2]


def test_resuming_forgets_every_validation_output_after_the_saved_step(tmp_path: Path):
    make_steps(tmp_path, [2, 4, 6])
    (tmp_path / "steps" / ".step-8.1234.tmp").mkdir()
    for name in ("2-0.png", "4-0.png", "4-1.png", "6-0.png", "16-0.png"):
        (tmp_path / "samples").mkdir(exist_ok=True)
        (tmp_path / "samples" / name).write_bytes(b"png")
    save_scores(tmp_path, [{"step": s, "score": 0.5} for s in (2, 4, 6)])
    forget_after(tmp_path, 4)
    assert list(kept_step_dirs(tmp_path)) == [2, 4]
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["step-2", "step-4"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["2-0.png", "4-0.png", "4-1.png"]
    assert [s["step"] for s in json.loads((tmp_path / "evaluation.json").read_text())["steps"]] == [2, 4]


def test_a_scored_run_recommends_a_kept_step_and_says_why(make_config, tmp_path: Path):
    config = make_config(
        tmp_path,
        max_train_steps=4,
        validation_steps=2,
        validation_inference_steps=1,
        scorer_model="builtin:tiny-clip",
        kept_steps_limit=1,
    )
    reports: list[Validation] = []
    result = train(config, on_validation=reports.append)
    assert [len(report.evaluation["steps"]) for report in reports] == [1, 2]
    evaluation = result.evaluation
    assert evaluation["scorer"] == "builtin:tiny-clip"
    assert [s["step"] for s in evaluation["steps"]] == [2, 4]
    for score in evaluation["steps"]:
        assert all(0 <= score[key] <= 1 for key in ("subject_fidelity", "prompt_fidelity", "memorisation", "score"))
    assert evaluation["recommended_step"] in (2, 4) and evaluation["reason"]
    assert evaluation["recommended_is_final"] == (evaluation["recommended_step"] == 4)
    # note: limit 1 keeps only the final step, unless the recommended step is an earlier one
    assert set(result.kept_steps) == ({2} if evaluation["recommended_step"] == 2 else set())

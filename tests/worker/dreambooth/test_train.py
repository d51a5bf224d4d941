"""The training loop on the builtin tiny model, on the CPU."""

import logging
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.worker.dreambooth.helpers import changed, weights
from worker.dreambooth.config import MemoryPlan, Progress, TrainConfig, TrainResult
from worker.dreambooth.train import train

Run = tuple[TrainConfig, TrainResult, list[Progress]]


def test_progress_has_increasing_steps_finite_loss_and_eta(trained: Run):
    config, result, progress = trained
    assert not result.stopped and result.final_step == config.max_train_steps
    phases = [p.phase for i, p in enumerate(progress) if i == 0 or progress[i - 1].phase != p.phase]
    # note: a 3-step run validates (samples) after every step
    assert phases == ["preparing"] + ["training", "sampling"] * config.max_train_steps + ["exporting"]
    training = [p for p in progress if p.phase == "training"]
    assert [p.step for p in training] == list(range(1, config.max_train_steps + 1))
    assert all(math.isfinite(p.loss) and p.eta_seconds >= 0 for p in training)
    assert training[-1].eta_seconds == 0


def test_training_changes_the_unet_only(trained: Run, tiny_model: Path):
    _, result, _ = trained
    assert changed(weights(result.pipeline_dir / "unet"), weights(tiny_model / "unet"))
    for frozen in ("vae", "text_encoder"):
        assert not changed(weights(result.pipeline_dir / frozen), weights(tiny_model / frozen))


def test_outputs_are_whole_files_in_place(trained: Run):
    config, result, _ = trained
    assert result.checkpoints == {
        "fp16": config.output_dir / "checkpoints" / "model-fp16.safetensors",
        "fp32": config.output_dir / "checkpoints" / "model-fp32.safetensors",
    }
    assert result.pipeline_dir == config.output_dir / "pipeline"
    assert not list(config.output_dir.rglob(".*"))  # note: no temporary files or folders left behind


def test_should_stop_ends_early_without_exports(
    make_config: Callable[..., TrainConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    steps: list[int] = []
    config = make_config(tmp_path / "out", max_train_steps=10, mixed_precision="fp16")
    with caplog.at_level(logging.WARNING):
        result = train(config, lambda p: steps.append(p.step), should_stop=lambda: len(steps) > 2)
    assert result == TrainResult(
        stopped=True, final_step=2, pipeline_dir=None, samples=(), checkpoints={}, memory_plan=MemoryPlan("cpu", None)
    )
    assert not (tmp_path / "out").exists()
    assert "fp16 is not supported on cpu" in caplog.text


def test_8bit_adam_bf16_accumulation_and_random_crops(
    make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path
):
    config = make_config(
        tmp_path,
        max_train_steps=2,
        use_8bit_adam=True,
        mixed_precision="bf16",
        gradient_accumulation_steps=2,
        train_batch_size=2,
        random_flip=True,
        validation_inference_steps=2,
    )
    losses: list[float] = []
    result = train(config, lambda p: losses.append(p.loss) if p.phase == "training" else None)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert changed(weights(result.pipeline_dir / "unet"), weights(tiny_model / "unet"))
    # note: frozen parts trained in bf16 must still be exported as the base model's exact fp32 weights
    assert not changed(weights(result.pipeline_dir / "vae"), weights(tiny_model / "vae"))

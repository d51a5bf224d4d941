"""The reference script's training options, each run for real on builtin:tiny."""

import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.worker.dreambooth.helpers import changed, weights
from worker.dreambooth.config import Progress, TrainConfig
from worker.dreambooth.train import train


def test_text_encoder_training_with_snr_offset_noise_and_checkpointing(
    make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path, component_cache
):
    config = make_config(
        tmp_path,
        max_train_steps=2,
        train_text_encoder=True,
        text_encoder_lr=5e-3,
        gradient_checkpointing=True,
        snr_gamma=5.0,
        offset_noise=True,
        lr_scheduler="cosine_with_restarts",
        lr_warmup_steps=1,
        lr_num_cycles=2,
        validation_inference_steps=2,
    )
    losses: list[float] = []
    result = train(config, lambda p: losses.append(p.loss) if p.phase == "training" else None, models=component_cache)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert changed(weights(result.pipeline_dir / "unet"), weights(tiny_model / "unet"))
    # note: the trained text encoder is saved with the UNet, and so it reaches the single-file export
    trained_text = weights(result.pipeline_dir / "text_encoder")
    assert changed(trained_text, weights(tiny_model / "text_encoder"))
    exported = load_file(result.checkpoints["fp32"])
    key = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(exported[key], trained_text["text_model.encoder.layers.0.mlp.fc1.weight"])
    assert not changed(weights(result.pipeline_dir / "vae"), weights(tiny_model / "vae"))


def test_ema_weights_are_exported(make_config: Callable[..., TrainConfig], tmp_path: Path, component_cache):
    config = make_config(tmp_path, max_train_steps=2, use_ema=True, checkpointing_steps=1, validation_inference_steps=2)
    result = train(config, models=component_cache)
    states = tmp_path / "training-state"
    step1, step2 = (load_file(states / f"checkpoint-{s}" / "unet.safetensors") for s in (1, 2))
    exported = weights(result.pipeline_dir / "unet")
    # note: diffusers' EMAModel copies the weights at its first step, then decays by (1 + 1) / (10 + 1)
    decay = 2 / 11
    for key, value in exported.items():
        torch.testing.assert_close(value, decay * step1[key] + (1 - decay) * step2[key], rtol=1e-5, atol=1e-7)
    assert changed(exported, step2)


def test_gradient_accumulation_steps_the_optimizer_once_per_accumulated_batch(
    make_config: Callable[..., TrainConfig], tmp_path: Path, component_cache
):
    progress: list[Progress] = []
    config = make_config(
        tmp_path,
        max_train_steps=2,
        train_batch_size=2,
        gradient_accumulation_steps=3,
        checkpointing_steps=2,
        validation_inference_steps=1,
    )
    train(config, progress.append, models=component_cache)
    assert [p.step for p in progress if p.phase == "training"] == [1, 2]
    trainer = torch.load(tmp_path / "training-state" / "checkpoint-2" / "trainer.pt", weights_only=True)
    # note: six micro-batches, two optimizer and schedule steps
    assert {float(state["step"]) for state in trainer["optimizer"]["state"].values()} == {2.0}
    assert trainer["lr_scheduler"]["last_epoch"] == 2

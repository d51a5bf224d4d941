"""The worker keeps its base model loaded between jobs and trains a fresh copy each time."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.dreambooth import components
from worker.dreambooth.components import ComponentCache, model_identity
from worker.dreambooth.config import TrainConfig
from worker.dreambooth.train import train


def unet_weights(result) -> dict[str, torch.Tensor]:
    return load_file(result.pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_second_job_reuses_the_loaded_model_and_trains_a_fresh_copy(
    make_config: Callable[..., TrainConfig], tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    loads = []
    real_load = components.load_components
    monkeypatch.setattr(components, "load_components", lambda *args: loads.append(args) or real_load(*args))
    cache = ComponentCache()
    first = train(make_config(tmp_path / "1", max_train_steps=2, validation_inference_steps=1), models=cache)
    parts = cache.get("builtin:tiny", models_dir)
    pristine = {key: value.clone() for key, value in parts.unet.state_dict().items()}

    second = train(make_config(tmp_path / "2", max_train_steps=2, validation_inference_steps=1), models=cache)
    assert len(loads) == 1
    assert cache.get("builtin:tiny", models_dir) is parts
    # note: the cached UNet was never trained in place, so both jobs started from the same base weights
    assert all(torch.equal(value, pristine[key]) for key, value in parts.unet.state_dict().items())
    a, b = unet_weights(first), unet_weights(second)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], pristine[key]) for key in a)


def test_a_changed_model_folder_is_loaded_again(tiny_model: Path, tmp_path: Path):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    cache = ComponentCache()
    parts = cache.get(str(folder), tmp_path)
    assert parts.identity == model_identity(str(folder)) != model_identity(str(tiny_model))
    assert cache.get(str(folder), tmp_path) is parts
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(0, weights.stat().st_mtime_ns + 10**9))
    assert cache.get(str(folder), tmp_path) is not parts
    assert model_identity("some/hub-id", "v1") == "some/hub-id@v1"  # note: not downloaded, so its revision names it

"""Settings the loop cannot run with are refused up front."""

from pathlib import Path

import pytest

from worker.dreambooth.components import resolve_base_model
from worker.dreambooth.config import TrainConfig


@pytest.mark.parametrize(
    "overrides",
    [
        {"instance_images": ()},
        {"max_train_steps": 0},
        {"train_batch_size": 0},
        {"gradient_accumulation_steps": 0},
        {"mixed_precision": "fp8"},
        {"compile_unet": "yes"},
    ],
)
def test_config_refuses_unrunnable_settings(make_config, tmp_path: Path, overrides: dict):
    with pytest.raises(ValueError):
        make_config(tmp_path, **overrides)


def test_config_is_frozen(make_config, tmp_path: Path):
    config: TrainConfig = make_config(tmp_path)
    with pytest.raises(AttributeError):
        config.max_train_steps = 1


def test_unknown_builtin_model_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="builtin:huge"):
        resolve_base_model("builtin:huge", tmp_path)
    assert resolve_base_model("some/hub-id", tmp_path) == "some/hub-id"


def test_auto_compiles_only_gpu_runs_long_enough_to_pay_it_back(make_config, tmp_path: Path):
    import torch

    from worker.dreambooth.trainees import COMPILE_PAYS_BACK, compiles

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    long = make_config(tmp_path, max_train_steps=COMPILE_PAYS_BACK // 4, gradient_accumulation_steps=4)
    short = make_config(tmp_path, max_train_steps=COMPILE_PAYS_BACK - 1)
    assert compiles(long, gpu) and not compiles(long, cpu) and not compiles(short, gpu)
    assert compiles(make_config(tmp_path, compile_unet="on"), cpu)
    assert not compiles(make_config(tmp_path, max_train_steps=10_000, compile_unet="off"), gpu)

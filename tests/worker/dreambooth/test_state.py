"""Saved training states: a run stopped and resumed ends exactly where an unbroken run does."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worker.dreambooth.config import Progress, TrainConfig
from worker.dreambooth.state import find_state, saved_states
from worker.dreambooth.train import train

# note: random crops and flips, a schedule, EMA and the text encoder: every piece of state a resume must restore
RESUMABLE = dict(
    max_train_steps=6,
    checkpointing_steps=3,
    random_flip=True,
    train_batch_size=2,
    lr_scheduler="cosine",
    lr_warmup_steps=2,
    use_ema=True,
    train_text_encoder=True,
    validation_inference_steps=1,
)


def pipeline_weights(result, part: str) -> dict[str, torch.Tensor]:
    (file,) = (result.pipeline_dir / part).glob("*.safetensors")
    return load_file(file)


def test_stopped_run_resumes_to_the_same_weights(
    make_config: Callable[..., TrainConfig], tmp_path: Path, component_cache
):
    straight = train(make_config(tmp_path / "straight", **RESUMABLE), models=component_cache)

    steps: list[int] = []
    record = lambda p: steps.append(p.step) if p.phase == "training" else None
    first = train(make_config(tmp_path / "broken", **RESUMABLE), record, lambda: len(steps) >= 3, component_cache)
    assert first.stopped and first.final_step == 3
    assert [p.name for p in saved_states(tmp_path / "broken")] == ["checkpoint-3"]

    progress: list[Progress] = []
    resumed = train(
        make_config(tmp_path / "broken", resume_from_checkpoint="latest", **RESUMABLE),
        progress.append,
        models=component_cache,
    )
    assert resumed.resumed_from_step == 3 and resumed.final_step == 6
    assert [p.step for p in progress if p.phase == "training"] == [4, 5, 6]
    for part in ("unet", "text_encoder"):
        expected, actual = pipeline_weights(straight, part), pipeline_weights(resumed, part)
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")


def test_states_are_whole_and_limited(make_config: Callable[..., TrainConfig], tmp_path: Path, component_cache):
    config = make_config(
        tmp_path, max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2, validation_inference_steps=1
    )
    train(config, models=component_cache)
    assert [p.name for p in saved_states(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    latest = find_state(tmp_path, "latest")
    assert latest == tmp_path / "training-state" / "checkpoint-3"
    assert json.loads((latest / "state.json").read_text())["step"] == 3
    assert sorted(p.name for p in latest.iterdir()) == ["state.json", "trainer.pt", "unet.safetensors"]
    assert not list((tmp_path / "training-state").glob(".*"))  # note: no temporary folders left behind
    assert find_state(tmp_path, "checkpoint-2") == tmp_path / "training-state" / "checkpoint-2"
    assert find_state(tmp_path / "elsewhere", "latest") is None
    with pytest.raises(FileNotFoundError):
        find_state(tmp_path, "checkpoint-9")


def test_resume_refuses_a_state_of_another_kind_of_run(
    make_config: Callable[..., TrainConfig], tmp_path: Path, component_cache
):
    train(
        make_config(tmp_path, max_train_steps=1, checkpointing_steps=1, validation_inference_steps=1),
        models=component_cache,
    )
    with pytest.raises(ValueError, match="train_text_encoder"):
        train(
            make_config(tmp_path, max_train_steps=2, train_text_encoder=True, resume_from_checkpoint="latest"),
            models=component_cache,
        )

"""LoRA runs: only adapters train, steps keep LoRA files, and the exports hold the base with the LoRA merged."""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from worker.dreambooth.config import TrainConfig
from worker.dreambooth.steps import Validation
from worker.dreambooth.train import train

from .helpers import changed, weights


@pytest.fixture(scope="module")
def lora_run(make_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory):
    config = make_config(
        tmp_path_factory.mktemp("lora"),
        training_method="lora",
        lora_rank=4,
        lora_alpha=8,
        train_text_encoder=True,
        max_train_steps=4,
        validation_steps=2,
        validation_prompts=("a photo of sks toy",),
        validation_inference_steps=2,
        checkpointing_steps=2,
    )
    reports: list[Validation] = []
    return config, train(config, on_validation=reports.append), reports


def test_a_lora_run_keeps_lora_files_per_step_and_exports_them(lora_run):
    _config, result, reports = lora_run
    assert [(r.step, r.weights_format) for r in reports] == [(2, "lora"), (4, "lora")]
    assert sorted(p.name for p in result.kept_steps[2].iterdir()) == [
        "kohya.safetensors",
        "pytorch_lora_weights.safetensors",
    ]
    assert set(result.checkpoints) == {"fp16", "fp32", "lora", "lora_kohya"}
    with safe_open(result.checkpoints["lora_kohya"], "pt") as kohya:
        assert kohya.metadata()["step"] == "4"
        assert all(key.startswith(("lora_unet_", "lora_te_")) for key in kohya.keys())


def test_the_exported_pipeline_is_the_base_with_the_lora_merged(lora_run, tiny_model: Path):
    _config, result, _ = lora_run
    # note: merged adapters change the attention projections; every other base weight is untouched
    trained, base = weights(result.pipeline_dir / "unet"), weights(tiny_model / "unet")
    differ = changed(trained, base)
    assert differ and all(any(p in key for p in ("to_q", "to_k", "to_v", "to_out")) for key in differ)
    assert changed(weights(result.pipeline_dir / "text_encoder"), weights(tiny_model / "text_encoder"))
    assert not changed(weights(result.pipeline_dir / "vae"), weights(tiny_model / "vae"))


def test_the_lora_file_on_the_base_pipeline_gives_the_exported_model(lora_run, tiny_model: Path):
    _config, result, _ = lora_run
    exported = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    loaded = StableDiffusionPipeline.from_pretrained(tiny_model)
    loaded.load_lora_weights(result.checkpoints["lora"].parent, weight_name=result.checkpoints["lora"].name)
    loaded.scheduler = exported.scheduler  # note: the export defaults to DDIM, the base model to its own sampler

    def image(pipeline):
        return pipeline(
            "a photo of sks toy",
            num_inference_steps=2,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(3),
        ).images

    assert torch.allclose(torch.tensor(image(exported)), torch.tensor(image(loaded)), atol=1e-4)


def test_a_lora_run_saves_adapter_only_states_and_resumes_exactly(lora_run, tmp_path: Path):
    config, result, _ = lora_run
    saved = config.output_dir / "training-state" / "checkpoint-2"
    unet_state = load_file(saved / "unet.safetensors")
    assert unet_state and all(".lora_A." in key or ".lora_B." in key for key in unet_state)
    resumed = train(replace(config, output_dir=tmp_path, resume_from_checkpoint=str(saved)))
    assert resumed.resumed_from_step == 2
    for name in ("lora", "lora_kohya"):
        assert not changed(load_file(resumed.checkpoints[name]), load_file(result.checkpoints[name]))

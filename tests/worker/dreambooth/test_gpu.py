"""The core on a CUDA GPU: half precision, 8-bit Adam, LoRA, samples, generations and exports.

Marked `gpu`: skipped without CUDA, except under `scripts/gpu-check --dry-run` (GPU_CHECK_DRY_RUN=1), which
runs the same tests on the CPU so they cannot rot between sessions that have a GPU. Its fixtures come from
tests/worker/conftest.py alone (the GPU machine has no Postgres for tests/conftest.py's).
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from tests.worker.conftest import RESOLUTION
from tests.worker.dreambooth.helpers import changed, weights
from worker.dreambooth.config import TrainConfig
from worker.dreambooth.render import RenderRequest, TrainedModel, load_trained, render
from worker.dreambooth.state import saved_states
from worker.dreambooth.train import train

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("GPU_CHECK_DRY_RUN") == "1":
        return "cpu"
    pytest.skip("needs a CUDA GPU")


def run(config: TrainConfig) -> tuple:
    losses: list[float] = []
    result = train(config, lambda p: losses.append(p.loss) if p.phase == "training" else None)
    assert not result.stopped and len(losses) == config.max_train_steps
    assert all(math.isfinite(loss) for loss in losses), losses
    return result, losses


def assert_real_image(path: Path) -> None:
    """A half-precision NaN decodes to a black image: the pixels must vary."""
    assert np.asarray(Image.open(path).convert("RGB")).std() > 1.0, f"{path} is flat (NaNs in half precision?)"


@pytest.mark.parametrize("mixed_precision", ["fp16", "bf16"])
def test_half_precision_trains_fp32_weights_of_unet_and_text_encoder(
    device: str, mixed_precision: str, make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path
):
    # note: fp16 with trainable fp16 weights fails in the grad scaler ("Attempting to unscale FP16 gradients")
    config = make_config(
        tmp_path,
        device=device,
        mixed_precision=mixed_precision,
        train_text_encoder=True,
        max_train_steps=3,
        validation_steps=3,
        validation_prompts=("a photo of sks toy",),
    )
    result, _ = run(config)
    for part in ("unet", "text_encoder"):
        trained = weights(result.pipeline_dir / part)
        assert changed(trained, weights(tiny_model / part)), part
        assert {tensor.dtype for tensor in trained.values()} == {torch.float32}, part
    assert not changed(weights(result.pipeline_dir / "vae"), weights(tiny_model / "vae"))
    assert result.samples and all(sample.path.exists() for sample in result.samples)
    for sample in result.samples:
        assert_real_image(sample.path)


def test_8bit_adam_with_checkpointing(
    device: str, make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path
):
    config = make_config(
        tmp_path,
        device=device,
        mixed_precision="fp16",
        use_8bit_adam=True,
        gradient_checkpointing=True,
        max_train_steps=3,
        checkpointing_steps=3,
        validation_steps=3,
        validation_prompts=("a photo of sks toy",),
    )
    result, _ = run(config)
    assert changed(weights(result.pipeline_dir / "unet"), weights(tiny_model / "unet"))
    (state,) = saved_states(config.output_dir)
    assert json.loads((state / "state.json").read_text())["optimizer"] == "AdamW8bit"


def test_lora_trains_and_loads_onto_the_base(
    device: str, make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path
):
    config = make_config(
        tmp_path,
        device=device,
        mixed_precision="fp16",
        training_method="lora",
        train_text_encoder=True,
        max_train_steps=3,
        validation_steps=3,
        validation_prompts=("a photo of sks toy",),
    )
    result, _ = run(config)
    assert {"lora", "lora_kohya"} <= result.checkpoints.keys()
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipeline.load_lora_weights(result.checkpoints["lora"].parent, weight_name=result.checkpoints["lora"].name)
    assert any("lora" in name for name, _ in pipeline.unet.named_parameters())
    for sample in result.samples:
        assert_real_image(sample.path)


def test_generation_in_half_precision_and_the_single_file_loads_back(
    device: str, make_config: Callable[..., TrainConfig], tmp_path: Path
):
    config = make_config(
        tmp_path / "run",
        device=device,
        mixed_precision="fp16",
        max_train_steps=2,
        validation_steps=2,
        validation_prompts=("a photo of sks toy",),
    )
    result, _ = run(config)
    loaded = load_trained(TrainedModel(pipeline_dir=result.pipeline_dir))
    assert loaded.device.type == device
    expected_dtype = torch.float16 if device == "cuda" else torch.float32
    assert loaded.pipeline.unet.dtype == expected_dtype
    request = RenderRequest("a photo of sks toy", None, "ddim", 4, 7.5, seed=3, num_images=2, resolution=RESOLUTION)
    images = render(loaded, request, tmp_path / "images")
    assert [image.seed for image in images] == [3, 4]
    for image in images:
        assert_real_image(image.path)

    single = StableDiffusionPipeline.from_single_file(
        result.checkpoints["fp32"], config=str(result.pipeline_dir), local_files_only=True
    )
    saved = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(saved, name).state_dict()
        actual = getattr(single, name).state_dict()
        assert actual.keys() == expected.keys(), name
        assert all(torch.equal(actual[key], value) for key, value in expected.items()), name


def test_a_compiled_unet_trains_like_the_plain_one_and_saves_plain_weights(
    device: str, make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path
):
    if device == "cpu":
        pytest.skip("compiling takes minutes on a CPU (about two for the tiny model here) and gains nothing there")
    settings = dict(device=device, mixed_precision="fp16", max_train_steps=3, validation_steps=3, seed=0,
                    validation_prompts=("a photo of sks toy",), center_crop=True)  # fmt: skip
    compiled, compiled_losses = run(make_config(tmp_path / "compiled", compile_unet="on", **settings))
    plain, plain_losses = run(make_config(tmp_path / "plain", **settings))
    trained = weights(compiled.pipeline_dir / "unet")
    # note: the saved names are the module's own (no torch.compile wrapper's "_orig_mod." prefix)
    assert trained.keys() == weights(tiny_model / "unet").keys()
    assert changed(trained, weights(tiny_model / "unet"))
    # note: fused kernels round differently, so the two runs agree closely, not bit for bit
    assert np.allclose(compiled_losses, plain_losses, rtol=1e-2, atol=1e-3), (compiled_losses, plain_losses)
    # note: Adam moves each weight about the learning rate a step whatever the gradient's size, so a weight whose
    # gradient is near zero may move either way: the runs agree within the steps' reach
    config = make_config(tmp_path / "plain", **settings)
    reach = 2 * config.learning_rate * config.max_train_steps
    reference = weights(plain.pipeline_dir / "unet")
    assert all(torch.allclose(trained[name], reference[name], atol=reach) for name in reference)
    for sample in compiled.samples:
        assert_real_image(sample.path)

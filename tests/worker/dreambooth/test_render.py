"""Rendering on demand: every sampler, seeds, the one-model cache, and kept steps' diffusers and LoRA weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from tests.worker.conftest import RESOLUTION
from worker.dreambooth.render import PipelineCache, RenderRequest, TrainedModel, load_trained, render
from worker.dreambooth.schedulers import SCHEDULERS


def request(**overrides) -> RenderRequest:
    values = {
        "prompt": "a photo of a red dog", "negative_prompt": None, "scheduler": "ddim", "num_inference_steps": 2,
        "guidance_scale": 7.5, "seed": 5, "num_images": 1, "resolution": RESOLUTION,
    }  # fmt: skip
    return RenderRequest(**(values | overrides))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def diffusers_weights(tiny_model: Path, tmp_path_factory) -> Path:
    """A kept step's diffusers weights: the tiny UNet, every weight nudged."""
    folder = tmp_path_factory.mktemp("weights")
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.05)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def lora_weights(tiny_model: Path, tmp_path_factory) -> Path:
    """A kept step's LoRA adapters in diffusers' format, with weights that change the output."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = tmp_path_factory.mktemp("lora")
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder


def test_every_sampler_renders_a_png(tiny_model, tmp_path):
    loaded = load_trained(TrainedModel(pipeline_dir=tiny_model))
    for name in SCHEDULERS:
        [image] = render(loaded, request(scheduler=name), tmp_path / name)
        assert image.path == tmp_path / name / "0.png" and image.seed == 5
        with Image.open(image.path) as png:
            assert (png.format, png.size, png.mode) == ("PNG", (RESOLUTION, RESOLUTION), "RGB")
    assert type(loaded.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_image_i_uses_seed_plus_i_whatever_num_images(tiny_model, tmp_path):
    loaded = load_trained(TrainedModel(pipeline_dir=tiny_model))
    first, second = render(loaded, request(num_images=2, negative_prompt="blurry"), tmp_path / "two")
    [again] = render(loaded, request(seed=6, negative_prompt="blurry"), tmp_path / "one")
    assert (first.seed, second.seed, again.seed) == (5, 6, 6)
    assert again.path.read_bytes() == second.path.read_bytes()
    assert not np.array_equal(pixels(first.path), pixels(second.path))


def test_the_cache_keeps_one_model_until_another_is_asked_for(tiny_model, diffusers_weights):
    cache = PipelineCache()
    final = TrainedModel(pipeline_dir=tiny_model)
    kept = TrainedModel(pipeline_dir=tiny_model, weights_dir=diffusers_weights, weights_format="diffusers")
    first, reused_first = cache.get(final)
    second, reused_second = cache.get(TrainedModel(pipeline_dir=tiny_model))
    assert (reused_first, reused_second, cache.loads) == (False, True, 1)
    assert second is first
    third, reused_third = cache.get(kept)
    assert (reused_third, cache.loads) == (False, 2) and third is not first
    assert cache.get(final)[1] is False and cache.loads == 3


def test_diffusers_weights_replace_the_final_pipelines_unet(tiny_model, diffusers_weights, tmp_path):
    base = load_trained(TrainedModel(pipeline_dir=tiny_model))
    kept = load_trained(
        TrainedModel(pipeline_dir=tiny_model, weights_dir=diffusers_weights, weights_format="diffusers")
    )
    saved = UNet2DConditionModel.from_pretrained(diffusers_weights, subfolder="unet").state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in kept.pipeline.unet.state_dict().items())
    embeddings = [loaded.pipeline.text_encoder.get_input_embeddings().weight for loaded in (base, kept)]
    assert torch.equal(*embeddings)
    [from_base] = render(base, request(), tmp_path / "base")
    [from_kept] = render(kept, request(), tmp_path / "kept")
    assert not np.array_equal(pixels(from_base.path), pixels(from_kept.path))


def test_lora_weights_go_on_the_base_model(models_dir, tiny_model, lora_weights, tmp_path):
    loaded = load_trained(
        TrainedModel(weights_dir=lora_weights, weights_format="lora", base_model="builtin:tiny", models_dir=models_dir)
    )
    assert loaded.pipeline.get_list_adapters() == {"unet": ["default_0"]}
    [with_lora] = render(loaded, request(), tmp_path / "lora")
    [without] = render(load_trained(TrainedModel(pipeline_dir=tiny_model)), request(), tmp_path / "base")
    assert not np.array_equal(pixels(with_lora.path), pixels(without.path))


def test_a_trained_model_must_say_where_its_weights_are(tmp_path):
    with pytest.raises(ValueError, match="weights_format"):
        TrainedModel(pipeline_dir=tmp_path, weights_dir=tmp_path, weights_format="ckpt")
    with pytest.raises(ValueError, match="base_model"):
        TrainedModel(weights_dir=tmp_path, weights_format="lora")
    with pytest.raises(ValueError, match="pipeline_dir"):
        TrainedModel(weights_dir=tmp_path, weights_format="diffusers")


def test_should_stop_ends_the_render_between_images(tiny_model, tmp_path):
    loaded = load_trained(TrainedModel(pipeline_dir=tiny_model))
    calls = []
    images = render(loaded, request(num_images=3), tmp_path, should_stop=lambda: calls.append(1) or len(calls) > 1)
    assert [image.seed for image in images] == [5]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["0.png"]

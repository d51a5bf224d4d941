"""The single-file export in the original Stable Diffusion layout."""

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from worker.dreambooth.config import Progress, TrainConfig, TrainResult
from worker.dreambooth.export import checkpoint_metadata, original_state_dict

Run = tuple[TrainConfig, TrainResult, list[Progress]]
PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")

# Stable Diffusion 1.5's own configs (unet/, vae/, text_encoder/ config.json), for a full-size check
SD15_UNET = dict(
    sample_size=64,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_TEXT = CLIPTextConfig(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
)


def state_dicts(pipeline: StableDiffusionPipeline) -> dict[str, dict[str, torch.Tensor]]:
    return {name: getattr(pipeline, name).state_dict() for name in ("unet", "vae", "text_encoder")}


@pytest.fixture(scope="module")
def trained_pipeline(trained: Run) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(trained[1].pipeline_dir)


def from_single_file(path: Path, pipeline_dir: Path) -> StableDiffusionPipeline:
    # note: `config` (a local diffusers folder) supplies every config, so nothing is fetched from the Hub
    return StableDiffusionPipeline.from_single_file(path, config=str(pipeline_dir), local_files_only=True)


def test_fp32_file_round_trips_exactly(trained: Run, trained_pipeline: StableDiffusionPipeline):
    _, result, _ = trained
    loaded = state_dicts(from_single_file(result.checkpoints["fp32"], result.pipeline_dir))
    for name, expected in state_dicts(trained_pipeline).items():
        assert loaded[name].keys() == expected.keys(), name
        for key, value in expected.items():
            assert torch.equal(loaded[name][key], value), f"{name}.{key}"


def test_fp16_file_round_trips_within_fp16_precision(trained: Run, trained_pipeline: StableDiffusionPipeline):
    _, result, _ = trained
    loaded = state_dicts(from_single_file(result.checkpoints["fp16"], result.pipeline_dir))
    for name, expected in state_dicts(trained_pipeline).items():
        assert loaded[name].keys() == expected.keys(), name
        for key, value in expected.items():
            torch.testing.assert_close(loaded[name][key].float(), value.float(), rtol=1e-3, atol=1e-6)


def test_file_has_original_layout_and_dtypes(trained: Run):
    _, result, _ = trained
    for dtype, float_type in (("fp16", torch.float16), ("fp32", torch.float32)):
        with safe_open(result.checkpoints[dtype], "pt") as f:
            keys = set(f.keys())
            assert all(key.startswith(PREFIXES) for key in keys)
            assert {prefix for prefix in PREFIXES for key in keys if key.startswith(prefix)} == set(PREFIXES)
            # note: diffusers recognises an SD 1.x checkpoint by this key; A1111 and ComfyUI by similar ones
            assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in keys
            assert f.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape()[2:] == [1, 1]
            tensors = [f.get_tensor(key) for key in keys]
            assert {t.dtype for t in tensors if t.is_floating_point()} == {float_type}


def test_file_header_describes_the_model_for_automatic1111_and_comfyui(trained: Run):
    config, result, _ = trained
    for dtype in ("fp16", "fp32"):
        with safe_open(result.checkpoints[dtype], "pt") as f:
            metadata = f.metadata()
        assert all(isinstance(value, str) for value in metadata.values())
        assert metadata["format"] == "pt"
        assert metadata["modelspec.sai_model_spec"] == "1.0.0"
        assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
        assert metadata["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
        assert metadata["modelspec.prediction_type"] == "epsilon"
        assert metadata["modelspec.resolution"] == f"{config.resolution}x{config.resolution}"
        assert metadata["modelspec.title"] == f"a photo of sks toy (Dreambooth, step {result.final_step})"
        assert datetime.fromisoformat(metadata["modelspec.date"]).tzinfo is not None
        assert "modelspec.license" not in metadata  # note: builtin:tiny is random weights, under no licence
        assert metadata["base_model"] == config.base_model == "builtin:tiny"
        assert metadata["instance_prompt"] == metadata["modelspec.trigger_phrase"] == config.instance_prompt
        assert metadata["step"] == str(result.final_step)
        assert float(metadata["learning_rate"]) == config.learning_rate
        settings = json.loads(metadata["settings"])
        assert settings["max_train_steps"] == config.max_train_steps
        assert settings["validation_prompts"] == list(config.validation_prompts)
        assert str(config.output_dir) not in metadata["settings"]  # note: nothing of the server's file layout
        assert {"instance_images", "output_dir", "models_dir"}.isdisjoint(settings)


def test_metadata_names_the_class_and_licence_of_a_stable_diffusion_fine_tune(make_config, tmp_path: Path):
    config = make_config(
        tmp_path,
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        with_prior_preservation=True,
        class_prompt="a photo of a toy",
        learning_rate=2e-6,
    )
    metadata = checkpoint_metadata(config, 400)
    assert metadata["class_prompt"] == "a photo of a toy"
    assert metadata["modelspec.license"] == "CreativeML Open RAIL-M"
    assert metadata["learning_rate"] == "2e-06"
    assert "a photo of a toy" in metadata["modelspec.description"]
    assert json.loads(metadata["settings"])["with_prior_preservation"] is True


def sd15_state_dicts() -> tuple[dict, dict, dict]:
    """Full-size SD 1.5 key names and shapes, built on the meta device (no memory, no download)."""
    with torch.device("meta"):
        modules = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE), CLIPTextModel(SD15_TEXT)
    return tuple(module.state_dict() for module in modules)


def markers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A distinct small tensor per key, of the same rank, so a round trip shows where each one went."""
    return {key: torch.full((1,) * value.ndim, float(i)) for i, (key, value) in enumerate(state.items())}


def test_sd15_layout_round_trips_through_diffusers_own_converters():
    unet, vae, text = (markers(state) for state in sd15_state_dicts())
    original = original_state_dict(unet, SD15_UNET, vae, SD15_VAE, text)
    assert len(original) == 686 + 248 + 197  # note: UNet, VAE and CLIP weights in SD 1.5's original files
    for back, expected in (
        (convert_ldm_unet_checkpoint(original, SD15_UNET), unet),
        (convert_ldm_vae_checkpoint(original, SD15_VAE), vae),
    ):
        assert back.keys() == expected.keys()
        assert all(torch.equal(value, expected[key]) for key, value in back.items())
    clip = convert_ldm_clip_checkpoint(original)
    assert {k.removeprefix("text_model.") for k in clip} == text.keys() | {"embeddings.position_ids"}
    assert all(torch.equal(clip["text_model." + k], v) for k, v in text.items())


def test_tiny_export_uses_exactly_sd15_unet_and_vae_names(trained: Run):
    unet, vae, text = sd15_state_dicts()
    expected = original_state_dict(unet, SD15_UNET, vae, SD15_VAE, text)
    with safe_open(trained[1].checkpoints["fp32"], "pt") as f:
        keys = set(f.keys())
    image_prefixes = PREFIXES[:2]
    assert {k for k in keys if k.startswith(image_prefixes)} == {k for k in expected if k.startswith(image_prefixes)}

"""Single files of every family in its original layout: SD 2.x (OpenCLIP text encoder) and SDXL (two encoders).

SD 1.x is covered by test_export.py. Each family's file must load back through diffusers' own converters
(loaders/single_file_utils.py) into exactly the weights it was made from.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from formats.families import FAMILIES
from formats.single_file import modelspec_architecture
from worker.dreambooth.export import export_single_file, original_state_dict

from .test_export import SD15_TEXT, SD15_VAE

PIPELINES = {"tiny-sd2": StableDiffusionPipeline, "tiny-sdxl": StableDiffusionXLPipeline}
OPEN_CLIP_SDXL = "conditioner.embedders.1.model."
SDXL_CLIP_L = "conditioner.embedders.0.transformer.text_model."

# Stable Diffusion 2.1's and SDXL base 1.0's own configs, for full-size checks on the meta device
SD21_UNET = dict(
    sample_size=96,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
)
SD21_TEXT = CLIPTextConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"
)
SDXL_UNET = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_TEXT_2 = CLIPTextConfig(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)


@pytest.fixture(scope="module")
def builtin(tmp_path_factory: pytest.TempPathFactory):
    """builtin:NAME's pipeline folder, generated once per module."""
    from worker.dreambooth.tiny import make_model

    root, made = tmp_path_factory.mktemp("families"), {}

    def folder(name: str) -> Path:
        if name not in made:
            made[name] = make_model(root / name, name)
        return made[name]

    return folder


def exported(folder: Path, tmp_path: Path, dtype: str = "fp32") -> Path:
    return export_single_file(folder, tmp_path / f"{folder.name}-{dtype}.safetensors", dtype)


def assert_same_weights(part: str, loaded: torch.nn.Module, expected: torch.nn.Module) -> None:
    loaded_weights, expected_weights = loaded.state_dict(), expected.state_dict()
    assert loaded_weights.keys() == expected_weights.keys(), part
    for name, value in expected_weights.items():
        assert value.dtype == torch.float32, f"{part}.{name}"
        assert torch.equal(loaded_weights[name], value), f"{part}.{name}"


# ── round trips through diffusers ───────────────────────────────────────────────────────────


@pytest.mark.parametrize("name", PIPELINES)
def test_single_file_loads_in_diffusers_with_every_weight_of_the_folder(builtin, tmp_path, name):
    folder, pipeline_class = builtin(name), PIPELINES[name]
    path = exported(folder, tmp_path)
    # note: `config` (a local diffusers folder) supplies every config, so nothing is fetched from the Hub
    loaded = pipeline_class.from_single_file(path, config=str(folder), local_files_only=True)
    expected = pipeline_class.from_pretrained(folder)
    parts = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if name == "tiny-sdxl" else ())
    for part in parts:
        assert_same_weights(part, getattr(loaded, part), getattr(expected, part))


@pytest.mark.parametrize(
    ("name", "architecture", "prediction"),
    [("tiny-sd2", "stable-diffusion-v2-768-v", "v"), ("tiny-sdxl", "stable-diffusion-xl-v1-base", "epsilon")],
)
def test_header_says_the_family_and_prediction(builtin, tmp_path, name, architecture, prediction):
    with safe_open(exported(builtin(name), tmp_path, "fp16"), "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.prediction_type"] == prediction
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert metadata["modelspec.title"] == f"{name}-fp16"


def test_sd2_epsilon_models_are_named_v2_512(builtin, tmp_path):
    folder = shutil.copytree(builtin("tiny-sd2"), tmp_path / "sd2-base")
    scheduler = folder / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "epsilon"}))
    with safe_open(exported(folder, tmp_path, "fp16"), "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-v2-512"
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert modelspec_architecture(FAMILIES["sd2"], "v_prediction") == "stable-diffusion-v2-768-v"
    assert modelspec_architecture(FAMILIES["sd1"], "epsilon") == "stable-diffusion-v1"


# ── the layouts, name by name ───────────────────────────────────────────────────────────────


def test_sd2_text_encoder_is_in_open_clip_layout(builtin, tmp_path):
    folder = builtin("tiny-sd2")
    tensors = load_file(exported(folder, tmp_path))
    text = load_file(folder / "text_encoder" / "model.safetensors")
    assert {name.split(".")[0] for name in tensors} == {"model", "first_stage_model", "cond_stage_model"}
    prefix = "cond_stage_model.model."
    layers = CLIPTextConfig.from_pretrained(folder / "text_encoder").num_hidden_layers
    assert {name for name in tensors if name.startswith(prefix)} == {
        prefix + name for name in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias")
    } | {
        f"{prefix}transformer.resblocks.{layer}.{module}.{kind}"
        for layer in range(layers)
        for module in ("ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")
        for kind in ("weight", "bias")
    } | {
        f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"
        for layer in range(layers)
        for kind in ("weight", "bias")
    }
    attention = "text_model.encoder.layers.1.self_attn"
    assert torch.equal(
        tensors[f"{prefix}transformer.resblocks.1.attn.in_proj_weight"],
        torch.cat([text[f"{attention}.{part}_proj.weight"] for part in "qkv"]),
    )
    assert torch.equal(
        tensors[f"{prefix}positional_embedding"], text["text_model.embeddings.position_embedding.weight"]
    )


def test_sdxl_layout_has_sgm_names(builtin, tmp_path):
    folder = builtin("tiny-sdxl")
    tensors = load_file(exported(folder, tmp_path))
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    text_2 = load_file(folder / "text_encoder_2" / "model.safetensors")
    assert {name.split(".")[0] for name in tensors} == {"model", "first_stage_model", "conditioner"}
    ldm = "model.diffusion_model."
    assert torch.equal(tensors[ldm + "label_emb.0.0.weight"], unet["add_embedding.linear_1.weight"])
    assert torch.equal(tensors[ldm + "label_emb.0.2.bias"], unet["add_embedding.linear_2.bias"])
    # note: SDXL's levels: input blocks 1-2 (resnets only), 3 (down), 4-5, 6 (down), 7-8 with 10 transformer blocks
    assert ldm + "input_blocks.3.0.op.weight" in tensors and ldm + "input_blocks.1.1.norm.weight" not in tensors
    assert ldm + "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight" in tensors
    assert ldm + "output_blocks.2.2.conv.weight" in tensors and ldm + "output_blocks.5.2.conv.weight" in tensors
    assert (
        ldm + "output_blocks.8.0.in_layers.0.weight" in tensors and ldm + "output_blocks.8.1.norm.weight" not in tensors
    )
    positions = tensors[SDXL_CLIP_L + "embeddings.position_ids"]
    assert positions.dtype == torch.int64 and torch.equal(positions, torch.arange(77).unsqueeze(0))
    projection = tensors[OPEN_CLIP_SDXL + "text_projection"]
    assert torch.equal(projection, text_2["text_projection.weight"].T)
    assert not any(name.startswith(OPEN_CLIP_SDXL) and "position_ids" in name for name in tensors)


# ── full-size layouts on the meta device ────────────────────────────────────────────────────


def meta_state_dicts(unet: dict, vae: dict, *texts: tuple[type, CLIPTextConfig]) -> tuple:
    """The configs' modules and state dicts at full size, on the meta device (no memory, no download)."""
    with torch.device("meta"):
        modules = (UNet2DConditionModel(**unet), AutoencoderKL(**vae))
        encoders = tuple(cls(config) for cls, config in texts)
    return tuple(module.state_dict() for module in modules), encoders


def hub_names(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A text encoder's weights under the Hub's names (`text_model.` level), as a saved folder has them."""
    return {
        (name if name.startswith(("text_model.", "text_projection")) else "text_model." + name): value
        for name, value in encoder.state_dict().items()
    }


def assert_same_names_and_shapes(back: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(back.keys() - expected.keys()) == [] and sorted(expected.keys() - back.keys()) == []
    assert {name: value.shape for name, value in back.items() if value.shape != expected[name].shape} == {}


def test_sd21_full_size_layout_round_trips_through_diffusers_own_converters():
    (unet, vae), (text_encoder,) = meta_state_dicts(SD21_UNET, SD15_VAE, (CLIPTextModel, SD21_TEXT))
    text = hub_names(text_encoder)
    original = original_state_dict(unet, SD21_UNET, vae, SD15_VAE, text, family=FAMILIES["sd2"])
    assert len(original) == 686 + 248 + 4 + 23 * 12  # note: UNet, VAE, OpenCLIP-H's embeddings, final norm, layers
    assert_same_names_and_shapes(convert_ldm_unet_checkpoint(original, SD21_UNET), unet)
    assert_same_names_and_shapes(convert_ldm_vae_checkpoint(original, SD15_VAE), vae)
    assert_same_names_and_shapes(convert_open_clip_checkpoint(text_encoder, original), text)


def test_sdxl_full_size_layout_round_trips_through_diffusers_own_converters():
    (unet, vae), (text_encoder, text_encoder_2) = meta_state_dicts(
        SDXL_UNET, SD15_VAE, (CLIPTextModel, SD15_TEXT), (CLIPTextModelWithProjection, SDXL_TEXT_2)
    )
    text, text_2 = hub_names(text_encoder), hub_names(text_encoder_2)
    original = original_state_dict(unet, SDXL_UNET, vae, SD15_VAE, text, text_2, family=FAMILIES["sdxl"])
    # note: SDXL base 1.0's public file has these, and OpenCLIP's logit_scale, which diffusers has no place for
    assert len(original) == 1680 + 248 + 197 + 5 + 32 * 12
    assert_same_names_and_shapes(convert_ldm_unet_checkpoint(original, SDXL_UNET), unet)
    assert_same_names_and_shapes(convert_ldm_vae_checkpoint(original, SD15_VAE), vae)
    clip = convert_ldm_clip_checkpoint(original)
    assert_same_names_and_shapes(clip, text | {"text_model.embeddings.position_ids": torch.empty(1, 77)})
    assert_same_names_and_shapes(convert_open_clip_checkpoint(text_encoder_2, original, OPEN_CLIP_SDXL), text_2)

"""Export a diffusers pipeline folder as one .safetensors file in the original Stable Diffusion layout.

AUTOMATIC1111 and ComfyUI load the CompVis/ldm layout: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE) and `cond_stage_model.transformer.text_model.*` (CLIP text encoder).
diffusers only converts the other way (loaders/single_file_utils.py), so the tables below are its
rules read backwards, built from each model's config rather than hard-coded for SD 1.5.
The text encoder is written in SD 1.x's CLIP layout (SD 2.x's OpenCLIP layout is not produced).

The header carries ModelSpec metadata (github.com/Stability-AI/ModelSpec), the keys AUTOMATIC1111,
ComfyUI and model browsers read, plus how the model was trained: see `checkpoint_metadata`.
"""

import dataclasses
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import TrainConfig
from .files import atomic_file

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

# A table maps a diffusers module path to (ldm module path, renames of the names inside it).
Table = dict[str, tuple[str, dict[str, str]]]

SAME: dict[str, str] = {}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

# What every file written here is, in ModelSpec terms; the implementation is the one kohya's
# sd-scripts names for original-layout SD checkpoints.
MODELSPEC_LAYOUT = {
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-v1",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
}
PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v"}  # diffusers' name -> ModelSpec's
SD_LICENSE = "CreativeML Open RAIL-M"  # Stable Diffusion 1.x's weights, and so every fine-tune of them


def checkpoint_metadata(config: TrainConfig, step: int) -> dict[str, str]:
    """The header metadata of a trained checkpoint: ModelSpec's descriptive keys and the training settings.

    Values are strings (safetensors allows nothing else); paths on the training machine are left out.
    """
    settings = {
        field.name: list(value) if isinstance(value, tuple) else value
        for field in dataclasses.fields(config)
        if not _is_local_path(value := getattr(config, field.name))
    }
    description = (
        f"Dreambooth fine-tune of {config.base_model} on photos of '{config.instance_prompt}', "
        f"{step} steps at learning rate {config.learning_rate}"
    )
    if config.with_prior_preservation:
        description += f", with prior preservation of '{config.class_prompt}'"
    metadata = {
        "modelspec.title": f"{config.instance_prompt} (Dreambooth, step {step})",
        "modelspec.description": description + ".",
        "modelspec.date": datetime.now(UTC).isoformat(timespec="seconds"),
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
        "modelspec.trigger_phrase": config.instance_prompt,
        "modelspec.usage_hint": f"Prompt with '{config.instance_prompt}'; DDIM sampling suits overfit models.",
        "base_model": config.base_model,
        "instance_prompt": config.instance_prompt,
        "step": str(step),
        "learning_rate": str(config.learning_rate),
        "settings": json.dumps(settings, sort_keys=True),
    }
    if config.class_prompt:
        metadata["class_prompt"] = config.class_prompt
    if not config.base_model.startswith("builtin:"):
        # note: the built-in models are random weights of our own; every other SD 1.x model is a fine-tune
        # of Stability's weights, whose licence requires passing its use restrictions on
        metadata["modelspec.license"] = SD_LICENSE
    return metadata


def export_single_file(
    pipeline_dir: Path, out_path: Path, dtype: str = "fp16", metadata: dict[str, str] | None = None
) -> Path:
    """Write the pipeline's UNet, VAE and text encoder as one original-layout .safetensors file.

    The header says what the file is (ModelSpec's layout keys, prediction type, a title) and carries `metadata`.
    """
    tensors = original_state_dict(
        unet=_load_weights(pipeline_dir / "unet"),
        unet_config=_read_json(pipeline_dir / "unet" / "config.json"),
        vae=_load_weights(pipeline_dir / "vae"),
        vae_config=_read_json(pipeline_dir / "vae" / "config.json"),
        text_encoder=_load_weights(pipeline_dir / "text_encoder"),
    )
    cast = DTYPES[dtype]
    tensors = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    scheduler = _read_json(pipeline_dir / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    header = {
        "format": "pt",
        **MODELSPEC_LAYOUT,
        "modelspec.title": out_path.stem,
        "modelspec.prediction_type": PREDICTION_TYPES.get(prediction, prediction),
        **(metadata or {}),
    }
    with atomic_file(out_path) as tmp:
        save_file(tensors, tmp, metadata=header)
    log.info("exported %d tensors (%s) to %s", len(tensors), dtype, out_path)
    return out_path


def original_state_dict(
    unet: dict[str, torch.Tensor],
    unet_config: dict,
    vae: dict[str, torch.Tensor],
    vae_config: dict,
    text_encoder: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename diffusers state dicts into one original-layout state dict (tensors are shared, not copied)."""
    return {
        **_rename(unet, unet_table(unet_config), UNET_PREFIX),
        **_vae_state(vae, vae_config),
        **_text_state(text_encoder),
    }


def unet_table(config: dict) -> Table:
    """UNet2DConditionModel -> ldm UNetModel (input_blocks / middle_block / output_blocks)."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-block layers_per_block has no original-layout equivalent")
    table: Table = {
        "time_embedding.linear_1": ("time_embed.0", SAME),
        "time_embedding.linear_2": ("time_embed.2", SAME),
        "conv_in": ("input_blocks.0.0", SAME),
        "conv_norm_out": ("out.0", SAME),
        "conv_out": ("out.2", SAME),
        "mid_block.resnets.0": ("middle_block.0", UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", SAME),
        "mid_block.resnets.1": ("middle_block.2", UNET_RESNET),
    }
    last = len(config["down_block_types"]) - 1
    # ldm numbers input blocks 1.. across levels: `layers` (resnet, attention) pairs, then a downsampler
    for level in range(last + 1):
        down, first = f"down_blocks.{level}", 1 + level * (layers + 1)
        for layer in range(layers):
            table[f"{down}.resnets.{layer}"] = (f"input_blocks.{first + layer}.0", UNET_RESNET)
            table[f"{down}.attentions.{layer}"] = (f"input_blocks.{first + layer}.1", SAME)
        if level != last:
            table[f"{down}.downsamplers.0.conv"] = (f"input_blocks.{first + layers}.0.op", SAME)
    # output blocks: `layers + 1` (resnet, attention) pairs per level, the upsampler riding on the last one
    for level, block_type in enumerate(config["up_block_types"]):
        up, first = f"up_blocks.{level}", level * (layers + 1)
        for layer in range(layers + 1):
            table[f"{up}.resnets.{layer}"] = (f"output_blocks.{first + layer}.0", UNET_RESNET)
            table[f"{up}.attentions.{layer}"] = (f"output_blocks.{first + layer}.1", SAME)
        if level != last:
            slot = 2 if block_type.startswith("CrossAttn") else 1
            table[f"{up}.upsamplers.0.conv"] = (f"output_blocks.{first + layers}.{slot}.conv", SAME)
    return table


def vae_table(config: dict) -> Table:
    """AutoencoderKL -> ldm AutoencoderKL (encoder.down / decoder.up, the latter numbered in reverse)."""
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    table: Table = {
        name: (name, SAME)
        for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out")
        + ("quant_conv", "post_quant_conv")
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_norm_out"] = (f"{part}.norm_out", SAME)
        table[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", VAE_RESNET)
        table[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", VAE_ATTENTION)
        table[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", VAE_RESNET)
    for level in range(levels):
        # note: ldm numbers decoder levels from the highest resolution, diffusers from the lowest
        down, ldm_down = f"encoder.down_blocks.{level}", f"encoder.down.{level}"
        up, ldm_up = f"decoder.up_blocks.{level}", f"decoder.up.{levels - 1 - level}"
        for layer in range(layers):
            table[f"{down}.resnets.{layer}"] = (f"{ldm_down}.block.{layer}", VAE_RESNET)
        for layer in range(layers + 1):
            table[f"{up}.resnets.{layer}"] = (f"{ldm_up}.block.{layer}", VAE_RESNET)
        if level != levels - 1:
            table[f"{down}.downsamplers.0.conv"] = (f"{ldm_down}.downsample.conv", SAME)
            table[f"{up}.upsamplers.0.conv"] = (f"{ldm_up}.upsample.conv", SAME)
    return table


def _vae_state(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    renamed = _rename(state, vae_table(config), VAE_PREFIX)
    # note: the original mid-block attention uses 1x1 convolutions where diffusers uses linear layers
    return {
        key: value[:, :, None, None] if ".mid.attn_1." in key and value.ndim == 2 else value
        for key, value in renamed.items()
    }


def _text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # note: transformers >= 5.6 saves CLIPTextModel without the `text_model.` level that older files have
    tensors = {TEXT_PREFIX + key.removeprefix("text_model."): value for key, value in state.items()}
    positions = tensors[TEXT_PREFIX + "embeddings.position_embedding.weight"].shape[0]
    # note: SD 1.x's original files carry the position-id buffer too; keep ours shaped like them
    tensors[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    return tensors


def _rename(state: dict[str, torch.Tensor], table: Table, prefix: str) -> dict[str, torch.Tensor]:
    """Rename every key through the table; a key no rule covers is an error, never silently dropped."""
    out = {}
    for key, value in state.items():
        module = max((m for m in table if key.startswith(m + ".")), key=len, default=None)
        if module is None:
            raise KeyError(f"no original-layout name for {key!r}")
        ldm_module, inner = table[module]
        rest = key[len(module) + 1 :]
        for old, new in inner.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        out[f"{prefix}{ldm_module}.{rest}"] = value
    return out


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Read a model folder's safetensors weights, sharded or not."""
    index = next(folder.glob("*.safetensors.index.json"), None)
    if index:
        files = sorted({folder / name for name in _read_json(index)["weight_map"].values()})
    else:
        files = list(folder.glob("*.safetensors"))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one .safetensors file in {folder}, found {files}")
    state = {}
    for file in files:
        state.update(load_file(file))
    return state


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _is_local_path(value: object) -> bool:
    """A path on this machine (or a tuple of them): meaningless to whoever downloads the file."""
    return isinstance(value, Path) or (isinstance(value, tuple) and any(isinstance(v, Path) for v in value))

"""The original Stable Diffusion layout of a diffusers pipeline's weights: names, shapes and titles, no tensors.

AUTOMATIC1111 and ComfyUI load the CompVis/ldm layout: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE) and `cond_stage_model.transformer.text_model.*` (CLIP text encoder).
diffusers only converts the other way (loaders/single_file_utils.py), so the tables below are its
rules read backwards, built from each model's config rather than hard-coded for SD 1.5.
The text encoder is written in SD 1.x's CLIP layout (SD 2.x's OpenCLIP layout is not produced).

Plain Python on purpose (no torch, no numpy): the worker renames whole state dicts with it
(worker/dreambooth/export.py), and the API process streams a kept step's single file one tensor at a time
(backend/exports.py).
Both go through `original_names`, so their files hold the same names and shapes.
"""

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
POSITION_EMBEDDING = TEXT_PREFIX + "embeddings.position_embedding.weight"
# note: SD 1.x's original files carry the position-id buffer too (int64, shape (1, positions)); ours do as well
POSITION_IDS = TEXT_PREFIX + "embeddings.position_ids"

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


def original_names(
    unet: Iterable[str], unet_config: dict, vae: Iterable[str], vae_config: dict, text_encoder: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """Each original-layout name -> (component, diffusers name) it is read from.

    Every name of the three components is covered or it is a KeyError. POSITION_IDS is not a source
    tensor: whoever writes the file makes it (`position_ids_shape`).
    """
    names = {}
    for component, keys, table, prefix in (
        ("unet", unet, unet_table(unet_config), UNET_PREFIX),
        ("vae", vae, vae_table(vae_config), VAE_PREFIX),
    ):
        names |= {out: (component, key) for out, key in rename(keys, table, prefix).items()}
    names |= {out: ("text_encoder", key) for out, key in text_names(text_encoder).items()}
    return names


def original_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape a tensor takes under its original-layout `name`."""
    # note: the original mid-block attention uses 1x1 convolutions where diffusers uses linear layers
    if name.startswith(VAE_PREFIX) and ".mid.attn_1." in name and len(shape) == 2:
        return (*shape, 1, 1)
    return tuple(shape)


def position_ids_shape(position_embedding_shape: Sequence[int]) -> tuple[int, int]:
    """POSITION_IDS' shape; its values are 0, 1, ... positions - 1."""
    return (1, position_embedding_shape[0])


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
        for name in (
            "encoder.conv_in",
            "encoder.conv_out",
            "decoder.conv_in",
            "decoder.conv_out",
            "quant_conv",
            "post_quant_conv",
        )
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


def text_names(keys: Iterable[str]) -> dict[str, str]:
    """CLIPTextModel -> SD 1.x's CLIP text model: original name -> diffusers name, POSITION_IDS left out."""
    # note: transformers >= 5.6 saves CLIPTextModel without the `text_model.` level that older files have
    names = {TEXT_PREFIX + key.removeprefix("text_model."): key for key in keys}
    names.pop(POSITION_IDS, None)
    return names


def rename(keys: Iterable[str], table: Table, prefix: str) -> dict[str, str]:
    """Original name -> diffusers name for every key; a key no rule covers is an error, never silently dropped."""
    names = {}
    for key in keys:
        module = max((m for m in table if key.startswith(m + ".")), key=len, default=None)
        if module is None:
            raise KeyError(f"no original-layout name for {key!r}")
        ldm_module, inner = table[module]
        rest = key[len(module) + 1 :]
        for old, new in inner.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        names[f"{prefix}{ldm_module}.{rest}"] = key
    return names


def weight_files(folder: Path) -> list[Path]:
    """A model folder's safetensors weight files, sharded or not."""
    index = next(folder.glob("*.safetensors.index.json"), None)
    if index:
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    files = list(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .safetensors file in {folder}, found {files}")
    return files


# ── the header's words for the step a file holds ────────────────────────────────────────────


def title(instance_prompt: str, step: int) -> str:
    return f"{instance_prompt} (Dreambooth, step {step})"


def trained_for(step: int) -> str:
    """How a description says how long the model trained (followed by its learning rate)."""
    return f"{step} steps at"


def metadata_at_step(metadata: dict[str, str], step: int) -> dict[str, str]:
    """A trained checkpoint's header metadata, said of the same training stopped at `step`."""
    updated = {**metadata, "step": str(step)}
    if "instance_prompt" in metadata:
        updated["modelspec.title"] = title(metadata["instance_prompt"], step)
    if "step" in metadata and "modelspec.description" in metadata:
        updated["modelspec.description"] = metadata["modelspec.description"].replace(
            f", {trained_for(int(metadata['step']))} ", f", {trained_for(step)} ", 1
        )
    return updated

"""The original Stable Diffusion layout of a diffusers pipeline's weights, per family: names, shapes, no tensors.

AUTOMATIC1111 and ComfyUI load the CompVis/ldm layout (SD 1.x and 2.x) and Stability's sgm layout (SDXL):
`model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), and the text encoders under their family's
prefixes (TEXT_ENCODERS). diffusers only converts the other way (loaders/single_file_utils.py), so the
tables below are its rules read backwards, built from each model's config rather than hard-coded for one.

Plain Python on purpose (no torch, no numpy): the worker renames whole state dicts with it
(worker/dreambooth/export.py), and the API process streams a kept step's single file one tensor at a time
(backend/exports.py). Both go through `original_layout`, so their files hold the same names and bytes.
"""

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from formats.families import FamilyInfo, detect_family

UNET_PREFIX = "model.diffusion_model."
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"  # a CLIP text encoder's, as diffusers names it
VAE_PREFIX = "first_stage_model."
IMAGE_COMPONENTS = ("unet", "vae")  # a single file's components besides the family's text encoders

# How a tensor is made from what it reads (besides concatenating several along dim 0, a byte concatenation):
CONV_1X1 = "conv_1x1"  # a linear weight written as a 1x1 convolution's: (out, in) -> (out, in, 1, 1)
TRANSPOSE = "transpose"  # a 2-D matrix written transposed
POSITIONS = "positions"  # not read: int64 0, 1, ... n - 1 in shape (1, n), n the read position embedding's rows


@dataclass(frozen=True)
class Source:
    """Where one original-layout tensor comes from: the diffusers tensors it reads, and how it is made of them."""

    reads: tuple[tuple[str, str], ...]  # (component, diffusers name); several are concatenated along dim 0
    transform: str | None = None  # None, CONV_1X1, TRANSPOSE or POSITIONS
    dropped_rows: int = 0  # rows left out at the end of dim 0 (a byte prefix): tokens added by pivotal tuning

    def shape(self, shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The tensor's shape in the file, given the shapes of what it reads."""
        first = tuple(shapes[0])
        if self.dropped_rows:
            return (first[0] - self.dropped_rows, *first[1:])
        if self.transform == POSITIONS:
            return (1, first[0])
        if self.transform == TRANSPOSE:
            return first[::-1]
        if self.transform == CONV_1X1 and len(first) == 2:
            return (*first, 1, 1)
        return (sum(shape[0] for shape in shapes), *first[1:]) if len(shapes) > 1 else first


# Each family's text encoders, in FamilyInfo.text_encoders' order: (layout, prefix in the file).
# note: SDXL's first encoder is OpenAI CLIP-L saved by transformers (as SD 1.x's), its second OpenCLIP-bigG
# saved by open_clip (as SD 2.x's OpenCLIP-H); diffusers' converter reads exactly these prefixes
TEXT_ENCODERS = {
    "sd1": (("clip", "cond_stage_model.transformer."),),
    "sd2": (("open_clip", "cond_stage_model.model."),),
    "sdxl": (("clip", "conditioner.embedders.0.transformer."), ("open_clip", "conditioner.embedders.1.model.")),
}

# ModelSpec's architecture where the family's own (FamilyInfo.modelspec_architecture) depends on the prediction
# note: SD 2.x's epsilon models (the 512 px -base ones) have their own name, as kohya's sai_model_spec gives them
ARCHITECTURES = {("sd2", "epsilon"): "stable-diffusion-v2-512"}


def components(family: FamilyInfo) -> tuple[str, ...]:
    """The pipeline folders a family's single file is made of."""
    return (*IMAGE_COMPONENTS, *family.text_encoders)


def folder_family(folder: Path) -> FamilyInfo:
    """The family of a diffusers pipeline folder, from its configs (formats.families.detect_family)."""

    def read(path: str) -> dict | None:
        file = folder / path
        return json.loads(file.read_text()) if file.is_file() else None

    return detect_family(read)


def modelspec_architecture(family: FamilyInfo, prediction_type: str) -> str:
    """ModelSpec's name of a full checkpoint of `family` trained for `prediction_type` (diffusers' name)."""
    return ARCHITECTURES.get((family.name, prediction_type), family.modelspec_architecture)


def original_layout(
    family: FamilyInfo, weights: Mapping[str, Iterable[str]], configs: Mapping[str, dict], added_tokens: int = 0
) -> dict[str, Source]:
    """Each original-layout name of a `family` pipeline -> its Source.

    `weights` holds the diffusers names of each of `components(family)`, `configs` the UNet's and the VAE's
    config.json. Every name is covered or it is a KeyError: a weight is never silently dropped. The last
    `added_tokens` rows of each token embedding (pivotal tuning's new tokens) are left out: AUTOMATIC1111 and
    ComfyUI build CLIP with its released vocabulary and refuse a larger embedding; the tokens download on their
    own (formats/embedding.py), as those tools load them.
    """
    layout = {}
    for component, table, prefix in (
        ("unet", unet_table(configs["unet"]), UNET_PREFIX),
        ("vae", vae_table(configs["vae"]), VAE_PREFIX),
    ):
        for name, key in rename(weights[component], table, prefix).items():
            transform = CONV_1X1 if component == "vae" and ".mid.attn_1." in name else None
            layout[name] = Source(((component, key),), transform)
    for component, (text_layout, prefix) in zip(family.text_encoders, TEXT_ENCODERS[family.name], strict=True):
        names = clip_layout if text_layout == "clip" else open_clip_layout
        layout |= names(component, weights[component], prefix)
    if added_tokens:
        for name, source in layout.items():
            if source.reads[0][1].endswith(TOKEN_EMBEDDING) and source.transform is None:
                layout[name] = dataclasses.replace(source, dropped_rows=added_tokens)
    return layout


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
        # SDXL's pooled text embedding and time ids ("text_time" added conditioning)
        "add_embedding.linear_1": ("label_emb.0.0", SAME),
        "add_embedding.linear_2": ("label_emb.0.2", SAME),
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


# ── text encoders ───────────────────────────────────────────────────────────────────────────

# CLIPTextModel(WithProjection)'s names (without `text_model.`) -> OpenCLIP's, outside its layers
# (diffusers' DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]); None: a buffer OpenCLIP has no counterpart of
OPEN_CLIP_NAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "embeddings.position_ids": None,
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}
# Inside encoder.layers.{i} -> inside transformer.resblocks.{i} (DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"])
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
# note: OpenCLIP keeps one nn.MultiheadAttention input projection: q, k and v stacked along dim 0, in this order
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
OPEN_CLIP_LAYER_NAME = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def clip_layout(component: str, keys: Iterable[str], prefix: str) -> dict[str, Source]:
    """CLIPTextModel -> OpenAI CLIP as transformers names it (SD 1.x; SDXL's first encoder), under `prefix`."""
    text = prefix + "text_model."
    # note: transformers >= 5.6 saves CLIPTextModel without the `text_model.` level that older files have
    layout = {text + key.removeprefix("text_model."): Source(((component, key),)) for key in keys}
    # note: the original files carry the position-id buffer too (int64, (1, positions)); ours are made, never read
    embedding = layout[text + "embeddings.position_embedding.weight"]
    layout[text + "embeddings.position_ids"] = Source(embedding.reads, POSITIONS)
    return layout


def open_clip_layout(component: str, keys: Iterable[str], prefix: str) -> dict[str, Source]:
    """CLIPTextModel(WithProjection) -> OpenCLIP's text tower (SD 2.x's; SDXL's second encoder), under `prefix`.

    diffusers keeps 23 of SD 2.x's 24 layers (the last one never conditions the UNet), so our files have 23;
    OpenCLIP's logit_scale, and SD 2.x's text_projection, have no diffusers counterpart and are left out.
    """
    keys = set(keys)
    layout = {}
    for key in keys:
        name = open_clip_name(key.removeprefix("text_model."))
        if name is None:
            continue
        if ".in_proj_" not in name:
            # note: diffusers reads OpenCLIP's text_projection transposed (`checkpoint[key].T`): OpenCLIP multiplies
            # from the right (x @ P) where transformers' nn.Linear holds (out, in)
            layout[prefix + name] = Source(((component, key),), TRANSPOSE if name == "text_projection" else None)
        elif ".q_proj." in key:  # the k and v projections are read with their q projection
            reads = tuple((component, key.replace(".q_proj.", f".{part}.")) for part in ATTENTION_INPUTS)
            missing = [read for _, read in reads if read not in keys]
            if missing:
                raise KeyError(f"attention projections {missing} missing beside {key!r}")
            layout[prefix + name] = Source(reads)
    return layout


def open_clip_name(name: str) -> str | None:
    """OpenCLIP's name of a CLIPTextModel weight named `name` (without `text_model.`); None for the position ids."""
    if name in OPEN_CLIP_NAMES:
        return OPEN_CLIP_NAMES[name]
    match = OPEN_CLIP_LAYER_NAME.fullmatch(name)
    if match:
        layer, module, kind = match.groups()
        if module in {f"self_attn.{part}" for part in ATTENTION_INPUTS}:
            return f"transformer.resblocks.{layer}.attn.in_proj_{kind}"
        if module in OPEN_CLIP_LAYER:
            return f"transformer.resblocks.{layer}.{OPEN_CLIP_LAYER[module]}.{kind}"
    raise KeyError(f"no original-layout name for {name!r}")


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

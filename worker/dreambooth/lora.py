"""LoRA training: small trainable adapters over a frozen base model, saved as files other tools load.

Follows diffusers' examples/dreambooth/train_dreambooth_lora.py (and train_dreambooth_lora_sdxl.py): peft
LoraConfig with Gaussian initialisation on the UNet's attention projections (and every text encoder's, when
they are trained), adapter weights in fp32 over a base in any precision, and files written through the
family's pipeline class (save_lora_weights). Two files are written: the diffusers layout
(pipeline.load_lora_weights) and kohya's (lora_unet_* and lora_te_*, or SDXL's lora_te1_* / lora_te2_*, with
.alpha tensors), which AUTOMATIC1111, ComfyUI and kohya's sd-scripts load.

Both files hold scale-1 weights: alpha/rank is folded into the up (B) weights, so a file means the
same to every loader, including those that ignore the adapter settings recent diffusers releases
store in the header (older diffusers releases, other tools reading the diffusers layout).
"""

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from diffusers import DiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_kohya,
    recurse_remove_peft_layers,
)
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from formats.families import FAMILIES
from formats.hub_layout import hub_name
from formats.lora import LORA_FILES

from .components import Components, pipeline_for
from .config import TrainConfig
from .files import atomic_file

log = logging.getLogger(__name__)

LORA_FILE, KOHYA_FILE = LORA_FILES["lora"], LORA_FILES["lora_kohya"]
ADAPTER = "default"  # peft's name for a model's only adapter

# The reference script's targets: the attention projections (add_k_proj/add_v_proj exist only in UNets
# with added key/value projections, such as DeepFloyd IF's; SD 1.x has none, and peft skips them).
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def modelspec_lora(family: str) -> dict[str, str]:
    """What both files are, in ModelSpec terms; kohya's sd-scripts names the implementation of these LoRAs
    "diffusers", since their keys follow diffusers' module names."""
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": FAMILIES[family].lora_architecture,
        "modelspec.implementation": "diffusers",
    }


@dataclass(frozen=True)
class LoraSettings:
    """The adapters' shape; names follow peft's LoraConfig."""

    rank: int = 4  # r: the adapters' inner width; larger learns more, files grow
    alpha: float | None = None  # the update is scaled by alpha/rank; None = rank (scale 1)
    dropout: float = 0.0  # dropout on the adapters' input, in training only

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError("alpha must be > 0 or None")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")

    def config(self, targets: tuple[str, ...]) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha if self.alpha is not None else self.rank,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )


def add_adapters(unet: torch.nn.Module, text_encoders: tuple, settings: LoraSettings) -> None:
    """Freeze the models' own weights and add trainable adapters to them, in place (adapters in fp32)."""
    models = [unet, *text_encoders]
    for model in models:
        model.requires_grad_(False)
    unet.add_adapter(settings.config(UNET_TARGETS))
    for text_encoder in text_encoders:
        # note: peft's own injection, which is all text_encoder.add_adapter does, less its version check:
        # transformers 5.24 asks for peft >= 0.22, newer than the latest release (0.21.2)
        inject_adapter_in_model(settings.config(TEXT_ENCODER_TARGETS), text_encoder, ADAPTER)
    # note: a half-precision base gets fp32 adapters, whose small updates would vanish in fp16
    cast_training_params(models, dtype=torch.float32)
    log.info(
        "added LoRA adapters (rank %d, alpha %s): %d trainable parameters",
        settings.rank,
        settings.alpha,
        sum(p.numel() for model in models for p in lora_parameters(model)),
    )


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapters' parameters (what the optimizer should update)."""
    return [p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def lora_state_dicts(
    unet: torch.nn.Module, text_encoders: tuple = ()
) -> tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], ...]]:
    """The adapters as diffusers-layout state dicts (CPU copies, scale folded in): (UNet, text encoders')."""
    unet_layers, text_layers = _peft_layers(unet, text_encoders)
    return convert_state_dict_to_diffusers(unet_layers), tuple(convert_state_dict_to_diffusers(t) for t in text_layers)


def save_lora(
    folder: Path,
    unet: torch.nn.Module,
    text_encoders: tuple,
    settings: LoraSettings,
    family,
    metadata: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write the adapters in the diffusers and kohya layouts, each file atomically; returns their paths.

    Both headers say what the file is (ModelSpec), the adapter settings it was trained with (lora_alpha is the
    training setting; the weights themselves are at scale 1), and `metadata`.
    """
    unet_layers, text_layers = _peft_layers(unet, text_encoders)
    header = {
        "format": "pt",
        **modelspec_lora(family.info.name),
        "modelspec.title": folder.name,
        "lora_rank": str(settings.rank),
        "lora_alpha": str(settings.alpha if settings.alpha is not None else settings.rank),
        "lora_dropout": str(settings.dropout),
        **(metadata or {}),
    }
    paths = {"lora": folder / LORA_FILE, "lora_kohya": folder / KOHYA_FILE}
    with atomic_file(paths["lora"]) as tmp:
        family.save_lora_weights(
            tmp.parent,
            tmp.name,
            convert_state_dict_to_diffusers(unet_layers),
            tuple(convert_state_dict_to_diffusers(layers) for layers in text_layers),
            lambda tensors, path: save_file(tensors, path, metadata=header),
        )
    with atomic_file(paths["lora_kohya"]) as tmp:
        save_file(kohya_layers(unet_layers, text_layers), tmp, metadata=header)
    text_count = sum(len(layers) for layers in text_layers)
    log.info("saved LoRA (%d UNet tensors, %d text encoder tensors) to %s", len(unet_layers), text_count, folder)
    return paths


def lora_settings(config: TrainConfig) -> LoraSettings:
    return LoraSettings(rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout)


def merged_into_base(parts: Components, lora_dir: Path, text_encoders_trained: bool):
    """The base model's fp32 UNet (and text encoders) with the saved LoRA merged in: what a full export holds.

    Merged into fresh copies of the untouched fp32 base (the run may have trained over an fp16 one), through
    diffusers' own loader, so the export is what anyone loading the LoRA file onto the base would get.
    Returns (UNet, the merged text encoders, or () when they were not trained).
    """
    text_encoders = tuple(copy.deepcopy(m) if text_encoders_trained else m for m in parts.text_encoders)
    pipeline = pipeline_for(parts, copy.deepcopy(parts.unet), parts.vae, text_encoders)
    pipeline.load_lora_weights(lora_dir, weight_name=LORA_FILE)
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    return pipeline.unet, text_encoders if text_encoders_trained else ()


def fuse(unet: torch.nn.Module, text_encoders: tuple = ()) -> tuple[torch.nn.Module, tuple[torch.nn.Module, ...]]:
    """Plain copies of the models with the adapters merged into their weights (in the base's dtype).

    The models given are not changed, so training can go on; the copies cost one more model each.
    """
    return _merged_copy(unet), tuple(_merged_copy(model) for model in text_encoders)


def load_lora(pipeline: DiffusionPipeline, folder: Path) -> None:
    """Load the LoRA file in `folder` into the pipeline, in place of any LoRA it held before."""
    pipeline.unload_lora_weights()
    pipeline.load_lora_weights(folder, weight_name=LORA_FILE)


# ---------------------------------------------------------------------- helpers


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside distributed (DDP and the like) and torch.compile wrappers; mixed-precision hooks stay."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def _peft_layers(
    unet: torch.nn.Module, text_encoders: tuple
) -> tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], ...]]:
    """The adapters' lora_A/lora_B tensors in peft's layout (the text encoders' under the Hub's names)."""
    return _scale_one_layers(unet), tuple(hub_named(_scale_one_layers(model)) for model in text_encoders)


def hub_named(text_layers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's adapter tensors under the Hub's module names (formats/hub_layout.py).

    transformers 5 dropped CLIPTextModel's `text_model.` level; LoRA files keep it (kohya's keys and older
    loaders need it), and diffusers' loader strips it again for a model without it.
    """
    return {hub_name("CLIPTextModel", key): value for key, value in text_layers.items()}


def _scale_one_layers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One model's adapter tensors as CPU copies, alpha/rank folded into lora_B."""
    model = _unwrap(model)
    config = model.peft_config[ADAPTER]
    scale = config.lora_alpha / config.r
    return {
        key: (value * scale if ".lora_B." in key else value).detach().cpu().contiguous()
        for key, value in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()
    }


def kohya_layers(unet_layers: dict[str, torch.Tensor], text_layers: tuple = ()) -> dict[str, torch.Tensor]:
    """lora_unet_* and lora_te_* (one text encoder) or lora_te1_* / lora_te2_* (SDXL's two) keys with lora_down,
    lora_up and alpha (= rank), from peft's layer names (the text encoders' under the Hub's names)."""
    prefixed = {f"unet.{key}": value for key, value in unet_layers.items()}
    for folder, layers in zip(("text_encoder", "text_encoder_2"), text_layers):
        prefixed |= {f"{folder}.{key}": value for key, value in layers.items()}
    converted = convert_state_dict_to_kohya(prefixed)
    if len(text_layers) == 2:
        return converted
    # note: diffusers writes lora_te1 (SDXL's first text encoder); one-encoder families name theirs lora_te
    return {
        "lora_te_" + key.removeprefix("lora_te1_") if key.startswith("lora_te1_") else key: value
        for key, value in converted.items()
    }


def _merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    # note: the copy drops accelerate's mixed-precision forward too; the original keeps it
    merged = extract_model_from_parallel(copy.deepcopy(_unwrap(model)), keep_fp32_wrapper=False)
    for module in merged.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    recurse_remove_peft_layers(merged)
    merged.__dict__.pop("peft_config", None)
    merged._hf_peft_config_loaded = False
    return merged.eval()

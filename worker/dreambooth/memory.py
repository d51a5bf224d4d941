"""Pick memory savers from the GPU's size and the model's family (memory_profile "auto"); torch-free, so it is a
pure function.

SD 1.x and 2.x follow the study's tiers. SDXL's UNet is 2.6B parameters (3.3x SD 1.5's): full fine-tuning
needs a large card even with every saver, and LoRA is what fits a consumer GPU (as diffusers' SDXL guide
recommends), so its tiers are its own.
"""

import dataclasses
import importlib.util

from formats.families import SDXL_FULL_FINETUNE_MIN_GIB

from .config import MemoryPlan, TrainConfig
from .errors import JobError

GIB = 2**30
# note: cards report a little less than their label (a 24 GB card shows ~23.6 GiB), hence the margins
LARGE_GPU = 22 * GIB
MEDIUM_GPU = 14 * GIB


# SDXL tiers (GiB as cards report them); below the full fine-tuning floor only LoRA fits.
SDXL_FULL_PLAIN_GPU = 70 * GIB  # an 80 GB card: AdamW kept, fp16 and checkpointing
SDXL_FULL_MINIMUM_GPU = int(SDXL_FULL_FINETUNE_MIN_GIB * GIB)  # the API refuses by the same estimate
SDXL_LORA_LARGE_GPU = 22 * GIB
SDXL_LORA_MEDIUM_GPU = 14 * GIB


def plan_memory(config: TrainConfig, device_type: str, total_memory: int | None, family: str = "sd1") -> MemoryPlan:
    """The savers to switch on for a GPU of `total_memory` bytes; they only ever add to what was asked.

    SD 1.x/2.x: >= 24 GB: plain AdamW (the study's ideal for text-encoder training); ~16 GB: 8-bit Adam, fp16
    and gradient checkpointing (the study's recipe); <= 12 GB: all of those, xformers when installed, and the
    batch split into accumulation micro-steps. Class images are generated in bigger batches where memory allows.
    SDXL: see _sdxl_savers. A GPU too small for the method at all is a JobError naming what fits.
    """
    if config.memory_profile == "none":
        return MemoryPlan("none", _gib(total_memory))
    if device_type != "cuda" or total_memory is None:
        return MemoryPlan("cpu", None)
    if family == "sdxl":
        profile, wanted = _sdxl_savers(config, total_memory)
    else:
        profile, wanted = _study_savers(config, total_memory)
    changes = tuple((name, value) for name, value in wanted.items() if _adds_saving(config, name, value))
    return MemoryPlan(profile, _gib(total_memory), changes)


def _study_savers(config: TrainConfig, total_memory: int) -> tuple[str, dict]:
    """SD 1.x and 2.x: the study's tiers."""
    if total_memory >= LARGE_GPU:
        profile, wanted = "24gb", {"sample_batch_size": 16}
    else:
        wanted = {
            "use_8bit_adam": True,
            "mixed_precision": "fp16",
            "gradient_checkpointing": True,
            "sample_batch_size": 8,
        }
        profile = "16gb"
        if total_memory < MEDIUM_GPU:
            profile = "12gb"
            wanted["sample_batch_size"] = 4
            wanted["enable_xformers_memory_efficient_attention"] = importlib.util.find_spec("xformers") is not None
            wanted |= _one_photo_per_micro_step(config)
    return profile, wanted


def _sdxl_savers(config: TrainConfig, total_memory: int) -> tuple[str, dict]:
    """SDXL: full fine-tuning on large cards only (refused below its floor, naming LoRA); LoRA everywhere else."""
    gib = total_memory / GIB
    if config.adapter_method == "full":
        if total_memory < SDXL_FULL_MINIMUM_GPU:
            raise JobError(
                "out_of_memory",
                f"SDXL full fine-tuning needs about {SDXL_FULL_MINIMUM_GPU // GIB} GiB of GPU memory even with every "
                f"memory saver, and this GPU has {gib:.0f} GiB. Train with training_method lora, which fits.",
            )
        wanted = {"mixed_precision": "fp16", "gradient_checkpointing": True}
        if total_memory >= SDXL_FULL_PLAIN_GPU:
            return "sdxl-80gb", wanted
        return "sdxl-40gb", wanted | {"use_8bit_adam": True} | _one_photo_per_micro_step(config)
    wanted = {"mixed_precision": "fp16"}
    if total_memory >= SDXL_LORA_LARGE_GPU:
        return "sdxl-lora-24gb", wanted
    wanted["gradient_checkpointing"] = True
    if total_memory >= SDXL_LORA_MEDIUM_GPU:
        return "sdxl-lora-16gb", wanted
    return "sdxl-lora-12gb", wanted | _one_photo_per_micro_step(config)


def _one_photo_per_micro_step(config: TrainConfig) -> dict:
    """The same batch as accumulation micro-steps of one photo each."""
    return {
        "gradient_accumulation_steps": config.gradient_accumulation_steps * config.train_batch_size,
        "train_batch_size": 1,
    }


def apply_memory_plan(config: TrainConfig, plan: MemoryPlan) -> TrainConfig:
    return dataclasses.replace(config, **dict(plan.changes)) if plan.changes else config


def _adds_saving(config: TrainConfig, name: str, value: object) -> bool:
    """Whether setting `name` to `value` changes the config without undoing something the user asked for."""
    current = getattr(config, name)
    if name == "mixed_precision":
        return current == "no"  # note: a chosen bf16 is kept; it saves as much as fp16
    if name == "sample_batch_size":
        return value > current
    if name == "train_batch_size":
        return value < current
    if isinstance(value, bool):
        return value and not current
    return value != current


def _gib(total_memory: int | None) -> float | None:
    return None if total_memory is None else total_memory / GIB

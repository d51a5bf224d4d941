"""Pick memory savers from the GPU's size (memory_profile "auto"); torch-free, so it is a pure function."""

import dataclasses
import importlib.util

from .config import MemoryPlan, TrainConfig

GIB = 2**30
# note: cards report a little less than their label (a 24 GB card shows ~23.6 GiB), hence the margins
LARGE_GPU = 22 * GIB
MEDIUM_GPU = 14 * GIB


def plan_memory(config: TrainConfig, device_type: str, total_memory: int | None) -> MemoryPlan:
    """The savers to switch on for a GPU of `total_memory` bytes; they only ever add to what was asked.

    >= 24 GB: plain AdamW (the study's ideal for text-encoder training); ~16 GB: 8-bit Adam, fp16 and
    gradient checkpointing (the study's recipe); <= 12 GB: all of those, xformers when installed, and the
    batch split into accumulation micro-steps. Class images are generated in bigger batches where memory allows.
    """
    if config.memory_profile == "none":
        return MemoryPlan("none", _gib(total_memory))
    if device_type != "cuda" or total_memory is None:
        return MemoryPlan("cpu", None)
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
            wanted["gradient_accumulation_steps"] = config.gradient_accumulation_steps * config.train_batch_size
            wanted["train_batch_size"] = 1
    changes = tuple((name, value) for name, value in wanted.items() if _adds_saving(config, name, value))
    return MemoryPlan(profile, _gib(total_memory), changes)


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

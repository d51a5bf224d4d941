"""The Stable Diffusion families the project trains, as plain data: what each is and how to tell it.

A family is detected from a model's configs (model_index.json, the text encoder's and the UNet's
config.json), never guessed from its name. Plain Python so the API, which never loads a model,
tells a base model's family and default resolution the same way the worker does.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyInfo:
    name: str  # "sd1" | "sd2" | "sdxl": what jobs, the API and the page call it
    title: str  # for people
    resolution: int  # the side its released base models were trained at (a model's own may differ)
    text_encoders: tuple[str, ...]  # the pipeline folder's text-encoder subfolders, in order
    tokenizers: tuple[str, ...]  # their tokenizers' subfolders
    modelspec_architecture: str  # ModelSpec's name of a full checkpoint (LoRA files add "/lora")
    lora_architecture: str  # ModelSpec's name of its LoRA files
    license: str  # the released weights' licence, which every fine-tune of them must pass on


FAMILIES: dict[str, FamilyInfo] = {
    family.name: family
    for family in (
        FamilyInfo(
            "sd1", "Stable Diffusion 1.x", 512, ("text_encoder",), ("tokenizer",),
            "stable-diffusion-v1", "stable-diffusion-v1/lora", "CreativeML Open RAIL-M",
        ),
        FamilyInfo(
            "sd2", "Stable Diffusion 2.x", 768, ("text_encoder",), ("tokenizer",),
            "stable-diffusion-v2-768-v", "stable-diffusion-v2-768-v/lora", "CreativeML Open RAIL++-M",
        ),
        FamilyInfo(
            "sdxl", "Stable Diffusion XL", 1024, ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2"),
            "stable-diffusion-xl-v1-base", "stable-diffusion-xl-v1-base/lora", "CreativeML Open RAIL++-M",
        ),
    )
}  # fmt: skip

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Builtin:
    """A generated test model: its family and the side its UNet's sample size gives."""

    family: str
    resolution: int


BUILTIN_MODELS: dict[str, Builtin] = {
    "tiny": Builtin("sd1", 64),
    "small": Builtin("sd1", 128),
    "full": Builtin("sd1", 512),
    "tiny-sd2": Builtin("sd2", 64),
    "full-sd2": Builtin("sd2", 768),
    "tiny-sdxl": Builtin("sdxl", 64),
    "full-sdxl": Builtin("sdxl", 1024),
}

VAE_SCALE = 8  # pixels per latent, every family

# Reads one of a model's JSON files by its path inside the model ("model_index.json", "unet/config.json");
# None when the model has no such file (or it cannot be read where the caller looks).
ConfigReader = Callable[[str], dict | None]


class UnknownFamily(ValueError):
    """A model whose configs match no family the project trains."""


def detect_family(read: ConfigReader) -> FamilyInfo:
    """The family of the model whose JSON files `read` returns (UnknownFamily when it is none of ours).

    SDXL pipelines have a second text encoder (a refiner has only that one, and is not trained here);
    SD 2.x's OpenCLIP text encoder uses GELU where SD 1.x's OpenAI CLIP uses quick GELU.
    """
    index = read("model_index.json") or {}
    if "text_encoder_2" in index:
        if "text_encoder" not in index or index.get("text_encoder", [None])[0] is None:
            raise UnknownFamily("an SDXL refiner (no first text encoder) cannot be trained here; use the base model")
        return FAMILIES["sdxl"]
    text = read("text_encoder/config.json")
    if text is None:
        raise UnknownFamily("the model has no text_encoder/config.json; is it a Stable Diffusion pipeline folder?")
    unet = read("unet/config.json") or {}
    if unet.get("addition_embed_type") == "text_time":
        return FAMILIES["sdxl"]
    if text.get("hidden_act") == "gelu":
        return FAMILIES["sd2"]
    if text.get("hidden_act", "quick_gelu") == "quick_gelu":
        return FAMILIES["sd1"]
    raise UnknownFamily(f"a text encoder with activation {text.get('hidden_act')!r} matches no family")


def model_resolution(read: ConfigReader, family: FamilyInfo) -> int:
    """The side a model draws at by default: its UNet's sample size in pixels, else its family's."""
    unet = read("unet/config.json") or {}
    sample_size = unet.get("sample_size")
    return sample_size * VAE_SCALE if isinstance(sample_size, int) else family.resolution


def builtin_name(base_model: str) -> str | None:
    """ "tiny" for "builtin:tiny"; None for any other model."""
    return base_model.removeprefix(BUILTIN_PREFIX) if base_model.startswith(BUILTIN_PREFIX) else None


# ── GPU memory each way of training needs at the least ──────────────────────────────────────────
# note: estimates, not measurements (bench/ records those): the least memory a run can fit in with every
# saver on (fp16, 8-bit Adam, gradient checkpointing, one photo per micro-step). The API refuses a job below
# them when GPU_MEMORY_GIB says what the workers have; the worker's memory planner does the fine fitting.
SD_FULL_FINETUNE_MIN_GIB = 12.0  # SD 1.x / 2.x UNet (~0.9 B parameters) and its optimizer state
SDXL_FULL_FINETUNE_MIN_GIB = 30.0  # estimate: SDXL's 2.6 B-parameter UNet, even with 8-bit Adam and checkpointing
SDXL_LORA_MIN_GIB = 6.0  # estimate: the frozen SDXL UNet in fp16 alone takes about 5 GiB

# (family, training_method) -> the least GPU memory in GiB; a pair not named fits any GPU the project runs on.
MIN_GPU_MEMORY_GIB: dict[tuple[str, str], float] = {
    ("sd1", "full"): SD_FULL_FINETUNE_MIN_GIB,
    ("sd2", "full"): SD_FULL_FINETUNE_MIN_GIB,
    ("sdxl", "full"): SDXL_FULL_FINETUNE_MIN_GIB,
    ("sdxl", "lora"): SDXL_LORA_MIN_GIB,
}


def min_gpu_memory_gib(family: str | None, training_method: str) -> float:
    """The least GPU memory a run of `training_method` on `family` needs (0 when any GPU will do).

    For an unknown family (None): the least that every family needs, so nothing is refused on a guess.
    """
    families = [family] if family else list(FAMILIES)
    return min(MIN_GPU_MEMORY_GIB.get((name, training_method), 0.0) for name in families)

"""What the API knows about each base model it offers: its family and the side it draws at, without loading it.

A built-in model's facts are a table (formats/families.py); a local folder's and a Hub model's are read from
their JSON configs, a Hub model's only from the local Hugging Face cache: the API makes no network calls, and
never guesses a family from a name. A model whose configs cannot be read has an unknown family (None).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from formats.families import (
    BUILTIN_MODELS,
    FAMILIES,
    ConfigReader,
    FamilyInfo,
    UnknownFamily,
    builtin_name,
    detect_family,
    min_gpu_memory_gib,
    model_resolution,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFacts:
    """A base model's family and default resolution; both None while they cannot be told."""

    name: str
    family: FamilyInfo | None
    resolution: int | None

    @property
    def family_name(self) -> str | None:
        return self.family.name if self.family else None


_known: dict[str, ModelFacts] = {}  # per process: a model's configs do not change under a running server


def model_facts(name: str) -> ModelFacts:
    """The facts of base model `name`, remembered for the process once known.

    note: an unknown family is not remembered: a worker may download the model into the cache meanwhile, and
    asking again costs only a few file lookups.
    """
    if name in _known:
        return _known[name]
    facts = _read_facts(name)
    if facts.family is not None:
        _known[name] = facts
    return facts


def _read_facts(name: str) -> ModelFacts:
    builtin = builtin_name(name)
    if builtin is not None:
        return _builtin_facts(name, builtin)
    read = _folder_reader(Path(name)) if Path(name).is_dir() else _hub_cache_reader(name)
    try:
        family = detect_family(read)
    except UnknownFamily as exc:
        # note: debug, not info: /api/info asks again on every call until the model is downloaded
        log.debug("base model %s: family unknown (%s)", name, exc)
        return ModelFacts(name, None, None)
    return ModelFacts(name, family, model_resolution(read, family))


def _builtin_facts(name: str, builtin: str) -> ModelFacts:
    known = BUILTIN_MODELS.get(builtin)
    if known is None:
        return ModelFacts(name, None, None)
    return ModelFacts(name, FAMILIES[known.family], known.resolution)


def _folder_reader(folder: Path) -> ConfigReader:
    """Reads a local diffusers folder's JSON files."""
    return lambda path: _read_json(folder / path)


def _hub_cache_reader(repo_id: str) -> ConfigReader:
    """Reads a Hub model's JSON files from the local Hugging Face cache only (None for what is not there)."""

    def read(path: str) -> dict | None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # note: an API-only install may lack it; then no Hub model's family is known
            return None
        try:
            cached = try_to_load_from_cache(repo_id, path)
        except ValueError:  # not a valid repository id (a folder that does not exist, say)
            return None
        return _read_json(Path(cached)) if isinstance(cached, str) else None

    return read


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def memory_refusal(
    facts: ModelFacts, training_method: str, gpu_memory_gib: float | None, pivotal_second_phase: str = "full"
) -> str | None:
    """Why a run of `training_method` on this model cannot fit the workers' GPUs at all; None when it may.

    The least memory each family and method needs is formats/families.py's table; without GPU_MEMORY_GIB
    nothing is refused (the worker's memory planner fits what it can). A pivotal run needs what its second
    phase needs: textual inversion trains a few embedding rows, far less than either.
    """
    pivotal = training_method == "pivotal"
    method = pivotal_second_phase if pivotal else training_method
    needed = min_gpu_memory_gib(facts.family_name, method)
    if gpu_memory_gib is None or gpu_memory_gib >= needed:
        return None
    family = facts.family.title if facts.family else "any Stable Diffusion model"
    if method == "lora":
        return (
            f"LoRA training of {family} needs about {needed:g} GiB of GPU memory and the workers have "
            f"{gpu_memory_gib:g} GiB (GPU_MEMORY_GIB); choose a smaller base model"
        )
    remedy = "pivotal_second_phase lora" if pivotal else "training_method lora"
    return (
        f"full fine-tuning of {family} needs about {needed:g} GiB of GPU memory even with 8-bit Adam and "
        f"gradient checkpointing, and the workers have {gpu_memory_gib:g} GiB (GPU_MEMORY_GIB); "
        f"choose {remedy}, which trains small adapters in far less memory"
    )

"""One adapter per Stable Diffusion family: what differs between SD 1.x, SD 2.x and SDXL, and nothing else.

The loop, the validator, the renderer and the exporters are written once and ask the family of the
model in hand (`family_of`) for what varies: its text parts, how a prompt becomes the UNet's
conditioning, its pipeline class, its built-in test models. Detection reads the model's configs
(formats/families.py), never its name.
"""

import json
from pathlib import Path

from formats.families import BUILTIN_MODELS, FAMILIES, FamilyInfo, builtin_name, detect_family

from .base import Conditioning, Family
from .sd1 import SD1Family
from .sd2 import SD2Family
from .sdxl import SDXLFamily

ADAPTERS: dict[str, Family] = {adapter.info.name: adapter for adapter in (SD1Family(), SD2Family(), SDXLFamily())}
assert set(ADAPTERS) == set(FAMILIES), "every family in formats/families.py has an adapter"

__all__ = ["ADAPTERS", "Conditioning", "Family", "family_named", "family_of", "family_of_builtin"]


def family_named(name: str) -> Family:
    return ADAPTERS[name]


def family_of_builtin(base_model: str) -> Family | None:
    """The family of a builtin:NAME model (known before it is generated); None for other models."""
    name = builtin_name(base_model)
    return ADAPTERS[BUILTIN_MODELS[name].family] if name in BUILTIN_MODELS else None


def family_of(location: str, revision: str | None = None) -> Family:
    """The family of the model at a from_pretrained location: a folder, or a Hub id (its configs are fetched
    into the Hugging Face cache, honouring HF_HUB_OFFLINE)."""
    return ADAPTERS[detect_family(config_reader(location, revision)).name]


def config_reader(location: str, revision: str | None = None):
    """A formats.families.ConfigReader over a model folder or a Hub repository."""
    folder = Path(location)

    def read(path: str) -> dict | None:
        if folder.is_dir():
            file = folder / path
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                file = Path(hf_hub_download(location, path, revision=revision))
            except EntryNotFoundError:
                return None
        return json.loads(file.read_text()) if file.is_file() else None

    return read


def info(name: str) -> FamilyInfo:
    return FAMILIES[name]

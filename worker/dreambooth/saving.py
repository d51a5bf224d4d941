"""Saving models for others to load: diffusers and transformers folders in the Hub's layout
(formats/hub_layout.py), whatever releases are installed here."""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from formats.hub_layout import hub_name, needs_renaming
from formats.single_file import weight_files


def save_model(model: torch.nn.Module, folder: Path) -> None:
    """save_pretrained (safetensors), then the weights renamed to the Hub's layout where they differ."""
    model.save_pretrained(folder, safe_serialization=True)
    to_hub_layout(folder)


def save_pipeline(pipeline, folder: Path) -> None:
    """A diffusers pipeline's save_pretrained (safetensors), each part in the Hub's layout."""
    pipeline.save_pretrained(folder, safe_serialization=True)
    for part in folder.iterdir():
        if (part / "config.json").is_file():
            to_hub_layout(part)
    for name, component in pipeline.components.items():
        if hasattr(component, "model_max_length"):
            vocabulary_files(component, folder / name)


def vocabulary_files(tokenizer, folder: Path) -> None:
    """Write a BPE tokenizer's vocab.json and merges.txt, as the Hub's tokenizer folders hold them:
    transformers 4.x's CLIPTokenizer reads those, and 5.x saves tokenizer.json alone."""
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        tokenizer.backend_tokenizer.model.save(str(folder))
    # note: tokens added after the vocabulary (pivotal tuning's) live in tokenizer.json alone, which 4.x's slow
    # CLIPTokenizer does not read; its own file for them is added_tokens.json
    size = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    added = {token: index for token, index in tokenizer.get_added_vocab().items() if index >= size}
    if added:
        (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")


def to_hub_layout(folder: Path) -> None:
    """Rename a saved model folder's weights in place to the Hub's layout (nothing to do for most models)."""
    architecture = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
    files = weight_files(folder)
    for path in files:
        with safe_open(path, "pt") as weights:
            names, metadata = list(weights.keys()), weights.metadata()
        if needs_renaming(architecture, names):
            tensors = {hub_name(architecture, name): tensor for name, tensor in load_file(path).items()}
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(tensors, tmp, metadata=metadata)
            tmp.replace(path)
    index = next(folder.glob("*.safetensors.index.json"), None)
    if index is not None:
        content = json.loads(index.read_text())
        content["weight_map"] = {hub_name(architecture, k): v for k, v in content["weight_map"].items()}
        index.write_text(json.dumps(content, indent=2))

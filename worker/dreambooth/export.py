"""Export a trained run: the diffusers pipeline folder, LoRA files, and single .safetensors files in the
original layout of the model's family (SD 1.x, SD 2.x or SDXL).

AUTOMATIC1111 and ComfyUI load those layouts; formats/single_file.py names where each weight goes.

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

from formats import single_file as layout
from formats.embedding import EMBEDDING_FILE, EMBEDDING_FORMAT, added_tokens
from formats.families import FAMILIES, FamilyInfo

from .components import Components, pipeline_for, release
from .config import TrainConfig
from .files import atomic_dir, atomic_file
from .lora import lora_settings, merged_into_base, save_lora
from .pivotal import learned_vectors, save_embedding
from .saving import save_pipeline
from .trainees import Trainees

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}

# What every file written here is, in ModelSpec terms (its architecture is its family's); the implementation is
# the one kohya's sd-scripts names for original-layout SD checkpoints.
MODELSPEC_LAYOUT = {
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
}
PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v"}  # diffusers' name -> ModelSpec's


def export_run(config: TrainConfig, parts: Components, run: Trainees, step: int) -> tuple[Path, dict[str, Path]]:
    """Write the trained pipeline folder and the single files (LoRA runs: the LoRA files first); returns the
    folder and the files by name ("fp16", "fp32", "lora", "lora_kohya", "embedding"). The run ends here
    (Trainees.finish)."""
    device = run.accelerator.device
    unet, text_encoders = run.finish()
    release(device)
    metadata = checkpoint_metadata(config, step, parts.family.info.name)
    checkpoints = {}
    if config.adapter_method == "lora":
        lora_dir = config.output_dir / "lora"
        checkpoints |= save_lora(lora_dir, unet, text_encoders, lora_settings(config), parts.family, metadata)
        unet, text_encoders = merged_into_base(parts, lora_dir, config.train_text_encoder)
    if config.training_method == "pivotal":
        vectors = learned_vectors(parts.tokenizers, text_encoders or parts.text_encoders, config)
        path = config.output_dir / "checkpoints" / EMBEDDING_FILE
        checkpoints[EMBEDDING_FORMAT] = save_embedding(path, vectors, config, step)
    pipeline_dir = config.output_dir / "pipeline"
    # note: the exported pipeline holds the untouched fp32 frozen parts, so exports carry the base weights exactly
    pipeline = pipeline_for(parts, unet, parts.vae, text_encoders or parts.text_encoders)
    with atomic_dir(pipeline_dir) as tmp:
        save_pipeline(pipeline, tmp)
    del pipeline, unet, text_encoders
    release(device)
    for dtype in ("fp16", "fp32"):
        path = config.output_dir / "checkpoints" / f"model-{dtype}.safetensors"
        added = added_tokens(config.training_method, config.num_vectors)
        checkpoints[dtype] = export_single_file(pipeline_dir, path, dtype, metadata, added)
    return pipeline_dir, checkpoints


def checkpoint_metadata(config: TrainConfig, step: int, family: str = "sd1") -> dict[str, str]:
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
        f"{layout.trained_for(step)} learning rate {config.learning_rate}"
    )
    if config.with_prior_preservation:
        description += f", with prior preservation of '{config.class_prompt}'"
    metadata = {
        "modelspec.title": layout.title(config.instance_prompt, step),
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
        # note: the built-in models are random weights of our own; every other model of a family is a fine-tune
        # of Stability's weights, whose licence requires passing its use restrictions on
        metadata["modelspec.license"] = FAMILIES[family].license
    return metadata


def export_single_file(
    pipeline_dir: Path,
    out_path: Path,
    dtype: str = "fp16",
    metadata: dict[str, str] | None = None,
    added_tokens: int = 0,
) -> Path:
    """Write the pipeline's UNet, VAE and text encoders as one .safetensors file in its family's original layout
    (without the last `added_tokens` token-embedding rows: see formats.single_file.original_layout).

    The header says what the file is (ModelSpec's layout keys, prediction type, a title) and carries `metadata`.
    """
    family = layout.folder_family(pipeline_dir)
    tensors = original_state_dict(
        _load_weights(pipeline_dir / "unet"),
        _read_json(pipeline_dir / "unet" / "config.json"),
        _load_weights(pipeline_dir / "vae"),
        _read_json(pipeline_dir / "vae" / "config.json"),
        *(_load_weights(pipeline_dir / folder) for folder in family.text_encoders),
        family=family,
        added_tokens=added_tokens,
    )
    cast = DTYPES[dtype]
    tensors = {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    scheduler = _read_json(pipeline_dir / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    header = {
        "format": "pt",
        **MODELSPEC_LAYOUT,
        "modelspec.architecture": layout.modelspec_architecture(family, prediction),
        "modelspec.title": out_path.stem,
        "modelspec.prediction_type": PREDICTION_TYPES.get(prediction, prediction),
        **(metadata or {}),
    }
    with atomic_file(out_path) as tmp:
        save_file(tensors, tmp, metadata=header)
    log.info("exported %d tensors (%s, %s) to %s", len(tensors), family.name, dtype, out_path)
    return out_path


def original_state_dict(
    unet: dict[str, torch.Tensor],
    unet_config: dict,
    vae: dict[str, torch.Tensor],
    vae_config: dict,
    *text_encoders: dict[str, torch.Tensor],
    family: FamilyInfo = FAMILIES["sd1"],
    added_tokens: int = 0,
) -> dict[str, torch.Tensor]:
    """Rename diffusers state dicts (the text encoders in `family`'s order; SD 1.x unless told) into one
    original-layout state dict. Tensors are shared (as views where reshaped or transposed), except concatenated ones.
    """
    weights = {"unet": unet, "vae": vae, **dict(zip(family.text_encoders, text_encoders, strict=True))}
    configs = {"unet": unet_config, "vae": vae_config}
    return {
        name: _made(source, [weights[component][key] for component, key in source.reads])
        for name, source in layout.original_layout(family, weights, configs, added_tokens).items()
    }


def _made(source: layout.Source, reads: list[torch.Tensor]) -> torch.Tensor:
    """One original-layout tensor from the diffusers tensors it reads (formats/single_file.py's Source)."""
    shape = source.shape([value.shape for value in reads])
    if source.transform == layout.POSITIONS:
        return torch.arange(shape[1]).view(shape)
    if source.transform == layout.TRANSPOSE:
        return reads[0].T
    if source.dropped_rows:
        return reads[0][: shape[0]]
    return (torch.cat(reads) if len(reads) > 1 else reads[0]).reshape(shape)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Read a model folder's safetensors weights, sharded or not."""
    state = {}
    for file in layout.weight_files(folder):
        state.update(load_file(file))
    return state


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _is_local_path(value: object) -> bool:
    """A path on this machine (or a tuple of them): meaningless to whoever downloads the file."""
    return isinstance(value, Path) or (isinstance(value, tuple) and any(isinstance(v, Path) for v in value))

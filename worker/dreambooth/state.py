"""The full training state on disk, so a run can resume exactly where it saved.

`<output_dir>/training-state/checkpoint-<step>/` holds the trained weights (`<name>.safetensors`:
unet, text_encoder, text_encoder_2), `trainer.pt` (optimizer, lr scheduler, EMA, gradient scaler, random generators)
and `state.json` (the step and what the run trained). Each folder is written to a temporary name and
renamed into place, so a crash mid-save leaves the previous state as the latest.
"""

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import STATE_DIR, TrainConfig
from .files import atomic_dir
from .trainees import Trainees

log = logging.getLogger(__name__)

_NAME = re.compile(r"checkpoint-(\d+)")


def state_root(output_dir: Path) -> Path:
    return output_dir / STATE_DIR


def saved_states(output_dir: Path) -> list[Path]:
    """The complete saved states, oldest step first."""
    root = state_root(output_dir)
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := _NAME.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def find_state(output_dir: Path, resume_from_checkpoint: str) -> Path | None:
    """The state to resume from: "latest" (None when there is none yet), a name under training-state/, or a path."""
    if resume_from_checkpoint == "latest":
        states = saved_states(output_dir)
        return states[-1] if states else None
    path = Path(resume_from_checkpoint)
    for candidate in (path, state_root(output_dir) / path):
        if (candidate / "state.json").is_file():
            return candidate
    raise FileNotFoundError(f"no saved training state at {resume_from_checkpoint!r}")


def save_state(
    output_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    trainer: dict,
    info: dict,
    total_limit: int | None,
) -> Path:
    """Write checkpoint-<step> atomically, then drop the oldest states beyond total_limit."""
    path = state_root(output_dir) / f"checkpoint-{step}"
    with atomic_dir(path) as tmp:
        for name, state in weights.items():
            save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp / f"{name}.safetensors")
        torch.save(trainer, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **info}, indent=2))
    stale = list(state_root(output_dir).glob(".*"))  # note: half-written states of a run that crashed mid-save
    if total_limit is not None:
        stale += saved_states(output_dir)[:-total_limit]
    for old in stale:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved training state at step %d to %s", step, path)
    return path


def load_state(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict]:
    """(info, weights by name, trainer state) of a saved state, tensors on the CPU."""
    info = json.loads((path / "state.json").read_text())
    weights = {file.stem: load_file(file) for file in path.glob("*.safetensors")}
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    return info, weights, trainer


# ---------------------------------------------------------------------- a run's state


# What a saved state records of the run, so a resume can refuse a state of a different kind of run.
RUN_KIND = (
    "base_model", "train_text_encoder", "use_ema", "training_method", "lora_rank", "pivotal_second_phase",
    "placeholder_token", "num_vectors", "textual_inversion_steps",
)  # fmt: skip
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")  # the trained text encoders' files, in order


def save_run(config: TrainConfig, run: Trainees, step: int, base_seed: int) -> Path:
    """Save the run at `step`: trained weights, optimizer, schedule, EMA, scaler and random generators."""
    unet, text_encoders = run.unwrapped()
    models = {"unet": unet, **dict(zip(TEXT_ENCODER_NAMES, text_encoders))}
    weights = {name: state for name, model in models.items() if (state := _trained_state(model, config))}
    scaler = run.accelerator.scaler
    trainer = {
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        # note: not order_gen: the batch order is replayed from the seed (see data.batch_order)
        "generators": {name: getattr(run, name).get_state() for name in ("data_gen", "noise_gen")},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    info = {
        "base_seed": base_seed,
        **{name: getattr(config, name) for name in RUN_KIND},
        "optimizer": type(run.optimizer.optimizer).__name__,
    }
    return save_state(config.output_dir, step, weights, trainer, info, config.checkpoints_total_limit)


def check_resumable(info: dict, config: TrainConfig) -> None:
    """Refuse a saved state of a different kind of run (its weights or moments would not fit)."""
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    for name in RUN_KIND:
        # note: states saved before a setting existed were saved with its default
        if info.get(name, defaults.get(name)) != getattr(config, name):
            raise ValueError(f"the saved training state has {name}={info[name]!r}, this run {getattr(config, name)!r}")


def restore_run(saved: tuple, run: Trainees, config: TrainConfig) -> int:
    """Load a saved state into the run; returns its step."""
    info, weights, trainer = saved
    unet, text_encoders = run.unwrapped()
    models = {"unet": unet, **dict(zip(TEXT_ENCODER_NAMES, text_encoders))}
    for name, model in models.items():
        if name in weights:
            # note: a partial state (LoRA adapters, pivotal tuning's embeddings) holds the trained tensors only
            model.load_state_dict(weights[name], strict=not _partly_trained(model, config))
    if info["optimizer"] == type(run.optimizer.optimizer).__name__:
        run.optimizer.load_state_dict(trainer["optimizer"])
    else:
        # note: memory_profile "auto" may pick another optimizer on another GPU; its moments then start afresh
        log.warning("saved optimizer %s differs from this run's; its state starts afresh", info["optimizer"])
    run.lr_scheduler.load_state_dict(trainer["lr_scheduler"])
    if run.ema is not None:
        run.ema.load_state_dict(trainer["ema"])
        run.ema.to(run.accelerator.device)
    if run.accelerator.scaler is not None and trainer["scaler"]:
        run.accelerator.scaler.load_state_dict(trainer["scaler"])
    for name, state in trainer["generators"].items():
        getattr(run, name).set_state(state)
    torch.set_rng_state(trainer["torch_rng"])
    if trainer["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    return info["step"]


def _trained_state(model: torch.nn.Module, config: TrainConfig) -> dict[str, torch.Tensor]:
    """What a saved training state must hold of a model: every weight, or only the trained tensors (a LoRA run's
    adapters, pivotal tuning's input embeddings); nothing of a frozen model."""
    if not _partly_trained(model, config):
        return model.state_dict()
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {key: value for key, value in model.state_dict().items() if key in trained}


def _partly_trained(model: torch.nn.Module, config: TrainConfig) -> bool:
    return config.adapter_method == "lora" or not all(p.requires_grad for p in model.parameters())

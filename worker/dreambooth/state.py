"""The full training state on disk, so a run can resume exactly where it saved.

`<output_dir>/training-state/checkpoint-<step>/` holds the trained weights (`<name>.safetensors`:
unet, text_encoder), `trainer.pt` (optimizer, lr scheduler, EMA, gradient scaler, random generators)
and `state.json` (the step and what the run trained). Each folder is written to a temporary name and
renamed into place, so a crash mid-save leaves the previous state as the latest.
"""

import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import STATE_DIR
from .files import atomic_dir

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

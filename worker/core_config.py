"""Training settings, as TrainingSettings validates and a job stores them, to the core's TrainConfig.

One mapping for the worker's jobs and the local `dreambooth train`, so both run the same settings alike.
"""

import dataclasses
import math
import shutil

from backend.settings import get_settings
from worker.dreambooth.config import STATE_DIR, TrainConfig

# Runs save their training state at least this often (in steps), so an interrupted run loses little.
MAX_CHECKPOINT_INTERVAL = 500


def core_config(settings: dict, **run) -> TrainConfig:
    """The core's configuration from validated settings (TrainingSettings.model_dump) and what only the run
    knows (photos, folders, resuming)."""
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    options = {key: value for key, value in settings.items() if key in known}
    total = options.get("max_train_steps", TrainConfig.max_train_steps)
    if options.get("training_method") == "pivotal":
        total += options.get("textual_inversion_steps", TrainConfig.textual_inversion_steps)
    options["checkpointing_steps"] = options.get("checkpointing_steps") or default_checkpointing_steps(total)
    # note: the training state is only for resuming an interrupted run, so the newest one is enough;
    # the user's checkpoints_total_limit bounds the kept weights of validation steps instead
    options["kept_steps_limit"] = options.get("checkpoints_total_limit")
    options["checkpoints_total_limit"] = 1
    scorer = get_settings().scorer_model
    return TrainConfig(**options, scorer_model=None if scorer == "none" else scorer, **run)


def default_checkpointing_steps(max_train_steps: int) -> int:
    """Save the training state every quarter of the run or every 500 steps, whichever is more often."""
    return max(1, min(MAX_CHECKPOINT_INTERVAL, math.ceil(max_train_steps / 4)))


def drop_training_state(config: TrainConfig) -> None:
    """Remove a finished run's saved training state: its outputs are whole, and the state (optimizer
    included) would only fill the disk."""
    shutil.rmtree(config.output_dir / STATE_DIR, ignore_errors=True)

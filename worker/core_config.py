"""Training settings, as TrainingSettings validates and a job stores them, to the core's TrainConfig.

One mapping for the worker's jobs and the local `dreambooth train`, so both run the same settings alike.
"""

import dataclasses
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps

from backend import storage
from backend.models import Photo
from backend.photo_checks import PhotoCheck, analyse, assess_photos
from backend.settings import get_settings
from formats.captions import caption_beside
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
    if options.get("crop") in ("center", "random"):
        # note: an explicit crop mode wins over center_crop (the setting `crop: auto` follows), as the stored
        # boxes and the page say
        options["center_crop"] = options["crop"] == "center"
    scorer = get_settings().scorer_model
    return TrainConfig(**options, scorer_model=None if scorer == "none" else scorer, **run)


def job_photos(photos: Sequence[Photo]) -> dict:
    """A job's photos as the core takes them: files, and each instance photo's stored crop box, caption and
    subject box (its largest detected face, which masked loss weighs towards)."""
    instance = [photo for photo in photos if photo.kind == "instance"]
    return {
        "instance_images": tuple(storage.resolve(photo.path) for photo in instance),
        "instance_crop_boxes": tuple(tuple(photo.crop_box) if photo.crop_box else None for photo in instance),
        # note: the user's caption wins over the captioning model's (worker/tasks.py writes auto_caption)
        "instance_captions": tuple(photo.caption or photo.auto_caption for photo in instance),
        "instance_subject_boxes": tuple(_largest_face(photo.checks) for photo in instance),
        "class_images": tuple(storage.resolve(photo.path) for photo in photos if photo.kind == "class"),
    }


def local_photos(settings: dict, paths: Sequence[Path]) -> tuple[dict, list[PhotoCheck]]:
    """Photos in a folder as the core takes them, checked as the server checks uploads (crop boxes, warnings),
    with kohya's captions: NAME.txt beside NAME.jpg."""
    captions = [caption_beside(path) for path in paths]
    facts = []
    for path in paths:
        with Image.open(path) as file:
            facts.append(analyse(ImageOps.exif_transpose(file).convert("RGB")))
    checks = assess_photos(facts, [path.name for path in paths], settings, captions)
    inputs = {
        "instance_images": tuple(paths),
        "instance_crop_boxes": tuple(check.crop_box for check in checks),
        "instance_captions": tuple(captions),
        "instance_subject_boxes": tuple(check.facts.faces[0] if check.facts.faces else None for check in checks),
    }
    return inputs, checks


def _largest_face(checks: dict | None) -> tuple[int, int, int, int] | None:
    """The largest face of a photo's stored checks (faces are stored largest first), or None."""
    found = (checks or {}).get("faces") or []
    return tuple(found[0]) if found else None


def default_checkpointing_steps(max_train_steps: int) -> int:
    """Save the training state every quarter of the run or every 500 steps, whichever is more often."""
    return max(1, min(MAX_CHECKPOINT_INTERVAL, math.ceil(max_train_steps / 4)))


def drop_training_state(config: TrainConfig) -> None:
    """Remove a finished run's saved training state: its outputs are whole, and the state (optimizer
    included) would only fill the disk."""
    shutil.rmtree(config.output_dir / STATE_DIR, ignore_errors=True)

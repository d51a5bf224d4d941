"""Automatic captions in the worker: the train task captions the photos their owner left uncaptioned, records the
captions on the photo rows (the job shows them) and trains on them. The real claim, lease and job service run on the
test database, and the real tiny BLIP captions; only the training core is replaced by a stand-in that keeps the
configuration it is given (the core's own test follows captions to the text encoder)."""

import json

import pytest

from backend import jobs
from backend.api.job_form import check_photos
from backend.api.job_view import job_out
from backend.images import ingest_photo
from backend.models import Job
from backend.settings import get_settings
from backend.training_settings import TrainingSettings
from worker import tasks
from worker.dreambooth.config import TrainConfig, TrainResult

COLORS = ("red", "green", "blue")
INSTANCE_PROMPT = "a photo of rufus toy"


@pytest.fixture
def job(db, user_factory, photo_bytes) -> Job:
    """Three photos under caption_mode instance_plus_auto_caption; the owner captioned the red one."""
    owner, _token = user_factory()
    settings = TrainingSettings(
        instance_prompt=INSTANCE_PROMPT, caption_mode="instance_plus_auto_caption", base_model="builtin:tiny"
    ).model_dump(mode="json")
    photos = [
        ingest_photo(photo_bytes(color=color), "photos", color, True, f"{color}.png") for color in COLORS
    ]  # fmt: skip
    checks = check_photos(photos, settings, json.dumps({"red.png": "a red square"}))
    return jobs.create_job(db, owner, settings, photos, checks=checks)


def keep_config(monkeypatch) -> list[TrainConfig]:
    """Replace the training core with one that keeps its configuration and stops at once."""
    configs: list[TrainConfig] = []

    def train(config, reporter) -> TrainResult:
        configs.append(config)
        return TrainResult(stopped=True, final_step=0, pipeline_dir=None, samples=(), checkpoints={})

    monkeypatch.setattr(tasks, "_train", train)
    return configs


def test_uncaptioned_photos_are_captioned_recorded_and_trained_on(db, job, monkeypatch):
    configs = keep_config(monkeypatch)
    tasks.run_training_job(job.id)
    db.refresh(job)
    red, green, blue = sorted((p for p in job.photos if p.kind == "instance"), key=lambda p: p.position)
    assert (red.caption, red.auto_caption) == ("a red square", None)  # the owner's caption wins
    assert green.caption is None and green.auto_caption and blue.auto_caption
    [config] = configs
    assert config.instance_captions == ("a red square", green.auto_caption, blue.auto_caption)
    assert config.photo_prompts == tuple(f"{INSTANCE_PROMPT}, {c}" for c in config.instance_captions)
    shown = job_out(job).photos
    assert [(p.caption, p.auto_caption) for p in shown] == [(c.caption, c.auto_caption) for c in (red, green, blue)]
    assert [p.prompt for p in shown] == list(config.photo_prompts)


def test_a_photo_already_captioned_is_not_captioned_again(db, job, monkeypatch):
    for photo in job.photos:
        photo.auto_caption = photo.auto_caption or (None if photo.caption else "from an earlier attempt")
    db.commit()
    configs = keep_config(monkeypatch)
    monkeypatch.setattr(get_settings(), "caption_model", "not/a-model")  # would fail if it were loaded
    tasks.run_training_job(job.id)
    db.refresh(job)
    assert job.error_code is None
    assert configs[0].instance_captions == ("a red square", "from an earlier attempt", "from an earlier attempt")


def test_a_captioning_model_that_cannot_load_fails_the_job_with_its_name(db, job, monkeypatch, tmp_path):
    keep_config(monkeypatch)
    # note: a folder with no model in it fails at once; a Hub id would first try the network (minutes here)
    broken = tmp_path / "no-such-captioner"
    broken.mkdir()
    monkeypatch.setattr(get_settings(), "caption_model", str(broken))
    tasks.run_training_job(job.id)
    db.refresh(job)
    assert (job.status, job.error_code) == ("failed", "caption_model_error")
    assert str(broken) in job.error_message


def test_auto_captions_are_refused_where_the_server_has_no_captioning_model(monkeypatch):
    monkeypatch.setattr(get_settings(), "caption_model", "none")
    with pytest.raises(ValueError, match="CAPTION_MODEL is none"):
        TrainingSettings(instance_prompt=INSTANCE_PROMPT, caption_mode="instance_plus_auto_caption")
    TrainingSettings(instance_prompt=INSTANCE_PROMPT, caption_mode="instance_plus_caption")

"""The worker glue: every REST setting reaches the core, a job resumes its saved state, errors become job errors."""

import dataclasses
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend import storage
from backend.models import Job, Photo
from backend.training_settings import TrainingSettings
from worker.core_config import default_checkpointing_steps
from worker.dreambooth.config import TrainConfig
from worker.tasks import JobError, _train, training_config

# note: settings the server decides itself, not the core
NOT_CORE = {"preset"}


def test_every_training_setting_is_a_core_option():
    settings = set(TrainingSettings.model_fields) - NOT_CORE
    assert settings <= {field.name for field in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    "field, value",
    [
        ("snr_gamma", 0),
        ("sample_batch_size", 0),
        ("memory_profile", "max"),
        ("adam_beta1", 1.0),
        ("checkpointing_steps", 0),
        ("text_encoder_lr", 1.0),
    ],
)
def test_out_of_range_settings_are_refused(field: str, value):
    with pytest.raises(ValueError, match=field):
        TrainingSettings(instance_prompt="a photo of sks dog", **{field: value})


def job_with(settings: dict, photo_kinds: tuple[str, ...]) -> Job:
    job_id = uuid.uuid4()
    photos = [
        Photo(
            kind=kind,
            position=i,
            path=f"jobs/{job_id.hex}/{kind}-photos/{i:04d}.png",
            width=64,
            height=64,
            sha256="0" * 64,
        )
        for i, kind in enumerate(photo_kinds)
    ]
    return Job(id=job_id, settings=settings, photos=photos)


def test_face_preset_reaches_the_core_with_class_photos_and_resume(data_dir: Path):
    settings = TrainingSettings(preset="face", instance_prompt="a photo of sks person", base_model="builtin:tiny")
    job = job_with(settings.model_dump(mode="json"), ("instance", "instance", "class"))
    config = training_config(job)
    assert config.with_prior_preservation and config.train_text_encoder
    assert (config.class_prompt, config.num_class_images, config.prior_loss_weight) == ("a photo of a person", 200, 1.0)
    assert (config.learning_rate, config.max_train_steps, config.train_batch_size) == (1e-6, 1200, 2)
    assert len(config.instance_images) == 2 and config.class_images == (storage.resolve(job.photos[2].path),)
    assert config.cache_dir == data_dir / "cache" and config.memory_profile == "auto"
    assert config.resume_from_checkpoint == "latest"
    assert (config.checkpointing_steps, config.checkpoints_total_limit) == (300, 1)


def test_user_checkpoint_settings_win():
    settings = TrainingSettings(
        instance_prompt="x", base_model="builtin:tiny", checkpointing_steps=7, checkpoints_total_limit=3
    )
    config = training_config(job_with(settings.model_dump(mode="json"), ("instance",)))
    # note: the user's limit bounds the kept validation weights; the resume state keeps the newest only
    assert (config.checkpointing_steps, config.kept_steps_limit, config.checkpoints_total_limit) == (7, 3, 1)


def test_default_checkpoints_every_quarter_or_500_steps():
    assert [default_checkpointing_steps(n) for n in (1, 3, 400, 1200, 2000, 20_000)] == [1, 1, 100, 300, 500, 500]


def test_a_new_attempt_keeps_only_the_saved_training_state_and_validation_outputs():
    settings = TrainingSettings(instance_prompt="x", base_model="builtin:tiny").model_dump(mode="json")
    job = job_with(settings, ("instance",))
    output = storage.job_dir(job.id) / "output"
    for stale in (
        "samples/400-0.png",
        "checkpoints/model-fp16.safetensors",
        "pipeline/model_index.json",
        "training-state/checkpoint-100/state.json",
        "steps/step-80/unet/config.json",
        "evaluation.json",
    ):
        (output / stale).parent.mkdir(parents=True, exist_ok=True)
        (output / stale).write_text("x")
    config = training_config(job)
    # note: the core itself drops the validation outputs after the resumed step (validate.forget_after)
    assert sorted(p.name for p in config.output_dir.iterdir()) == [
        "evaluation.json",
        "samples",
        "steps",
        "training-state",
    ]
    assert (output / "training-state" / "checkpoint-100" / "state.json").exists()


class FakeReporter:
    lease = SimpleNamespace(job_id=uuid.uuid4())

    def on_progress(self, progress) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def on_validation(self, validation) -> None:
        pass

    def on_memory_plan(self, plan) -> None:
        pass


def test_out_of_memory_fails_the_job_naming_the_settings_to_change(monkeypatch, make_config, tmp_path: Path):
    import torch

    import worker.dreambooth.train

    def run_out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(worker.dreambooth.train, "_train", run_out_of_memory)
    with pytest.raises(JobError) as raised:
        _train(make_config(tmp_path), FakeReporter())
    assert raised.value.code == "out_of_memory"
    assert raised.value.__context__ is None  # note: nothing keeps the failed run's tensors alive
    for setting in ("use_8bit_adam", "gradient_checkpointing", "mixed_precision", "train_batch_size", "lora"):
        assert setting in raised.value.message


def test_a_finished_job_drops_its_training_state(make_config, tmp_path: Path):
    config = make_config(tmp_path, max_train_steps=2, checkpointing_steps=1, validation_inference_steps=1)
    result = _train(config, FakeReporter())
    assert not result.stopped and result.memory_plan.profile == "cpu"
    assert not (tmp_path / "training-state").exists() and result.checkpoints["fp16"].exists()

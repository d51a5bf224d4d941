"""How the train task ends a job when the core runs out of time or the disk fails, and how it rides
out a database outage while recording the outcome. The real claim, reporter and finish run on the
test database; only the training core is replaced by a stand-in that writes a partial file."""

import errno
import time

import pytest
from sqlalchemy.exc import OperationalError

from backend import jobs, storage
from backend.images import ingest_photo
from backend.models import Job, User
from backend.settings import get_settings
from backend.training_settings import TrainingSettings
from worker import tasks
from worker.dreambooth.config import TrainResult


@pytest.fixture
def job(db, user_factory, photo_bytes) -> Job:
    owner, _token = user_factory()
    settings = TrainingSettings(instance_prompt="a photo of rufus dog").model_dump(mode="json")
    return jobs.create_job(db, owner, settings, [ingest_photo(photo_bytes(), "photos", "photo")])


def stand_in_core(monkeypatch, failure: OSError | None = None) -> None:
    """Replace the training core: write a partial file, then fail or train until told to stop."""

    def train(config, reporter) -> TrainResult:
        storage.write_atomic(config.output_dir / "training-state" / "partial.bin", b"half a model")
        if failure:
            raise failure
        while not reporter.should_stop():
            time.sleep(0.05)
        return TrainResult(stopped=True, final_step=1, pipeline_dir=None, samples=(), checkpoints={})

    monkeypatch.setattr(tasks, "_train", train)


def outputs_left(job: Job) -> list:
    folder = storage.job_dir(job.id)
    return [path for path in folder.rglob("*") if path.is_file() and "photos" not in path.parent.name]


def test_a_job_past_its_soft_time_limit_fails_with_timeout(db, job, monkeypatch):
    monkeypatch.setattr(get_settings(), "job_soft_time_limit_seconds", 1)
    stand_in_core(monkeypatch)
    started = time.monotonic()
    tasks.run_training_job(job.id)
    db.refresh(job)
    assert (job.status, job.error_code) == ("failed", "timeout") and "time limit" in job.error_message
    assert time.monotonic() - started < 10
    assert outputs_left(job) == [] and storage.resolve(job.photos[0].path).exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO])
def test_a_failing_disk_fails_the_job_with_storage_error_and_frees_its_space(db, job, monkeypatch, code):
    stand_in_core(monkeypatch, OSError(code, "write failed"))
    tasks.run_training_job(job.id)
    db.refresh(job)
    assert (job.status, job.error_code, job.artifacts) == ("failed", "storage_error", [])
    assert outputs_left(job) == [] and storage.resolve(job.photos[0].path).exists()


def test_the_outcome_is_recorded_once_the_database_is_back(db, job, monkeypatch):
    monkeypatch.setattr(get_settings(), "job_soft_time_limit_seconds", 1)
    stand_in_core(monkeypatch)
    real_finish = jobs.finish_job
    outage = [OperationalError("UPDATE jobs", {}, Exception("connection refused"))] * 2

    def finish_while_down(*args, **kwargs):
        if outage:
            raise outage.pop()
        real_finish(*args, **kwargs)

    monkeypatch.setattr(jobs, "finish_job", finish_while_down)
    tasks.run_training_job(job.id)
    db.refresh(job)
    assert outage == [] and (job.status, job.error_code) == ("failed", "timeout")


def test_a_job_deleted_while_it_trains_leaves_no_files(db, job, monkeypatch):
    owner = db.get(User, job.owner_id)

    def delete_meanwhile(config, reporter) -> TrainResult:
        jobs.delete_job(db, owner, job.id)
        storage.write_atomic(config.output_dir / "samples" / "late.png", b"written after the delete")
        while not reporter.should_stop():
            time.sleep(0.05)
        return TrainResult(stopped=True, final_step=1, pipeline_dir=None, samples=(), checkpoints={})

    monkeypatch.setattr(tasks, "_train", delete_meanwhile)
    tasks.run_training_job(job.id)
    assert not storage.job_dir(job.id).exists()

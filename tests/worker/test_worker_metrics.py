"""A real Celery worker process serves its own metrics (WORKER_METRICS_PORT) and writes JSON log lines
(LOG_FORMAT=json) that carry the job id: one tiny training job on builtin:tiny, then a scrape."""

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend import jobs, queue
from backend.images import ingest_photo
from backend.models import TERMINAL_STATUSES, Job
from backend.training_settings import TrainingSettings
from tests.e2e.stack import BIN, FAST_SETTINGS, REPO, base_env, free_port, photo_files

# note: fewer steps than the whole-stack tests: this checks what is measured, not what is trained
SETTINGS = {**FAST_SETTINGS, "max_train_steps": 6, "base_model": "builtin:tiny"}
SUCCEEDED = (("outcome", "succeeded"),)


@pytest.fixture
def worker(database_url, redis_url, data_dir, broker, tmp_path):
    """A Celery worker on the session's database, broker and DATA_DIR, serving metrics on a free port and
    logging JSON to its own stderr file; yields (metrics URL, stderr path)."""
    port = free_port()
    env = base_env(
        DATABASE_URL=database_url,
        BROKER_URL=redis_url,
        DATA_DIR=str(data_dir),
        DEMO_MODE="true",
        WORKER_METRICS_PORT=str(port),
        LOG_FORMAT="json",
    )
    stderr = tmp_path / "worker.stderr"
    command = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--pool", "solo", "--concurrency", "1"]
    with open(tmp_path / "worker.stdout", "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen([*command, "--hostname", "metrics@%h"], cwd=REPO, env=env, stdout=out, stderr=err)
    try:
        yield f"http://127.0.0.1:{port}/metrics", stderr
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def scrape(url: str, until=lambda metrics: True, timeout: float = 60) -> dict[tuple[str, tuple], float]:
    """The worker's metrics as {(sample name, sorted label pairs): value}, once it serves them and `until` holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            text = None
        metrics = text and {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        if metrics and until(metrics):
            return metrics
        assert time.monotonic() < deadline, f"the worker's metrics never showed what the test waits for: {text}"
        time.sleep(0.5)


def finished(db, job_id, stderr: Path, timeout: float = 300) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.expire_all()
        job = db.get(Job, job_id)
        if job.status in TERMINAL_STATUSES:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish:\n{stderr.read_text()[-4000:]}")


def test_a_job_is_measured_and_its_log_lines_carry_its_id(db, user_factory, worker):
    metrics_url, stderr = worker
    before = scrape(metrics_url)
    assert before["dreambooth_worker_jobs_processed_total", SUCCEEDED] == 0

    owner, _token = user_factory("metrics")
    photos = [ingest_photo(data, "photos", name) for name, (_, data, _type) in photo_files()]
    settings = TrainingSettings.model_validate(SETTINGS).model_dump(mode="json")
    job = jobs.create_job(db, owner, settings, photos)
    started = time.monotonic()
    queue.enqueue_training(str(job.id))
    job = finished(db, job.id, stderr)
    assert job.status == "succeeded", (job.error_code, job.error_message)
    # note: the worker observes the job just after it records the outcome the test saw
    metrics = scrape(metrics_url, until=lambda m: m["dreambooth_worker_jobs_processed_total", SUCCEEDED] == 1)
    took = time.monotonic() - started
    for outcome in ("failed", "cancelled", "lost"):
        assert metrics["dreambooth_worker_jobs_processed_total", (("outcome", outcome),)] == 0
    assert metrics["dreambooth_worker_job_duration_seconds_count", SUCCEEDED] == 1
    assert 0 < metrics["dreambooth_worker_job_duration_seconds_sum", SUCCEEDED] < took
    phases = {
        labels[0][1]: value
        for (name, labels), value in metrics.items()
        if name == "dreambooth_worker_phase_duration_seconds_count"
    }
    # note: no prior preservation, so no class images; one observation per phase, its stretches summed
    assert phases == {"preparing": 1, "training": 1, "sampling": 1, "exporting": 1}
    phase_seconds = sum(
        value for (name, _), value in metrics.items() if name == "dreambooth_worker_phase_duration_seconds_sum"
    )
    assert 0 < phase_seconds <= metrics["dreambooth_worker_job_duration_seconds_sum", SUCCEEDED]
    assert metrics["dreambooth_worker_training_steps_per_second", ()] > 0
    # note: a CPU worker never observes GPU memory: the series is absent, not 0
    assert not [name for name, _ in metrics if name == "dreambooth_worker_peak_gpu_memory_bytes"]

    # note: Celery warns about running as root (as tests may) before it sets up logging; every line after is JSON
    text = stderr.read_text().splitlines()
    first = next(index for index, line in enumerate(text) if line.startswith("{"))
    lines = [json.loads(line) for line in text[first:] if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    about_the_job = [line for line in lines if line.get("job_id") == str(job.id)]
    assert any(line["message"] == f"job {job.id}: attempt 1 started" for line in about_the_job)
    # note: the core knows nothing of jobs, yet its lines carry the id too
    assert any(line["logger"].startswith("worker.dreambooth") for line in about_the_job)
    assert any("serving on port" in line["message"] for line in lines)

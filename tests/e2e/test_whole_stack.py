"""The whole service as real processes: API, Celery workers, database, broker, builtin:tiny.

Once on Postgres + Redis with two workers (as production runs), once on the embedded default
that `make run` starts (SQLite for both, via `dreambooth serve`).
"""

import subprocess
import time
from pathlib import Path

import pytest

from backend.queue import GPU_QUEUE, TRAIN_TASK, make_celery
from backend.settings import Settings
from tests.e2e.stack import (
    BIN,
    FAST_SETTINGS,
    Client,
    Stack,
    base_env,
    free_port,
    running_stack,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory) -> Path:
    """A builtin:tiny folder whose configs let `from_single_file` rebuild the pipeline offline."""
    from worker.dreambooth.tiny import make_model

    return make_model(tmp_path_factory.mktemp("tiny") / "model", "tiny")


@pytest.fixture
def production_stack(database_url, redis_url, tmp_path, clean_db):
    """API + two workers on the test Postgres and Redis, like one machine of `docker compose up`."""
    with running_stack(database_url, redis_url, tmp_path, workers=("worker1", "worker2")) as stack:
        yield stack


def create_user(stack: Stack, name: str) -> str:
    """`dreambooth create-user` prints the new token as its last line."""
    output = subprocess.run(
        [str(BIN / "dreambooth"), "create-user", name], env=stack.env, capture_output=True, text=True, check=True
    )
    return output.stdout.strip().splitlines()[-1]


def check_succeeded_job(client: Client, job: dict, tiny_config_dir: Path, tmp_path: Path) -> None:
    """The job's samples and checkpoints download, and the checkpoint loads in diffusers."""
    from diffusers import StableDiffusionPipeline

    assert job["status"] == "succeeded", job
    assert job["progress"]["step"] == job["progress"]["total_steps"] == FAST_SETTINGS["max_train_steps"]
    samples = [a for a in job["artifacts"] if a["kind"] == "sample"]
    checkpoints = {a["dtype"]: a for a in job["artifacts"] if a["kind"] == "checkpoint"}
    # note: about five validation points across 30 steps, each sampling the instance prompt and 3 new contexts
    steps = [6, 12, 18, 24, 30]
    assert sorted({sample["step"] for sample in samples}) == steps and len(samples) == 4 * len(steps)
    first = [sample for sample in samples if sample["step"] == 6]
    assert first[0]["prompt"] == FAST_SETTINGS["instance_prompt"]
    assert [sample["seed"] for sample in first] == [7, 8, 9, 10]  # the job's seed onwards, at every step
    assert set(checkpoints) == {"fp16", "fp32"}
    assert job["kept_steps"] == steps
    assert len(job["loss_history"]) == FAST_SETTINGS["max_train_steps"]
    assert [score["step"] for score in job["evaluation"]["steps"]] == steps
    assert job["evaluation"]["recommended_step"] in steps and job["evaluation"]["reason"]
    assert job["memory_plan"] == {"profile": "cpu", "gpu_memory_gib": None, "changes": {}}  # no GPU here
    assert job["progress"]["loss"] is not None  # the last training loss outlives sampling and export

    image = client.http.get(samples[0]["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

    response = client.http.get(f"/api/jobs/{job['id']}/checkpoint")  # defaults: single file, fp16
    assert response.status_code == 200
    assert len(response.content) == checkpoints["fp16"]["size_bytes"]
    path = tmp_path / "downloaded.safetensors"
    path.write_bytes(response.content)
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny_config_dir))
    assert pipe.unet.config.layers_per_block == 2


def test_job_trains_on_postgres_and_redis_with_two_workers(production_stack, tiny_config_dir, tmp_path):
    client = Client(production_stack.url, create_user(production_stack, "alice"))
    job = client.submit(FAST_SETTINGS)
    assert job["status"] == "queued"
    # note: a second delivery of the same message (as after a redelivery) must not train twice.
    celery = make_celery(Settings(broker_url=production_stack.env["BROKER_URL"], database_url="sqlite://"))
    celery.send_task(TRAIN_TASK, args=[job["id"]], queue=GPU_QUEUE)

    job = client.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, production_stack)
    check_succeeded_job(client, job, tiny_config_dir, tmp_path)
    assert job["attempts"] == 1

    other = Client(production_stack.url, create_user(production_stack, "mallory"))
    assert other.http.get(f"/api/jobs/{job['id']}").status_code == 404
    assert other.http.get(f"/api/jobs/{job['id']}/checkpoint").status_code == 404


def test_running_job_stops_within_seconds_of_cancel(production_stack):
    client = Client(production_stack.url, create_user(production_stack, "bob"))
    job = client.submit({**FAST_SETTINGS, "max_train_steps": 20_000})
    deadline = time.monotonic() + 120
    while (progress := client.job(job["id"]))["progress"]["step"] == 0:
        assert time.monotonic() < deadline, production_stack.logs()
        time.sleep(0.3)
    assert client.http.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
    cancelled_at = time.monotonic()
    job = client.wait_for(job["id"], {"cancelled", "succeeded", "failed"}, production_stack, timeout=30)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - cancelled_at < 10
    assert job["progress"]["step"] < 20_000
    assert progress["status"] == "running"


def test_embedded_default_runs_a_job_with_sqlite_only(tmp_path, tiny_config_dir):
    """What `make run` starts: no Postgres, no Redis, a local user and token made on first start."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = base_env(DATA_DIR=str(data_dir), DATABASE_URL="", BROKER_URL="", PORT=str(port))
    env.pop("DEMO_MODE", None)  # decided by the machine: no GPU here, so demo mode
    (tmp_path / "logs").mkdir()
    stack = Stack(url=f"http://127.0.0.1:{port}", log_dir=tmp_path / "logs", env=env)
    stack.start("serve", str(BIN / "dreambooth"), "serve")
    try:
        stack.wait_ready(timeout=90)
        token = (data_dir / "local-token").read_text().strip()
        assert token in (stack.log_dir / "serve.log").read_text()
        client = Client(stack.url, token)
        assert client.http.get("/api/info").json()["demo_mode"] is True
        job = client.wait_for(client.submit(FAST_SETTINGS)["id"], {"succeeded", "failed", "cancelled"}, stack)
        check_succeeded_job(client, job, tiny_config_dir, tmp_path)
        assert (data_dir / "studio.db").exists() and (data_dir / "broker.db").exists()
    finally:
        stack.stop()

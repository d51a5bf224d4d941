"""Workers die, jobs live on: kill -9 mid-training, a job that kills every worker, cancel in every state.

(The same message delivered twice runs once: tests/e2e's two-worker test sends a duplicate.)
"""

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.stack import FAST_SETTINGS, Client, Stack
from tests.reliability.conftest import new_client, wait_until

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "cancelled"}
# Long enough to kill the worker midway; the training state is saved every quarter of the run.
LONG = {**FAST_SETTINGS, "max_train_steps": 40}


def reached(client: Client, job_id: str, predicate):
    def check():
        job = client.job(job_id)
        return job if predicate(job) else None

    return check


def kill(worker) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def job_files(stack: Stack, job_id: str) -> list[Path]:
    folder = Path(stack.env["DATA_DIR"]) / "jobs" / job_id.replace("-", "")
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_a_killed_workers_job_is_resumed_by_a_new_worker(make_stack):
    stack = make_stack()
    worker = stack.start_worker("worker1")
    client = new_client(stack, "alice")
    job = client.submit(LONG)

    past_first_save = reached(client, job["id"], lambda j: j["progress"]["step"] > 12)  # saved at step 10
    wait_until(past_first_save, stack, 180, "training to pass its first saved state")
    kill(worker)
    stack.start_worker("worker2")
    job = client.wait_for(job["id"], TERMINAL, stack, timeout=180)

    assert job["status"] == "succeeded", (job, stack.logs())
    assert job["attempts"] == 2 and job["error"] is None
    assert job["progress"]["step"] == LONG["max_train_steps"]
    samples = [a for a in job["artifacts"] if a["kind"] == "sample"]
    checkpoints = sorted(a["dtype"] for a in job["artifacts"] if a["kind"] == "checkpoint")
    # note: validation every 8 steps; what the first attempt recorded up to its saved state (step 10) stays,
    # what it recorded after is dropped and redone, so each validation step shows up exactly once
    steps = [8, 16, 24, 32, 40]
    assert sorted((a["step"], a["seed"]) for a in samples) == [(step, seed) for step in steps for seed in range(7, 11)]
    assert len({a["url"] for a in samples}) == len(samples) and checkpoints == ["fp16", "fp32"]
    assert sorted(a["step"] for a in job["artifacts"] if a["kind"] == "weights") == steps[:-1]
    assert job["kept_steps"] == steps and [s["step"] for s in job["evaluation"]["steps"]] == steps
    assert [point[0] for point in job["loss_history"]] == list(range(1, 41))
    assert len([a for a in job["artifacts"] if a["kind"] == "pipeline"]) == 1
    files = job_files(stack, job["id"])
    assert not [path for path in files if path.name.endswith(".tmp") or path.name.startswith(".")]
    assert len([path for path in files if path.suffix == ".safetensors" and "checkpoints" in path.parts]) <= 2
    for artifact in job["artifacts"]:
        assert client.http.get(artifact["url"]).status_code == 200
    assert "resuming from" in (stack.log_dir / "worker2.log").read_text()


def test_a_job_that_kills_every_worker_fails_as_worker_lost_after_max_attempts(make_stack):
    stack = make_stack()
    client = new_client(stack, "alice")
    job = client.submit(LONG)
    for attempt in (1, 2, 3):
        worker = stack.start_worker(f"worker{attempt}")
        wait_until(
            reached(client, job["id"], lambda j, n=attempt: j["attempts"] == n and j["status"] == "running"),
            stack,
            120,
            f"attempt {attempt} to start",
        )
        kill(worker)
    stack.start_worker("survivor")
    job = client.wait_for(job["id"], TERMINAL, stack, timeout=60)
    assert (job["status"], job["error"]["code"], job["attempts"]) == ("failed", "worker_lost", 3), job
    assert "3 times" in job["error"]["message"]
    time.sleep(5)  # more than a stale period and several reaper sweeps: no fourth attempt
    assert client.job(job["id"])["attempts"] == 3
    assert all("photos" in path.parent.name for path in job_files(stack, job["id"]))


def test_cancel_in_every_state(make_stack):
    stack = make_stack()
    client = new_client(stack, "alice")

    # queued, with no worker up: cancelled at once, and it never starts once a worker comes
    queued = client.submit(FAST_SETTINGS)
    assert client.http.post(f"/api/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    stack.start_worker("worker")
    running = client.submit(LONG)

    # running: stops within seconds and leaves no partial outputs
    wait_until(reached(client, running["id"], lambda j: j["progress"]["step"] >= 5), stack, 180, "training")
    client.http.post(f"/api/jobs/{running['id']}/cancel")
    cancelled_at = time.monotonic()
    running = client.wait_for(running["id"], TERMINAL, stack, timeout=30)
    assert running["status"] == "cancelled" and time.monotonic() - cancelled_at < 10
    assert all("photos" in path.parent.name for path in job_files(stack, running["id"]))

    # finished: a no-op that answers 202 with the job unchanged
    done = client.wait_for(client.submit(FAST_SETTINGS)["id"], TERMINAL, stack)
    again = client.http.post(f"/api/jobs/{done['id']}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "succeeded"
    assert again.json()["artifacts"] == done["artifacts"]

    queued = client.job(queued["id"])
    assert (queued["status"], queued["attempts"], queued["started_at"]) == ("cancelled", 0, None)

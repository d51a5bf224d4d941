"""Routing with real worker processes: a job too large for the live workers waits with `waiting_for_gpu`, the
small ones go on, and a worker that fits takes it when it comes.

A CPU has no GPU class of its own, so each worker says which queues it reads (WORKER_QUEUES), as a 24 GB and
an 80 GB worker would; backend/routing.py's tests check that the GPU's memory picks those same queues.
"""

import pytest

from backend.routing import WAITING_FOR_GPU, worker_queues
from tests.e2e.stack import FAST_SETTINGS
from tests.reliability.conftest import new_client, wait_until

pytestmark = pytest.mark.e2e

TERMINAL = {"succeeded", "failed", "cancelled"}
SMALL = {**FAST_SETTINGS, "max_train_steps": 4, "validation_steps": 4}
# note: SDXL full fine-tuning needs 30 GiB (formats/families.py), so it goes to the 48 GB class
LARGE = {**SMALL, "base_model": "builtin:tiny-sdxl", "training_method": "full"}


def queues(memory: float) -> str:
    return ",".join(worker_queues(memory))


def test_a_job_waits_for_a_gpu_that_fits_it_and_starts_when_one_comes(make_stack):
    stack = make_stack()
    env = stack.env
    stack.env = {**env, "WORKER_QUEUES": queues(23.6)}
    stack.start_worker("small")
    client = new_client(stack, "alice")
    wait_until(lambda: client.http.get("/api/info").json()["live_workers"] == 1, stack, 60, "the worker's record")

    large = client.submit(LARGE)
    small = client.submit(SMALL)
    assert (large["queue"], large["note"]) == ("gpu-48gb", WAITING_FOR_GPU)
    assert (small["queue"], small["note"]) == ("gpu-12gb", None)
    assert client.wait_for(small["id"], TERMINAL, stack)["status"] == "succeeded"
    job = client.job(large["id"])
    assert (job["status"], job["note"]) == ("queued", WAITING_FOR_GPU), "the small worker must never take it"

    stack.env = {**env, "WORKER_QUEUES": queues(79.2)}
    stack.start_worker("large")
    job = client.wait_for(large["id"], TERMINAL, stack)
    assert (job["status"], job["note"], job["attempts"]) == ("succeeded", None, 1), stack.logs()
    assert f"job {large['id']}: attempt" not in (stack.log_dir / "small.log").read_text(errors="replace")
    assert f"job {large['id']}: attempt 1 started" in (stack.log_dir / "large.log").read_text(errors="replace")

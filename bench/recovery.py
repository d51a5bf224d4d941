"""Recovery: how long a job whose worker is killed (`kill -9`) waits before another worker resumes it.

Starts its own stack at the default reliability settings (a fresh Postgres database on the local server, a
private redis-server, the API and two workers training builtin:tiny), then for each run submits a long job,
waits until it trains, kills the worker that holds it with SIGKILL, and times two moments from the kill:
the other worker claiming the job (its second attempt) and the job training again past the step it resumed
from. The killed worker is started again before the next run, so there are always two.

    .venv/bin/python -m bench.recovery --runs 3

Not part of `make test`; record what it prints in bench/RESULTS.md.
"""

import argparse
import json
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from bench.common import report_header
from bench.load import POSTGRES_URL, start_stack
from tests.e2e.stack import FAST_SETTINGS, Stack, photo_files

# Long enough to outlive a kill and a resume; saves its training state every 50 steps.
JOB_SETTINGS = {**FAST_SETTINGS, "max_train_steps": 3000, "checkpointing_steps": 50, "validation_steps": 3000}
WORKERS = ("worker1", "worker2")


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def holder(stack: Stack, job_id: str, attempt: int) -> str:
    """The worker whose log says it started this attempt of the job."""
    line = f"job {job_id}: attempt {attempt} started"
    return next(name for name in WORKERS if line in (stack.log_dir / f"{name}.log").read_text(errors="replace"))


def one_run(stack: Stack, http: httpx.Client, workers: dict[str, subprocess.Popen]) -> tuple[float, float]:
    """Seconds from the kill to the second attempt's claim, and to training past the resumed step."""
    response = http.post("/api/jobs", files=photo_files(), data={"settings": json.dumps(JOB_SETTINGS)})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    job = lambda: http.get(f"/api/jobs/{job_id}").json()
    wait(lambda: (j := job())["phase"] == "training" and j["progress"]["step"] > 60, 300, "training past a save")
    name = wait(lambda: holder(stack, job_id, 1), 10, "the first attempt's log line")
    workers[name].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    workers[name].wait()
    step_at_kill = job()["progress"]["step"]

    wait(lambda: job()["attempts"] == 2, 600, "the second attempt")
    claimed = time.monotonic() - killed_at
    # note: it resumes from the last save (a multiple of 50 at or below the step at the kill)
    resumed_from = step_at_kill - step_at_kill % JOB_SETTINGS["checkpointing_steps"]
    wait(lambda: (j := job())["phase"] == "training" and j["progress"]["step"] > resumed_from, 300, "training again")
    training = time.monotonic() - killed_at

    http.post(f"/api/jobs/{job_id}/cancel")
    wait(lambda: job()["status"] == "cancelled", 120, "the cancel")
    stack.processes.remove(workers[name])
    workers[name] = stack.start_worker(name)  # note: back to two workers for the next run
    return claimed, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dbs-recovery-"))
    # note: INFO logs, which name the worker that started each attempt
    stack, token, redis, database = start_stack(work, workers=WORKERS, LOG_LEVEL="INFO")
    workers = dict(zip(WORKERS, stack.processes[1:]))
    results = []
    try:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for run in range(args.runs):
                results.append(one_run(stack, http, workers))
                print(f"run {run + 1}: claimed {results[-1][0]:.1f} s, training again {results[-1][1]:.1f} s after")
    finally:
        stack.stop()
        redis.terminate()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print("\n".join(report_header("bench.recovery", "cpu", None)))
    claimed, training = zip(*results)
    print(
        f"- kill -9 to the next attempt's claim: median {statistics.median(claimed):.1f} s, "
        f"max {max(claimed):.1f} s; to training again: median {statistics.median(training):.1f} s, "
        f"max {max(training):.1f} s ({args.runs} runs)"
    )


if __name__ == "__main__":
    main()

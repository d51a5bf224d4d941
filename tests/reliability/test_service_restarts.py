"""The broker and the database restart while a job trains, and the database goes down while a
generation renders: the work still ends, nothing stays running.

Both run as private servers of this test (a redis-server and a throwaway Postgres cluster on free
ports), so restarting them disturbs nobody else.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import psycopg
import pytest

from alembic import command
from tests.e2e.stack import FAST_SETTINGS, Client, free_port
from tests.reliability.conftest import new_client, wait_until

pytestmark = pytest.mark.e2e

LONG = {**FAST_SETTINGS, "max_train_steps": 40}
TERMINAL = {"succeeded", "failed", "cancelled"}


class PostgresCluster:
    """A throwaway Postgres cluster (postgres refuses to run as root, so root runs it as `postgres`)."""

    def __init__(self):
        self.bin = Path(sorted(glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="dbs-pg-"))
        self.port = free_port()
        self.url = f"postgresql://root@127.0.0.1:{self.port}/postgres"
        self.as_owner = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bin / tool), *args], check=True, capture_output=True)

    def init(self) -> None:
        self.run("initdb", "-D", str(self.folder / "data"), "-U", "root", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(
            "pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgres_cluster(alembic_config) -> Iterator[PostgresCluster]:
    if not glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("no Postgres server binaries to make a throwaway cluster")
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        command.upgrade(alembic_config(cluster.url.replace("postgresql://", "postgresql+psycopg://")), "head")
        yield cluster
    finally:
        cluster.remove()


def test_jobs_survive_broker_and_database_restarts(make_stack, redis_server, postgres_cluster):
    stack = make_stack(DATABASE_URL=postgres_cluster.url)
    stack.start_worker("worker")
    client = new_client(stack, "alice")
    job = client.submit(LONG)
    wait_until(lambda: client.job(job["id"])["progress"]["step"] >= 5, stack, 180, "training")

    # The broker crashes, losing every message; a job submitted meanwhile is kept queued.
    redis_server.stop()
    while_down = client.submit(FAST_SETTINGS)
    assert while_down["status"] == "queued"
    redis_server.start()

    # The database goes away for two seconds mid-training.
    postgres_cluster.stop()
    time.sleep(2)
    postgres_cluster.start()

    for job_id in (job["id"], while_down["id"]):
        done = client.wait_for(job_id, TERMINAL, stack, timeout=180)
        assert (done["status"], done["attempts"]) == ("succeeded", 1), (done, stack.logs())


def generation_row(cluster: PostgresCluster, generation_id: str) -> tuple[str, int]:
    """The generation's (status, attempts), read from the database itself."""
    with psycopg.connect(cluster.url) as connection:
        return connection.execute("SELECT status, attempts FROM generations WHERE id = %s", (generation_id,)).fetchone()


def finished_generation(client: Client, generation_id: str):
    def check():
        generation = client.http.get(f"/api/generations/{generation_id}").json()
        return generation if generation["status"] in ("succeeded", "failed") else None

    return check


def test_a_generation_finishes_through_a_database_outage(make_stack, postgres_cluster):
    stack = make_stack(DATABASE_URL=postgres_cluster.url)
    worker = stack.start_worker("worker")
    client = new_client(stack, "alice")
    job = client.wait_for(client.submit({**FAST_SETTINGS, "max_train_steps": 8})["id"], TERMINAL, stack)
    assert job["status"] == "succeeded", stack.logs()
    render = {"prompt": "a photo of rufus toy on the moon", "num_inference_steps": 20, "num_images": 2, "seed": 3}
    generation = client.http.post(f"/api/jobs/{job['id']}/generations", json=render).json()

    # The worker is paused the moment it starts rendering, so the database is down before it can finish.
    worker_log = stack.log_dir / "worker.log"
    rendering = f"generation {generation['id']}: loaded the model from disk"
    deadline = time.monotonic() + 60
    while rendering not in worker_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the generation did not start rendering:\n{stack.logs()}"
        time.sleep(0.01)
    worker.send_signal(signal.SIGSTOP)
    postgres_cluster.stop()
    worker.send_signal(signal.SIGCONT)
    retrying = f"generation {generation['id']}: could not record succeeded"
    wait_until(lambda: retrying in worker_log.read_text(errors="replace"), stack, 300, "the finish to meet the outage")
    postgres_cluster.start()

    done = wait_until(finished_generation(client, generation["id"]), stack, 120, "the generation to finish")
    assert done["status"] == "succeeded" and len(done["images"]) == 2, (done, stack.logs())
    assert generation_row(postgres_cluster, generation["id"]) == ("succeeded", 1)
    for image in done["images"]:
        assert client.http.get(image["url"]).status_code == 200

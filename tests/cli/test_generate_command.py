"""`dreambooth generate` against a running API and worker: submit, wait, download the PNGs, print their paths."""

from pathlib import Path

import pytest
from PIL import Image

from tests.cli.test_client_commands import dreambooth, photo_folder, submit

pytestmark = pytest.mark.e2e

STEPS = 8


def test_generate_saves_the_images_and_prints_their_paths(stack, user_factory, tmp_path):
    _user, token = user_factory("alice")
    job_id = submit(stack, token, photo_folder(tmp_path / "photos"), max_train_steps=STEPS)
    assert dreambooth(stack, token, "watch", job_id).returncode == 0

    options = ["--prompt", "rufus toy on the moon", "--scheduler", "euler_a", "--steps", "2"]
    options += ["--num-images", "2", "--seed", "5"]
    result = dreambooth(stack, token, "generate", job_id, *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"2 images at step {STEPS}, euler_a 2 steps, seed 5" in result.stderr
    paths = [tmp_path / line for line in result.stdout.splitlines()]
    assert [(path.parent.name, path.name.split("-", 1)[1]) for path in paths] == [
        (f"{job_id[:8]}-generations", "0-seed5.png"),
        (f"{job_id[:8]}-generations", "1-seed6.png"),
    ]
    for path in paths:
        with Image.open(path) as png:
            assert (png.format, png.size) == ("PNG", (64, 64))

    again = dreambooth(stack, token, "generate", job_id, *options, "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert [Path(line).read_bytes() for line in again.stdout.splitlines()] == [path.read_bytes() for path in paths]


def test_generate_errors_are_one_line_with_exit_code_2(stack, user_factory, tmp_path):
    _user, token = user_factory("bob")
    job_id = submit(stack, token, photo_folder(tmp_path / "photos"), max_train_steps=20_000)
    running = dreambooth(stack, token, "generate", job_id, "--prompt", "rufus", cwd=tmp_path)
    assert (running.returncode, running.stderr.count("\n")) == (2, 1)
    assert running.stderr.endswith("images can be generated once it has succeeded\n")
    assert dreambooth(stack, token, "cancel", job_id).returncode == 0

    too_many = dreambooth(stack, token, "generate", job_id, "--prompt", "rufus", "--num-images", "9", cwd=tmp_path)
    assert (too_many.returncode, too_many.stderr) == (2, "error: num_images: Input should be less than or equal to 8\n")
    assert dreambooth(stack, token, "watch", job_id).returncode == 1
    assert not list(tmp_path.glob("*-generations"))

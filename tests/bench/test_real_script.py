"""bench/real_script.py without diffusers' script: the step clock, the speed measure, the torchvision stand-in,
the command lines and the report. A test that needs bench/vendor/train_dreambooth.py (scripts/get-train-dreambooth)
is skipped without it."""

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import real_script
from bench import torchvision_stand_in as tv
from bench.common import REPO
from bench.step_clock import steps_per_second

PHASES = """
import json, sys, time
import torch

def run(optimizer, model, steps):
    for _ in range(steps):
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

marks = [time.perf_counter()]
model = torch.nn.Linear(4, 4)
run(torch.optim.AdamW(model.parameters(), fused=True), model, 3)
marks.append(time.perf_counter())
run(torch.optim.AdamW(model.parameters(), foreach=False), model, 2)
marks.append(time.perf_counter())

from accelerate import Accelerator

accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
model, optimizer = accelerator.prepare(torch.nn.Linear(4, 4), torch.optim.AdamW(torch.nn.Linear(4, 4).parameters()))
for _ in range(6):
    with accelerator.accumulate(model):
        accelerator.backward(model(torch.ones(2, 4)).sum())
        optimizer.step()
        optimizer.zero_grad()
marks.append(time.perf_counter())
print("MARKS", json.dumps(marks))
sys.exit(int(sys.argv[1]))
"""


def clocked(tmp_path: Path, arguments: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "steps.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.step_clock", *arguments],
        env={**os.environ, "PYTHONPATH": str(REPO), "STEP_CLOCK_FILE": str(out), **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, json.loads(out.read_text())


def test_step_clock_records_every_optimizer_step(tmp_path):
    """One timestamp per step of a fused AdamW and a plain one, and per synced step under accelerate's gradient
    accumulation (its wrapper steps the optimizer on every second micro-step only); the file is written and the
    exit code kept when the program calls sys.exit."""
    script = tmp_path / "phases.py"
    script.write_text(PHASES)
    done, clock = clocked(tmp_path, [str(script), "3"])
    assert done.returncode == 3, done.stderr
    marks = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("MARKS")).split(" ", 1)[1])
    counts = [sum(start < t < end for t in clock["steps"]) for start, end in itertools.pairwise(marks)]
    assert counts == [3, 2, 3]
    assert len(clock["steps"]) == 8 and clock["steps"] == sorted(clock["steps"])
    assert clock["started"] < marks[0]
    assert clock["optimizers"] == ["torch.optim.adamw.AdamW"]
    assert clock["error"] == "SystemExit(3)"


def test_step_clock_runs_a_module_as_main(tmp_path):
    package = tmp_path / "mods"
    package.mkdir()
    (package / "trainer.py").write_text(
        textwrap.dedent(
            """
            import sys
            import torch

            if __name__ == "__main__":
                assert sys.argv[1:] == ["--steps", "4"], sys.argv
                weight = torch.nn.Parameter(torch.ones(3))
                optimizer = torch.optim.SGD([weight], lr=0.1)
                for _ in range(int(sys.argv[2])):
                    weight.sum().backward()
                    optimizer.step()
            """
        )
    )
    done, clock = clocked(tmp_path, ["-m", "trainer", "--steps", "4"], {"PYTHONPATH": f"{REPO}{os.pathsep}{package}"})
    assert done.returncode == 0, done.stderr
    assert len(clock["steps"]) == 4 and "error" not in clock
    assert clock["optimizers"] == ["torch.optim.sgd.SGD"]


def test_steps_per_second_is_the_median_interval_after_the_warmup():
    times = [0.0, 5.0, 6.0, 6.5, 7.0, 7.5, 20.0, 20.5, 21.0]
    # note: after 2 warm-up steps the intervals are 0.5 (x4), 13 and 0.5 (x2): a pause does not count
    assert steps_per_second(times, 2) == pytest.approx(2.0)
    assert steps_per_second(times, 0) == pytest.approx(2.0)
    assert steps_per_second([0.0, 1.0, 3.0], 0) == pytest.approx(1 / 1.5)
    assert steps_per_second([0.0, 1.0], 1) is None


# ---------------------------------------------------------------------- the torchvision stand-in


def photo(width: int, height: int) -> Image.Image:
    pixels = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    return Image.fromarray(pixels, "RGB")


def test_to_tensor_and_normalize():
    image = photo(3, 2)
    tensor = tv.ToTensor()(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.equal(tensor, expected)
    assert tv.ToTensor()(Image.new("RGB", (4, 4), "white")).max() == 1.0
    assert tv.ToTensor()(Image.new("RGB", (4, 4), "black")).min() == 0.0
    normalized = tv.Normalize([0.5], [0.5])(tensor)
    assert torch.allclose(normalized, tensor * 2 - 1)
    assert torch.equal(tensor, expected)  # note: out of place
    per_channel = tv.Normalize([0.0, 0.5, 1.0], [1.0, 2.0, 4.0])(tensor)
    assert torch.allclose(per_channel[1], (tensor[1] - 0.5) / 2) and torch.allclose(per_channel[2], (tensor[2] - 1) / 4)


def test_resize_matches_the_shorter_side_with_pils_bilinear_filter():
    resize = tv.Resize(64, interpolation=tv.InterpolationMode.BILINEAR)
    image = photo(160, 128)
    resized = resize(image)
    assert resized.size == (80, 64)
    assert np.array_equal(np.asarray(resized), np.asarray(image.resize((80, 64), Image.Resampling.BILINEAR)))
    assert tv.Resize(50)(photo(100, 200)).size == (50, 100)
    assert tv.Resize(3)(photo(7, 5)).size == (4, 3)  # note: the longer side is truncated, int(3 * 7 / 5)
    assert tv.Resize(128)(image) is image  # note: as torchvision, no resampling when the size is right


def test_center_and_random_crops():
    image = photo(161, 128)
    assert tv.CenterCrop(128).box(161, 128) == (16, 0, 144, 128)  # note: round(16.5) is 16, as in torchvision
    assert tv.CenterCrop((64, 100)).box(160, 128) == (30, 32, 130, 96)
    assert np.array_equal(np.asarray(tv.CenterCrop(128)(image)), np.asarray(image.crop((16, 0, 144, 128))))

    torch.manual_seed(0)
    cropped = tv.RandomCrop(128)(image)
    torch.manual_seed(0)
    top = torch.randint(0, 1, size=(1,)).item()
    left = torch.randint(0, 161 - 128 + 1, size=(1,)).item()
    assert cropped.size == (128, 128)
    assert np.array_equal(np.asarray(cropped), np.asarray(image.crop((left, top, left + 128, top + 128))))
    assert tv.RandomCrop(128).origin(128, 128) == (0, 0)
    with pytest.raises(ValueError):
        tv.RandomCrop(128)(photo(100, 128))


def test_the_scripts_pipeline():
    """Compose as DreamBoothDataset builds it: a 3:2 photo to a normalized square tensor in [-1, 1]."""
    transform = tv.Compose(
        [
            tv.Resize(32, interpolation=tv.InterpolationMode.BILINEAR),
            tv.RandomCrop(32),
            tv.ToTensor(),
            tv.Normalize([0.5], [0.5]),
        ]
    )
    tensor = transform(photo(90, 60))
    assert tensor.shape == (3, 32, 32)
    assert tensor.min() >= -1 and tensor.max() <= 1


def test_the_stand_in_matches_torchvision():
    transforms = pytest.importorskip("torchvision.transforms")
    image = photo(157, 120)
    for ours, theirs in [
        (tv.Resize(64), transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR)),
        (tv.CenterCrop(100), transforms.CenterCrop(100)),
    ]:
        assert np.array_equal(np.asarray(ours(image)), np.asarray(theirs(image)))
    assert torch.equal(tv.ToTensor()(image), transforms.ToTensor()(image))
    torch.manual_seed(3)
    mine = tv.RandomCrop(100)(image)
    torch.manual_seed(3)
    assert np.array_equal(np.asarray(mine), np.asarray(transforms.RandomCrop(100)(image)))


def test_as_torchvision_it_keeps_transformers_from_seeing_it(tmp_path):
    """With the stand-in on the path as torchvision (as scripts/get-train-dreambooth lays it out), the script's import
    works and transformers still knows torchvision is not installed (else it imports torchvision.transforms.v2)."""
    shim = tmp_path / "shim" / "torchvision"
    (shim / "transforms").mkdir(parents=True)
    shutil.copy(REPO / "bench" / "torchvision_stand_in.py", shim / "transforms" / "__init__.py")
    (shim / "__init__.py").write_text("from . import transforms  # noqa: F401\n")
    probe = (
        "import transformers\n"
        "from torchvision import transforms\n"
        "from transformers.utils import import_utils\n"
        "import transformers.image_utils\n"
        "print(transforms.__name__, import_utils.is_torchvision_available())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "shim")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["torchvision.transforms", "False"]


# ---------------------------------------------------------------------- command lines and report


def bench_args(**overrides) -> argparse.Namespace:
    values = dict(
        device="cpu", threads=None, work_dir=Path("/tmp/rs"), pairs=2, steps=100, warmup=5, size=None,
        resolution=None, batch_size=None, mixed_precision=None, center_crop=False, checkpointing_steps=500,
        photo_side=None, score=False, json=None,
    )  # fmt: skip
    args = argparse.Namespace(**{**values, **overrides})
    real_script.resolve_defaults(args)
    return args


def test_defaults_by_device():
    cpu = bench_args()
    assert (cpu.size, cpu.resolution, cpu.batch_size, cpu.mixed_precision) == ("small", 128, 2, "no")
    cuda = bench_args(device="cuda")
    assert (cuda.size, cuda.resolution, cuda.batch_size, cuda.mixed_precision) == ("full", 512, 1, "fp16")


def test_our_command_line_parses_with_the_same_settings():
    from worker.cli import build_parser

    args = bench_args(steps=20)
    command = real_script.ours_command(args, Path("/m"), Path("/p"), Path("/o"))
    assert command[:3] == ["-m", "worker.cli", "train"]
    parsed = build_parser().parse_args(command[2:])
    assert (parsed.max_train_steps, parsed.train_batch_size, parsed.resolution) == (20, 2, 128)
    assert (parsed.learning_rate, parsed.seed, parsed.center_crop, parsed.mixed_precision) == (2e-6, 0, False, "no")
    assert (parsed.validation_steps, parsed.num_validation_images, parsed.validation_inference_steps) == (20, 4, 25)
    assert parsed.validation_prompts == [real_script.INSTANCE_PROMPT]
    assert (parsed.validation_scheduler, parsed.memory_profile, parsed.checkpointing_steps) == ("dpmpp_2m", "none", 500)
    assert parsed.train_text_encoder is False and parsed.with_prior_preservation is False


def test_script_command_line():
    command = real_script.script_command(bench_args(steps=20), Path("/m"), Path("/p"), Path("/o"))
    options = dict(zip(command[1::2], command[2::2]))
    assert command[0] == str(real_script.SCRIPT)
    assert options["--max_train_steps"] == options["--validation_steps"] == "20"
    assert options["--num_validation_images"] == "4" and options["--mixed_precision"] == "no"
    assert "--center_crop" not in command
    assert "--center_crop" in real_script.script_command(
        bench_args(center_crop=True), Path("/m"), Path("/p"), Path("/o")
    )


@pytest.mark.skipif(not real_script.SCRIPT.exists(), reason="no bench/vendor/train_dreambooth.py")
def test_the_script_knows_every_flag_given():
    text = real_script.SCRIPT.read_text()
    flags = {item for item in real_script.script_command(bench_args(center_crop=True), Path("/m"), Path("/p"),
                                                         Path("/o")) if item.startswith("--")}  # fmt: skip
    assert {flag for flag in flags if f'"{flag}"' not in text} == set()
    assert re.search(r"num_inference_steps=25", text), "log_validation's sampling steps changed"


def test_images_trained():
    assert real_script.images_trained(100, 5, 2, wraps=True) == 200
    # note: 3 batches (2, 2, 1) per epoch of 5 photos: 33 epochs, then one batch of 2
    assert real_script.images_trained(100, 5, 2, wraps=False) == 167
    assert real_script.images_trained(20, 4, 2, wraps=False) == 40


class Usage:
    def __init__(self, maxrss_kib: int, cpu: float):
        self.ru_maxrss, self.ru_utime, self.ru_stime = maxrss_kib, cpu, 0.5


def test_measurements_and_report():
    clock = {"started": 100.5, "steps": [110.0 + 0.5 * i for i in range(10)], "optimizers": ["AdamW"]}
    run = real_script.measurements(clock, 100.0, 130.0, Usage(2048 * 1024, 20.0), warmup=2)
    assert run["wall_s"] == 30.0 and run["steps"] == 10 and run["steps_per_s"] == pytest.approx(2.0)
    assert (run["to_first_step_s"], run["training_s"], run["after_last_step_s"]) == (10.0, 4.5, 15.5)
    assert run["peak_rss_mb"] == 2048 and run["cpu_s"] == 20.5
    slower = {**run, "wall_s": 60.0, "steps_per_s": 1.0, "peak_rss_mb": 1024.0}
    pairs = [{"ours": {**run, "order": 1}, "script": {**slower, "order": 2}},
             {"ours": {**run, "order": 2}, "script": {**slower, "order": 1}}]  # fmt: skip
    summed = real_script.summary(pairs)
    assert summed["wall_s"] == {"ours": 30.0, "script": 60.0, "ours_over_script": 0.5}
    assert summed["steps_per_s"]["ours_over_script"] == pytest.approx(2.0)
    assert "peak_cuda_mb" not in summed

    args = bench_args()
    saved = {"ours": {"pipeline/": 166.6, "checkpoints/": 249.9}, "script": {"unet/": 133.5}}
    text = real_script.report(args, pairs, summed, saved, shim=True)
    assert "| 1 | ours | 30.0 | 10.0 | 4.5 | 15.5 | 2.000 | 20.5 | 2048 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 |")]
    assert [row.split(" | ")[1] for row in rows] == ["script", "ours"]  # note: in the order they ran
    assert "| whole job s | 30.0 | 60.0 | 0.50 | 2.00x |" in text
    assert "| steps/s | 2.000 | 1.000 | 2.00 | 2.00x |" in text
    assert "| peak RSS MiB | 2048 | 1024 | 2.00 | - |" in text
    assert "- ours: pipeline/ 166.6, checkpoints/ 249.9" in text
    assert "its 100 steps see 167 photos, ours 200" in text
    assert "the stand-in bench/torchvision_stand_in.py" in text

"""What the benchmarks share: machine facts, memory readers, the built-in models, and child processes.

Every benchmark measures in fresh child processes (so a peak is its own) and runs as a module from the
repository root: `python -m bench.NAME`.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "
DEFAULT_WORK_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "dreambooth-bench"
SIZES = ("tiny", "small", "full")


# ---------------------------------------------------------------------- machine and time


def machine(device: str, threads: int | None = None) -> str:
    """The GPU's name, or the CPU's model and cores (and the torch threads per run)."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
        platform.processor(),
    )
    if threads is None:
        return f"{model}, {os.cpu_count()} cores"
    return f"{model}, {os.cpu_count()} cores ({threads} torch thread{'s' if threads != 1 else ''} per run)"


def utc_now() -> str:
    return f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"


def command_line(module: str) -> str:
    """How this run was started, as a reader would type it."""
    return " ".join(["python -m", module, *sys.argv[1:]])


def report_header(module: str, device: str, threads: int | None) -> list[str]:
    """A benchmark report's first lines: the machine, the date and the command that made it."""
    return [f"- machine: {machine(device, threads)}", f"- date: {utc_now()}", f"- command: `{command_line(module)}`"]


# ---------------------------------------------------------------------- memory


def peak_memory_mb(device: str) -> float:
    """torch.cuda.max_memory_allocated on CUDA; the process's peak RSS on the CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_now_mb(device: str) -> float:
    """torch.cuda.memory_allocated on CUDA; the process's RSS on the CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.memory_allocated() / 2**20
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------- models and photos


def builtin_model(work_dir: Path, size: str) -> Path:
    """The builtin model of `size` in the work folder, generated on first use."""
    from worker.dreambooth.components import resolve_base_model

    work_dir.mkdir(parents=True, exist_ok=True)
    return Path(resolve_base_model(f"builtin:{size}", work_dir))


PHOTO_COLOURS = ("red", "green", "blue", "orange", "purple", "yellow", "cyan", "magenta")


def drawn_photos(folder: Path, side: int, aspect: float = 1.0, count: int = 4) -> tuple[Path, ...]:
    """`count` photos (four unless said; at most eight) of coloured ellipses, `side` px high and `aspect` times as
    wide."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, colour in enumerate(PHOTO_COLOURS[:count]):
        image = Image.new("RGB", (round(side * aspect), side), "white")
        ImageDraw.Draw(image).ellipse((8 + 8 * index, 10, side - 10, side - 8 - 2 * index), fill=colour)
        paths.append(folder / f"{index}.png")
        image.save(paths[-1])
    return tuple(paths)


def timed_core_steps(work: Path, model: Path, steps: int, output: str, **settings) -> list[float]:
    """Run the real training loop on `model` for `steps` training steps and stop (before sampling and
    export); the seconds each step took. Four drawn photos; `settings` are TrainConfig fields."""
    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.train import train

    photos = drawn_photos(work / f"{output}-photos", settings["resolution"])
    times: list[float] = []
    last = [time.perf_counter()]

    def on_progress(progress) -> None:
        if progress.phase == "training":
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

    config = TrainConfig(
        base_model=str(model),
        instance_images=photos,
        instance_prompt="a photo of sks toy",
        output_dir=work / output,
        models_dir=work,
        center_crop=True,
        max_train_steps=steps + 1,
        seed=0,
        memory_profile="none",
        checkpointing_steps=None,
        validation_steps=10**6,
        **settings,
    )
    train(config, on_progress=on_progress, should_stop=lambda: len(times) >= steps)
    return times


# ---------------------------------------------------------------------- child processes


def add_common_arguments(parser: argparse.ArgumentParser, threads: int = 1) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=threads, help="torch threads per run (CPU)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)


def spawn(module: str, arguments: list[str], threads: int, timeout: float | None = None) -> dict:
    """Run `python -m module arguments` in a fresh process; the dict it printed as its RESULT line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": _python_path()}
    command = [sys.executable, "-m", module, *arguments]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        raise ChildFailed(f"{' '.join(arguments)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def measure_each(module: str, names, args: argparse.Namespace, forwarded_names: tuple[str, ...]) -> dict[str, dict]:
    """A benchmark's configurations, each measured by the module itself in a fresh child process (`--child NAME`,
    with the options `forwarded_names` of `args`), on the builtin model `args.size` made first."""
    builtin_model(args.work_dir, args.size)
    arguments = forwarded(args, forwarded_names)
    return {name: spawn(module, ["--child", name, *arguments], args.threads) for name in names}


def print_result(result: dict) -> None:
    """What a child process hands its parent (see spawn)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def forwarded(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The options `names` of `args`, as command-line arguments again."""
    return [item for name in names for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


class ChildFailed(RuntimeError):
    """A benchmark's child process failed; the message holds the end of its output."""


def _python_path() -> str:
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

"""The GPU acceptance run: every GPU figure the project claims, from one command, in a few minutes.

    scripts/gpu-check                  # on a CUDA machine (the device tool: carry .whl, see scripts/gpu-wheels)
    scripts/gpu-check --dry-run        # the same code paths on the CPU at tiny sizes, in about a minute

Sections, each in fresh processes and each under its own time limit, so one that fails or hangs costs only
itself; the run stops starting sections when its budget is spent:

1. environment: the GPU, its memory, and the versions of the stack;
2. GPU tests: the `gpu`-marked tests of the core (tests/worker/dreambooth/test_gpu.py) on the tiny model:
   fp16 and bf16 training of fp32 weights, 8-bit Adam, LoRA, samples, a half-precision generation and the
   exported single file loading back;
3. memory planner: SD 1.5's architecture (builtin:full) at 512 px on emulated 12 GB and 16 GB cards
   (torch.cuda.set_per_process_memory_fraction): the object or face preset with `memory_profile` auto
   trains, the same job with `memory_profile` none fails as out_of_memory with the advice, and the next job
   in the same process succeeds;
4. memory goals: bench.memory_goals (8-bit Adam, fp16, checkpointing, batch 1, 512 px);
5. LoRA memory: bench.lora_memory, full fine-tuning against LoRA (rank 4, fp16, batch 1, 512 px);
6. training speed: bench.train_speed, ours against the reference loop (fp16, batch 1, 512 px);
7. SDXL memory: bench.sdxl_memory on SDXL's real size (builtin:full-sdxl) at 1024 px: LoRA rank 32 with
   checkpointing, and full UNet fine-tuning with 8-bit Adam and checkpointing (peak memory);
8. SDXL speed: bench.sdxl_memory, LoRA rank 32 without checkpointing (steps per second);
9. pivotal memory: bench.pivotal_memory, pivotal tuning against Dreambooth with the text encoder (8-bit Adam,
   fp16, checkpointing, batch 1, 512 px): the study's claim that it fits a 16 GB card.

It writes $OUT/gpu-check.json (every measurement), $OUT/gpu-check.md (the tables for bench/RESULTS.md),
$OUT/gpu-check.log (each section's output) and $OUT/gpu-tests.xml (the tests' JUnit report), after every
section, so a run cut short still brings back what it measured. `--dry-run` uses the CPU, the tiny model at
64 px and a simulated out-of-memory error instead of an emulated card.
"""

import argparse
import concurrent.futures
import json
import math
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    DEFAULT_WORK_DIR,
    REPO,
    drawn_photos,
    memory_now_mb,
    peak_memory_mb,
    print_result,
    spawn,
    utc_now,
)

GIB = 2**30
GB = 10**9
# Emulated cards: the GPU memory torch may allocate on each. A card reports a little less than its label
# (a 12 GB card ~11.7 GiB, a 16 GB one ~15.7 GiB), and the CUDA context takes ~0.5 GiB more outside
# torch's allocator, which a per-process fraction does not count; hence these allowances.
CARDS = {"12 GB": 11.2, "16 GB": 15.2}
# The presets (backend/presets.py) each emulated card is tried with: objects on the smallest card, faces
# (text encoder and prior preservation) on the 16 GB one, as the study suggests.
CARD_SETTINGS = {
    "12 GB": {"learning_rate": 2e-6, "train_batch_size": 4},
    "16 GB": {
        "learning_rate": 1e-6,
        "train_batch_size": 2,
        "train_text_encoder": True,
        "with_prior_preservation": True,
        "class_prompt": "a photo of a person",
        "num_class_images": 4,
        "class_inference_steps": 10,
    },
}
GOALS = {
    "full_unet_8bit_gb": 10,  # SD 1.5, 512 px, batch 1, UNet only, 8-bit Adam + fp16 + checkpointing
    "full_text_encoder_8bit_gb": 12,  # the same with the text encoder
    "lora_gb": 7,
    "unet_steps_per_s": 8,  # batch 1, no checkpointing, on an H100
    "speed_up": 1.6,  # ours against the reference loop at the same settings
    "sdxl_lora_gb": 10,  # SDXL, 1024 px, batch 1, fp16, LoRA rank 32, cached latents and embeddings, checkpointing
    "sdxl_lora_steps_per_s": 3,  # the same without checkpointing, on an H100
    "pivotal_gb": 16,  # pivotal tuning with the study's 16 GB savers (STUDY.md finding 8)
}
SDXL_MEMORY_CONFIGS = ("LoRA r32, checkpointing", "full UNet, 8-bit Adam, checkpointing")
SDXL_SPEED_CONFIGS = ("LoRA r32",)


@dataclass(frozen=True)
class Sizes:
    """What a run trains on: SD 1.5's architecture at 512 px on a GPU, the tiny model at 64 px in a dry run."""

    device: str
    model: str
    resolution: int
    planner_steps: int
    speed_steps: int
    speed_warmup: int
    sdxl_model: str
    sdxl_resolution: int

    @classmethod
    def for_run(cls, dry_run: bool) -> "Sizes":
        if dry_run:
            return cls("cpu", "tiny", 64, 2, speed_steps=2, speed_warmup=1, sdxl_model="tiny-sdxl", sdxl_resolution=64)
        return cls("cuda", "full", 512, 3, speed_steps=20, speed_warmup=5, sdxl_model="full-sdxl", sdxl_resolution=1024)


# ---------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Section:
    name: str
    function: Callable  # (run, limit_s) -> the section's results
    limit_s: float  # at most this long
    least_s: float  # not started with less of the budget left
    needs_model: bool = True  # waits for the builtin model of the run's size
    exclusive: bool = False  # times steps: runs with nothing else on the machine


SECTIONS = [
    Section("environment", lambda run, limit: section_environment(run, limit), 60, 10, needs_model=False),
    # note: peak memory is per process (torch.cuda.max_memory_allocated, a per-process memory fraction), so
    # these run side by side on the one GPU; only the speed sections need the machine to themselves
    Section("gpu tests", lambda run, limit: section_tests(run, limit), 240, 30, needs_model=False),
    Section("memory planner", lambda run, limit: section_planner(run, limit), 300, 60),
    Section("memory goals", lambda run, limit: section_memory_goals(run, limit), 200, 40),
    Section("lora memory", lambda run, limit: section_lora(run, limit), 200, 30),
    Section("training speed", lambda run, limit: section_speed(run, limit, rows="0"), 120, 40, exclusive=True),
    Section(
        "training speed with savers", lambda run, limit: section_speed(run, limit, rows="3"), 180, 60, exclusive=True
    ),
    Section("compiled speed", lambda run, limit: section_compiled(run, limit), 300, 120, exclusive=True),
    # note: SDXL makes its own model (bench.sdxl_memory): a few minutes of writing 14 GB on the first run
    Section("sdxl memory", lambda run, limit: section_sdxl(run, limit, SDXL_MEMORY_CONFIGS), 420, 120, False),
    Section("sdxl speed", lambda run, limit: section_sdxl(run, limit, SDXL_SPEED_CONFIGS), 180, 60, False, True),
    Section("pivotal memory", lambda run, limit: section_pivotal(run, limit), 200, 40),
]


class Run:
    """The sections' results and outputs, written to the output folder after every section."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.sizes = args, Sizes.for_run(args.dry_run)
        self.out, self.work = args.out, args.work_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        # note: a dry run has no device lease to fit in, and a busy CPU may take many times a GPU's minutes
        self.deadline = time.monotonic() + (math.inf if args.dry_run else args.budget_s)
        self.time_scale = 5 if args.dry_run else 1
        self.results: dict = {
            "date": utc_now(),
            "command": shlex.join(["scripts/gpu-check", *sys.argv[1:]]),
            "dry_run": args.dry_run,
            "sections": {},
        }
        self.tables: dict[str, str] = {}
        self._lock = threading.Lock()
        self._model = threading.Event()
        (self.out / "gpu-check.log").write_text("")

    def run_all(self, sections: list[Section]) -> None:
        """The sections that share the machine side by side, then the exclusive ones one at a time.

        A dry run takes them one at a time: a CPU has no spare engine to share, only cores to fight over.
        """
        if any(section.needs_model for section in sections):
            threading.Thread(target=self._make_model, daemon=True).start()
        shared = [section for section in sections if not section.exclusive]
        workers = 1 if self.args.dry_run else max(1, len(shared))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(self.section, section) for section in shared]:
                future.result()
        for section in sections:
            if section.exclusive:
                self.section(section)

    def section(self, section: Section) -> None:
        """Run one section within min(limit_s, the time left); skip it when less than least_s is left."""
        if section.needs_model:
            self._model.wait()
        left = self.deadline - time.monotonic()
        started = time.monotonic()
        if left < section.least_s * self.time_scale:
            outcome = {"status": "skipped", "why": f"{left:.0f} s of the budget left"}
        else:
            limit = min(section.limit_s * self.time_scale, left)
            self.log(f"== {section.name} (limit {limit:.0f} s)")
            try:
                outcome = {"status": "ok", **section.function(self, limit)}
            except Exception as exc:
                self.log(f"== {section.name} failed\n" + "".join(traceback.format_exception(exc)))
                outcome = {"status": "failed", "error": str(exc)[-4000:]}
        outcome["seconds"] = round(time.monotonic() - started, 1)
        print(f"{section.name}: {outcome['status']} in {outcome['seconds']:.0f} s", flush=True)
        with self._lock:
            self.results["sections"][section.name] = outcome
            self.write()

    def _make_model(self) -> None:
        """The builtin model of the run's size, made once before the sections that train it start."""
        try:
            make = (
                f"from pathlib import Path; from bench.common import builtin_model; "
                f"builtin_model(Path({str(self.work)!r}), {self.sizes.model!r})"
            )
            self.command([sys.executable, "-c", make], limit_s=300)
        finally:
            self._model.set()

    def command(self, arguments: list[str], limit_s: float, env: dict | None = None) -> str:
        """Run a command from the repository root; its output goes to the log. Raises if it fails."""
        started = time.monotonic()
        try:
            done = subprocess.run(
                arguments,
                cwd=REPO,
                env=child_environment(env),
                capture_output=True,
                text=True,
                timeout=limit_s,
                check=False,
            )
        except subprocess.TimeoutExpired as timeout:
            self.log(f"$ {shlex.join(arguments)}\n{_text(timeout.stdout)}{_text(timeout.stderr)}")
            raise RuntimeError(f"timed out after {limit_s:.0f} s") from None
        took = time.monotonic() - started
        self.log(
            f"$ {shlex.join(arguments)}  ({took:.0f} s, exit status {done.returncode})\n{done.stdout}{done.stderr}"
        )
        if done.returncode:
            raise RuntimeError(f"exit status {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    def bench(self, module: str, arguments: list[str], limit_s: float) -> tuple[dict, str]:
        """Run a benchmark module with --json; its measurements and its Markdown report."""
        path = self.work / f"{module.rsplit('.', 1)[-1]}-{secrets.token_hex(4)}.json"
        path.unlink(missing_ok=True)
        stdout = self.command([sys.executable, "-m", module, *arguments, "--json", str(path)], limit_s)
        table = stdout[stdout.index("- machine:") :] if "- machine:" in stdout else stdout
        return json.loads(path.read_text()), table.strip()

    def model_arguments(self) -> list[str]:
        """What every benchmark is told: the device, the built-in model, its resolution and the work folder."""
        sizes = self.sizes
        return ["--device", sizes.device, "--size", sizes.model, "--resolution", str(sizes.resolution),
                "--work-dir", str(self.work)]  # fmt: skip

    def log(self, text: str) -> None:
        with self._lock, (self.out / "gpu-check.log").open("a") as log:
            log.write(text.rstrip() + "\n")

    def write(self) -> None:
        ordered = {name: self.results["sections"][name] for name in _names() if name in self.results["sections"]}
        self.results["sections"] = ordered
        self.results["summary"] = summary(self.results)
        _write_atomic(self.out / "gpu-check.json", json.dumps(self.results, indent=2))
        _write_atomic(self.out / "gpu-check.md", markdown(self.results, self.tables))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU, the tiny model, a simulated OOM")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR.with_name("dreambooth-gpu-check"))
    parser.add_argument("--budget-s", type=float, default=420, help="start no section after this long")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",")],
        default=_names(),
        metavar="NAME,NAME",
        help="run only these sections: " + ", ".join(_names()),
    )
    parser.add_argument("--child", choices=["environment", "planner"], help=argparse.SUPPRESS)
    parser.add_argument("--card", choices=list(CARDS), help=argparse.SUPPRESS)
    parser.add_argument("--full-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "environment":
        print_result(environment())
        return
    if args.child == "planner":
        print_result(planner_card(args))
        return
    unknown = set(args.only) - set(_names())
    if unknown:
        parser.error(f"no section named {', '.join(sorted(unknown))}")

    run = Run(args)
    # note: the environment section always runs: the report's header (the GPU, the stack) comes from it
    run.run_all([section for section in SECTIONS if section.name in args.only or section.name == "environment"])
    failed = [
        name
        for name, section in run.results["sections"].items()
        if section["status"] == "failed" or section.get("failed")
    ]
    print((run.out / "gpu-check.md").read_text())
    sys.exit(1 if failed else 0)


def _names() -> list[str]:
    return [section.name for section in SECTIONS]


# ---------------------------------------------------------------------- sections


def section_environment(run: Run, limit_s: float) -> dict:
    return spawn("bench.gpu_check", ["--child", "environment"], threads=os.cpu_count() or 1, timeout=limit_s)


def environment() -> dict:
    """The machine and the stack, as this process sees them."""
    import importlib.metadata
    import platform

    import torch

    packages = (
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "peft",
        "bitsandbytes",
        "safetensors",
        "huggingface-hub",
        "numpy",
    )
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    facts = {"python": platform.python_version(), "packages": versions, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        facts |= {
            "gpu": properties.name,
            "gpu_memory_gib": round(properties.total_memory / GIB, 1),
            "capability": f"{properties.major}.{properties.minor}",
            "bf16": torch.cuda.is_bf16_supported(),
        }
    else:
        facts["gpu"] = None
    return facts


def section_tests(run: Run, limit_s: float) -> dict:
    report = run.out / "gpu-tests.xml"
    arguments = [
        sys.executable,
        "-m",
        "pytest",
        "tests/worker/dreambooth/test_gpu.py",
        "-m",
        "gpu",
        "-q",
        # note: the confcutdir keeps the suites' database fixtures (tests/conftest.py) out: no Postgres here
        "--confcutdir",
        "tests/worker",
        "-p",
        "no:cacheprovider",
        "--junitxml",
        str(report),
        "--durations",
        "0",
    ]
    env = {"GPU_CHECK_DRY_RUN": "1"} if run.args.dry_run else {}
    failure = None
    try:
        run.command(arguments, limit_s, env)
    except RuntimeError as exc:
        failure = str(exc)
    counts = _junit_counts(report)
    if failure and not counts.get("failed"):
        raise RuntimeError(failure)
    return counts


def section_planner(run: Run, limit_s: float) -> dict:
    def card_run(card: str) -> dict:
        arguments = ["--child", "planner", "--card", card, "--work-dir", str(run.work)]
        if run.args.dry_run:
            arguments.append("--dry-run")
        if card == next(iter(CARDS)):
            arguments.append("--full-job")  # note: one card runs its last job to the end: samples and exports
        return spawn("bench.gpu_check", arguments, threads=os.cpu_count() or 1, timeout=limit_s)

    # note: each card is its own process with its own memory fraction, so they run side by side
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(CARDS)) as pool:
        cards = dict(zip(CARDS, pool.map(card_run, CARDS), strict=True))
    run.tables["memory planner"] = planner_table(cards)
    return {"cards": cards}


def section_memory_goals(run: Run, limit_s: float) -> dict:
    extra = ["--mixed-precision", "bf16"] if run.args.dry_run else []
    measured, table = run.bench("bench.memory_goals", [*run.model_arguments(), "--steps", "2", *extra], limit_s)
    run.tables["memory goals"] = table
    return {"configurations": measured}


def section_lora(run: Run, limit_s: float) -> dict:
    precision = "bf16" if run.args.dry_run else "fp16"
    arguments = [*run.model_arguments(), "--batch-size", "1", "--steps", "5", "--mixed-precision", precision]
    measured, table = run.bench("bench.lora_memory", arguments, limit_s)
    run.tables["lora memory"] = table
    return {"methods": measured}


def section_speed(run: Run, limit_s: float, rows: str) -> dict:
    sizes = run.sizes
    arguments = [
        *run.model_arguments(), "--batch-size", "1", "--mixed-precision", "bf16" if run.args.dry_run else "fp16",
        "--rows", rows, "--no-cache-hit", "--steps", str(sizes.speed_steps), "--warmup", str(sizes.speed_warmup),
        "--class-images", "4",
    ]  # fmt: skip
    measured, table = run.bench("bench.train_speed", arguments, limit_s)
    run.tables[f"training speed, rows {rows}"] = table
    return measured


def section_compiled(run: Run, limit_s: float) -> dict:
    """Ours with torch.compile'd training steps against the reference loop (UNet only, no savers)."""
    if run.args.dry_run:
        # note: a compile takes minutes on a CPU (about two for the tiny model here) and gains nothing there
        return {"skipped": "the dry run does not compile"}
    sizes = run.sizes
    arguments = [
        *run.model_arguments(), "--batch-size", "1", "--mixed-precision", "fp16", "--rows", "0", "--no-cache-hit",
        "--steps", str(sizes.speed_steps), "--warmup", str(sizes.speed_warmup), "--class-images", "4", "--compile",
    ]  # fmt: skip
    measured, table = run.bench("bench.train_speed", arguments, limit_s)
    run.tables["training speed, compiled"] = table
    return measured


def section_sdxl(run: Run, limit_s: float, configurations: tuple[str, ...]) -> dict:
    sizes = run.sizes
    arguments = [
        "--device", sizes.device, "--size", sizes.sdxl_model, "--resolution", str(sizes.sdxl_resolution),
        "--work-dir", str(run.work), "--steps", "2" if run.args.dry_run else "5",
        *(item for name in configurations for item in ("--only", name)),
    ]  # fmt: skip
    measured, table = run.bench("bench.sdxl_memory", arguments, limit_s)
    run.tables[f"sdxl, {', '.join(configurations)}"] = table
    return {"configurations": measured}


def section_pivotal(run: Run, limit_s: float) -> dict:
    arguments = [*run.model_arguments(), "--steps", "2"]
    measured, table = run.bench("bench.pivotal_memory", arguments, limit_s)
    run.tables["pivotal memory"] = table
    return {"configurations": measured}


# ---------------------------------------------------------------------- the memory planner on an emulated card


def planner_card(args: argparse.Namespace) -> dict:
    """Three jobs in one process, as a worker runs them: auto, none (out of memory), and auto again."""
    import torch

    from worker.dreambooth.components import ComponentCache

    sizes = Sizes.for_run(args.dry_run)
    allowed = None
    if sizes.device == "cuda":
        allowed = CARDS[args.card] * GIB
        torch.cuda.set_per_process_memory_fraction(allowed / torch.cuda.get_device_properties(0).total_memory)
    models = ComponentCache()
    jobs = [
        planner_job(args, sizes, models, "auto", "auto", stop=True),
        # note: on the CPU no card runs out, so the dry run simulates the error where the GPU would raise it
        planner_job(args, sizes, models, "none", "none", stop=True, simulate_oom=args.dry_run),
        planner_job(args, sizes, models, "next job", "auto", stop=not args.full_job),
    ]
    return {"allowed_gib": CARDS[args.card] if allowed else None, "settings": CARD_SETTINGS[args.card], "jobs": jobs}


def planner_job(args, sizes: Sizes, models, name: str, profile: str, stop: bool, simulate_oom: bool = False) -> dict:
    import torch

    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.errors import JobError
    from worker.dreambooth.train import train

    if sizes.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    work = args.work_dir / f"planner-{args.card.split()[0]}"
    steps: list[float] = []
    plans = []

    def on_progress(progress) -> None:
        if progress.phase == "training":
            steps.append(time.perf_counter())
            if simulate_oom:
                raise torch.cuda.OutOfMemoryError("simulated: CUDA out of memory")

    config = TrainConfig(
        **CARD_SETTINGS[args.card],
        base_model=f"builtin:{sizes.model}",
        models_dir=args.work_dir,
        device=sizes.device,
        instance_images=drawn_photos(work / "photos", sizes.resolution, aspect=4 / 3),
        instance_prompt="a photo of rufus toy",
        output_dir=work / name.replace(" ", "-"),
        cache_dir=work / "cache",
        resolution=sizes.resolution,
        max_train_steps=sizes.planner_steps + 1,
        seed=0,
        memory_profile=profile,
        checkpointing_steps=None,
        validation_steps=10**6,
        validation_prompts=("a photo of rufus toy",),
        validation_inference_steps=10,
    )
    started = time.perf_counter()
    outcome: dict = {"job": name, "memory_profile": profile}
    try:
        result = train(
            config,
            on_progress,
            should_stop=lambda: stop and len(steps) > sizes.planner_steps,
            models=models,
            on_memory_plan=plans.append,
        )
        outcome["outcome"] = "stopped after the timed steps" if result.stopped else "succeeded"
        outcome["exports"] = sorted(result.checkpoints)
    except JobError as error:
        outcome |= {"outcome": "failed", "error": {"code": error.code, "message": error.message}}
    outcome |= {
        "plan": plans[0].as_dict() if plans else None,
        "steps": len(steps),
        "s_per_step": (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else None,
        "peak_gib": peak_memory_mb(sizes.device) / 1024,
        "after_gib": memory_now_mb(sizes.device) / 1024,
        "seconds": time.perf_counter() - started,
    }
    return outcome


# ---------------------------------------------------------------------- reports


def summary(results: dict) -> list[dict]:
    """The figures the project claims, each against its goal: [{figure, measured, goal, met}]."""
    sections = results["sections"]
    lines = []

    def add(figure: str, measured: float | None, goal: str, met: bool | None) -> None:
        lines.append({"figure": figure, "measured": measured, "goal": goal, "met": met})

    def add_peak(figure: str, measured: dict, goal: str | None = None) -> None:
        """A run's peak memory (its peak_mb) in GB, against GOALS[goal] ("under N GB") when it has one."""
        peak = measured["peak_mb"] * 2**20
        if goal is None:
            add(figure, round(peak / GB, 2), "-", None)
        else:
            add(figure, round(peak / GB, 2), f"under {GOALS[goal]} GB", peak < GOALS[goal] * GB)

    goals = sections.get("memory goals", {}).get("configurations", {})
    for name, key in (("UNet only", "full_unet_8bit_gb"), ("+ text encoder", "full_text_encoder_8bit_gb")):
        if name in goals:
            add_peak(f"full fine-tuning, {name}, 8-bit Adam + fp16 + checkpointing: peak GB", goals[name], key)
    lora = sections.get("lora memory", {}).get("methods", {})
    if "lora" in lora:
        add_peak("LoRA rank 4, UNet, fp16: peak GB", lora["lora"], "lora_gb")
    rows = {
        row["configuration"]: row
        for name in ("training speed", "training speed with savers")
        for row in sections.get(name, {}).get("rows", [])
    }

    def add_unet_speed(row: dict, compiled: bool) -> None:
        """UNet-only steps/s, ours (plain or compiled) and against the reference loop, each against its goal."""
        ours, reference = (row[side]["steps_per_s"] for side in ("ours", "reference"))
        speed_goal, ratio_goal = GOALS["unet_steps_per_s"], GOALS["speed_up"]
        how = ", compiled" if compiled else ""
        add(f"UNet only, fp16, batch 1, no checkpointing{how}: steps/s", round(ours, 2),
            f"at least {speed_goal} (H100)", ours >= speed_goal)  # fmt: skip
        add(f"ours{' compiled' if compiled else ''} / reference loop, UNet only", round(ours / reference, 2),
            f"at least {ratio_goal}x", ours / reference >= ratio_goal)  # fmt: skip

    if "UNet only" in rows:
        add_unet_speed(rows["UNet only"], compiled=False)
    compiled = {row["configuration"]: row for row in sections.get("compiled speed", {}).get("rows", [])}
    if "UNet only" in compiled:
        add_unet_speed(compiled["UNet only"], compiled=True)
        add("compiled: loop start to the first step's end, s", round(compiled["UNet only"]["ours"]["first_step_s"], 1),
            "-", None)  # fmt: skip
    if "+ 8-bit Adam" in rows:
        ours, reference = rows["+ 8-bit Adam"]["ours"]["steps_per_s"], rows["+ 8-bit Adam"]["reference"]["steps_per_s"]
        add(
            "ours / reference loop, + prior preservation, text encoder, 8-bit Adam",
            round(ours / reference, 2),
            f"at least {GOALS['speed_up']}x",
            ours / reference >= GOALS["speed_up"],
        )
    sdxl = sections.get("sdxl memory", {}).get("configurations", {}) | sections.get("sdxl speed", {}).get(
        "configurations", {}
    )
    if "LoRA r32, checkpointing" in sdxl:
        add_peak(
            "SDXL LoRA rank 32, 1024 px, fp16, checkpointing: peak GB", sdxl["LoRA r32, checkpointing"], "sdxl_lora_gb"
        )
    if "LoRA r32" in sdxl:
        speed = sdxl["LoRA r32"]["steps_per_s"]
        add(
            "SDXL LoRA rank 32, 1024 px, fp16, no checkpointing: steps/s",
            round(speed, 2),
            f"at least {GOALS['sdxl_lora_steps_per_s']} (H100)",
            speed >= GOALS["sdxl_lora_steps_per_s"],
        )
    if "full UNet, 8-bit Adam, checkpointing" in sdxl:
        add_peak(
            "SDXL full UNet, 1024 px, 8-bit Adam, fp16, checkpointing: peak GB",
            sdxl["full UNet, 8-bit Adam, checkpointing"],
        )
    pivotal = sections.get("pivotal memory", {}).get("configurations", {})
    if "pivotal" in pivotal:
        figure = "pivotal tuning (inversion, then full UNet), 8-bit Adam + fp16 + checkpointing: peak GB"
        add_peak(figure, pivotal["pivotal"], "pivotal_gb")
    for card, measured in sections.get("memory planner", {}).get("cards", {}).items():
        outcomes = [job["outcome"] for job in measured["jobs"]]
        met = (
            outcomes[0] != "failed"
            and outcomes[1] == "failed"
            and measured["jobs"][1]["error"]["code"] == "out_of_memory"
            and outcomes[2] != "failed"
        )
        add(
            f"{card} card: auto trains, none runs out of memory, the next job trains",
            None,
            "auto / out_of_memory / next job",
            met,
        )
    return lines


def markdown(results: dict, tables: dict[str, str]) -> str:
    environment = results["sections"].get("environment", {})
    packages = environment.get("packages", {})
    lines = [
        "## GPU check" + (" (dry run on the CPU)" if results["dry_run"] else ""),
        "",
        f"- machine: {environment.get('gpu') or 'no GPU'}"
        + (f", {environment['gpu_memory_gib']} GiB" if environment.get("gpu_memory_gib") else ""),
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
        "- stack: "
        + ", ".join(f"{name} {version}" for name, version in packages.items() if version)
        + (f", Python {environment['python']}, CUDA {environment['cuda']}" if environment.get("python") else ""),
        "",
        "| section | status | seconds |",
        "| --- | --- | ---: |",
    ]
    for name, section in results["sections"].items():
        status = section["status"]
        if name == "gpu tests" and status == "ok":
            status = (
                f"{section.get('passed', 0)} passed, {section.get('failed', 0)} failed, "
                f"{section.get('skipped', 0)} skipped"
            )
        elif status != "ok":
            status += ": " + " ".join(str(section.get("error") or section.get("why")).split())[:200]
        lines.append(f"| {name} | {status} | {section['seconds']:.0f} |")
    lines += ["", "| figure | measured | goal | met |", "| --- | ---: | --- | --- |"]
    for line in results.get("summary", []):
        met = {True: "yes", False: "**no**", None: "n/a"}[line["met"]]
        measured = "" if line["measured"] is None else line["measured"]
        lines.append(f"| {line['figure']} | {measured} | {line['goal']} | {met} |")
    for name, table in tables.items():
        lines += ["", f"### {name}", "", table]
    return "\n".join(lines) + "\n"


def planner_table(cards: dict) -> str:
    lines = [
        "| card | job | memory_profile | plan | outcome | steps | s/step | peak GiB |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for card, measured in cards.items():
        for job in measured["jobs"]:
            plan = job["plan"] or {}
            changes = ", ".join(f"{key}={value}" for key, value in plan.get("changes", {}).items()) or "no changes"
            outcome = job["outcome"] + (f" ({job['error']['code']})" if job.get("error") else "")
            per_step = f"{job['s_per_step']:.2f}" if job["s_per_step"] else ""
            lines.append(
                f"| {card} | {job['job']} | {job['memory_profile']} | {plan.get('profile')}: {changes} | {outcome} "
                f"| {job['steps']} | {per_step} | {job['peak_gib']:.2f} |"
            )
    advice = next((job["error"]["message"] for m in cards.values() for job in m["jobs"] if job.get("error")), None)
    if advice:
        lines += ["", f'The out-of-memory message: "{advice}"']
    return "\n".join(lines)


def child_environment(extra: dict | None = None) -> dict:
    """This process's environment for a child: offline, with the repository importable."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **(extra or {})}


def _junit_counts(report: Path) -> dict:
    import xml.etree.ElementTree as ElementTree

    if not report.exists():
        return {}
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    failed_names = [
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        "passed": tests - failures - errors - skipped,
        "failed": failures + errors,
        "skipped": skipped,
        "failed_tests": failed_names,
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


if __name__ == "__main__":
    main()

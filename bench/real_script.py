"""Our `dreambooth train` against diffusers' real examples/dreambooth/train_dreambooth.py, job for job.

    scripts/get-train-dreambooth                  # once: the real script into bench/vendor/ (never committed)
    python -m bench.real_script                   # CPU: builtin:small, 128 px, batch 2, 100 steps, 3 pairs
    python -m bench.real_script --pairs 1 --steps 20
    python -m bench.real_script --device cuda     # builtin:full at 512 px, batch 1, fp16
    python -m bench.real_script --json real-script.json --work-dir /tmp/rs

Both programs run as they are, at the same settings, each in a fresh process, alternately: pair 1 runs ours then
the script, pair 2 the script then ours, and so on, so a machine that slows down or speeds up over the bench
favours neither. The script runs as `python train_dreambooth.py ...` (no `accelerate launch`: one process), ours
as `python -m worker.cli train ...` (the `dreambooth train` entry point), both under bench/step_clock.py, which
records every optimizer step through torch's global optimizer-step hook without changing either program.

Per run: the whole process's wall time (from starting it to its exit), the steps/s (the median interval between
optimizer steps after the first --warmup steps; the same measure for both), the child's peak RSS (os.wait4's
ru_maxrss), its CPU seconds, and on CUDA torch's peak allocated memory. The report (Markdown, on stdout) has each
pair and the medians with their ratios; --json writes every measurement.

The default job is the one issue 16 names: 5 drawn photos (5:4, so the random crop varies), random crop, no prior
preservation, frozen text encoder, learning rate 2e-6 constant, seed 0, fp32 on the CPU, and at the end one
prompt sampled 4 times with DPM-Solver++ (multistep, order 2) at 25 steps and guidance 7.5. The script validates at
every --validation_steps, set to the step count (so once, after the last step); ours samples at the last step
always and at --validation-steps, set likewise. Checkpoints of the training state every 500 steps for both (the
script's default; none in a 100-step job). Ours runs with --memory-profile none (the settings as given) and, unless
--score, without scoring its samples (SCORER_MODEL=none), which the script has no counterpart of.

Where torchvision does not import (this machine's CPU torch), the script gets bench/torchvision_stand_in.py in its
place (bench/vendor/shim, on its PYTHONPATH only); the report says which it had.

On a CPU that something else is busy on, give --threads (OMP_NUM_THREADS for both): with torch's default, one
thread per core, a run that shares its cores can slow down several times over, and unevenly.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    REPO,
    ChildFailed,
    add_common_arguments,
    builtin_model,
    drawn_photos,
    report_header,
)
from bench.step_clock import FILE_VARIABLE, steps_per_second

MODULE = "bench.real_script"
VENDOR = REPO / "bench" / "vendor"
SCRIPT = VENDOR / "train_dreambooth.py"
SHIM = VENDOR / "shim"
SIDES = ("ours", "script")
INSTANCE_PROMPT = "a photo of sks toy"
PHOTOS = 5
PHOTO_ASPECT = 5 / 4
CUDA_DEFAULTS = {"size": "full", "resolution": 512, "batch_size": 1, "mixed_precision": "fp16"}
CPU_DEFAULTS = {"size": "small", "resolution": None, "batch_size": 2, "mixed_precision": "no"}
NATIVE_RESOLUTION = {"tiny": 64, "small": 128, "full": 512}


# ---------------------------------------------------------------------- the two command lines


def ours_command(args, model: Path, photos: Path, output: Path) -> list[str]:
    """`dreambooth train` at the bench's settings, every setting that matters spelled out."""
    crop = "--center-crop" if args.center_crop else "--no-center-crop"
    return [
        "-m", "worker.cli", "train",
        "--photos", str(photos),
        "--output", str(output),
        "--models-dir", str(args.work_dir),
        "--device", args.device,
        "--base-model", str(model),
        "--instance-prompt", INSTANCE_PROMPT,
        "--training-method", "full",
        "--max-train-steps", str(args.steps),
        "--learning-rate", "2e-6",
        "--lr-scheduler", "constant",
        "--lr-warmup-steps", "0",
        "--train-batch-size", str(args.batch_size),
        "--gradient-accumulation-steps", "1",
        "--resolution", str(args.resolution),
        crop,
        "--no-random-flip",
        "--mixed-precision", args.mixed_precision,
        "--no-train-text-encoder",
        "--no-with-prior-preservation",
        "--no-gradient-checkpointing",
        "--no-use-8bit-adam",
        "--no-use-ema",
        "--memory-profile", "none",
        "--seed", "0",
        "--validation-prompts", INSTANCE_PROMPT,
        "--validation-steps", str(args.steps),
        "--num-validation-images", "4",
        "--validation-scheduler", "dpmpp_2m",
        "--validation-inference-steps", "25",
        "--guidance-scale", "7.5",
        "--checkpointing-steps", str(args.checkpointing_steps),
    ]  # fmt: skip


def script_command(args, model: Path, photos: Path, output: Path) -> list[str]:
    """train_dreambooth.py at the same settings (its defaults where they already agree: AdamW betas, decay and
    epsilon, max_grad_norm 1, guidance 7.5 and 25 steps in log_validation, no flip, text encoder frozen)."""
    return [
        str(SCRIPT),
        "--pretrained_model_name_or_path", str(model),
        "--instance_data_dir", str(photos),
        "--instance_prompt", INSTANCE_PROMPT,
        "--output_dir", str(output),
        "--resolution", str(args.resolution),
        *(["--center_crop"] if args.center_crop else []),
        "--train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", "1",
        "--max_train_steps", str(args.steps),
        "--learning_rate", "2e-6",
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--seed", "0",
        "--mixed_precision", args.mixed_precision,
        "--checkpointing_steps", str(args.checkpointing_steps),
        "--validation_prompt", INSTANCE_PROMPT,
        "--num_validation_images", "4",
        "--validation_steps", str(args.steps),
        "--validation_scheduler", "DPMSolverMultistepScheduler",
        # note: the script's default; accelerate skips a tracker whose package is not installed (see tracker_note)
        "--report_to", "tensorboard",
    ]  # fmt: skip


# ---------------------------------------------------------------------- one run


def torchvision_imports() -> bool:
    """Whether the real torchvision imports in this Python (checked in a child: a broken one may crash)."""
    done = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, check=False)
    return done.returncode == 0


def child_env(args, side: str, shim: bool) -> dict:
    path = [str(REPO)] + ([str(SHIM)] if side == "script" and shim else [])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_MODE": "disabled",
    }
    if side == "ours" and not args.score:
        env["SCORER_MODEL"] = "none"
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def timed_run(command: list[str], env: dict, log: Path, clock_file: Path, warmup: int) -> dict:
    """Run `python -m bench.step_clock COMMAND` to its end; the measurements of that process."""
    clock_file.unlink(missing_ok=True)
    full = [sys.executable, "-m", "bench.step_clock", *command]
    with log.open("w") as output:
        started = time.perf_counter()
        process = subprocess.Popen(full, env={**env, FILE_VARIABLE: str(clock_file)}, cwd=REPO, stdout=output,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
        ended = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = log.read_text(errors="replace")[-6000:]
        raise ChildFailed(f"{' '.join(full)}\nexited with {process.returncode}; the end of {log}:\n{tail}")
    clock = json.loads(clock_file.read_text())
    return measurements(clock, started, ended, usage, warmup)


def measurements(clock: dict, started: float, ended: float, usage, warmup: int) -> dict:
    """What one run measured, from its step clock's file, the parent's times and the child's rusage."""
    steps = clock["steps"]
    result = {
        "wall_s": ended - started,
        "steps": len(steps),
        "steps_per_s": steps_per_second(steps, warmup),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "to_first_step_s": steps[0] - started if steps else None,
        "training_s": steps[-1] - steps[0] if steps else None,
        "after_last_step_s": ended - steps[-1] if steps else None,
        "optimizers": clock["optimizers"],
        "step_times_s": [t - started for t in steps],
    }
    for key in ("peak_cuda_mb", "peak_cuda_reserved_mb"):
        if key in clock:
            result[key] = clock[key]
    return result


def saved_files(folder: Path) -> dict[str, float]:
    """What a run left in its output folder: MiB under each top-level entry."""
    sizes = {}
    for entry in sorted(folder.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name + ("" if entry.is_file() else "/")] = sum(p.stat().st_size for p in files) / 2**20
    return sizes


# ---------------------------------------------------------------------- the bench


def prepare(args) -> tuple[Path, Path]:
    """The built-in model and the photos, made once in the work folder."""
    model = builtin_model(args.work_dir, args.size)
    photos = args.work_dir / "real-script" / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    drawn_photos(photos, args.photo_side or args.resolution, aspect=PHOTO_ASPECT, count=PHOTOS)
    return model, photos


def run_pairs(args, model: Path, photos: Path, shim: bool) -> tuple[list[dict], dict]:
    root = args.work_dir / "real-script"
    builders = {"ours": ours_command, "script": script_command}
    pairs, saved = [], {}
    for index in range(args.pairs):
        pair = {}
        # note: ours first in odd pairs, the script first in even ones
        for side in SIDES if index % 2 == 0 else reversed(SIDES):
            output = root / f"out-{side}"
            shutil.rmtree(output, ignore_errors=True)
            command = builders[side](args, model, photos, output)
            log = root / f"{side}-{index + 1}.log"
            print(f"pair {index + 1}/{args.pairs}: {side} ... ", end="", file=sys.stderr, flush=True)
            pair[side] = timed_run(command, child_env(args, side, shim), log, root / f"{side}.steps.json", args.warmup)
            pair[side]["order"] = len(pair)
            saved[side] = saved_files(output)
            print(f"{pair[side]['wall_s']:.1f} s", file=sys.stderr, flush=True)
            if pair[side]["steps"] != args.steps:
                print(f"warning: {side} took {pair[side]['steps']} optimizer steps, not {args.steps}", file=sys.stderr)
        pairs.append(pair)
    return pairs, saved


SUMMARY_KEYS = ("wall_s", "steps_per_s", "peak_rss_mb", "peak_cuda_mb", "cpu_s")


def summary(pairs: list[dict]) -> dict:
    """Medians over the pairs for each side, and ours / script."""
    result = {}
    for key in SUMMARY_KEYS:
        values = {side: [pair[side].get(key) for pair in pairs] for side in SIDES}
        if any(value is None for side in SIDES for value in values[side]):
            continue
        medians = {side: statistics.median(values[side]) for side in SIDES}
        result[key] = {**medians, "ours_over_script": medians["ours"] / medians["script"]}
    return result


def images_trained(steps: int, photos: int, batch: int, wraps: bool) -> int:
    """Instance images the steps go through: ours wraps batches across epochs (always `batch`); the script's
    DataLoader ends every epoch with whatever is left (drop_last=False)."""
    if wraps:
        return steps * batch
    per_epoch = -(-photos // batch)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * photos + min(rest * batch, photos)


def script_source() -> str:
    source = VENDOR / "SOURCE"
    if not source.exists():
        return "unknown source (no bench/vendor/SOURCE)"
    fields = dict(line.split(": ", 1) for line in source.read_text().splitlines() if ": " in line)
    return f"diffusers {fields.get('commit', '?')[:12]} `{fields.get('path', '?')}`"


def tracker_note() -> str:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return "tensorboard is not installed, so accelerate skips the script's default tracker (no logging)"
    return "tensorboard is installed, so the script logs its loss every step and the samples (its default)"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(args, pairs: list[dict], summed: dict, saved: dict, shim: bool) -> str:
    cuda = args.device == "cuda"
    threads = "torch's default threads" if args.threads is None else f"OMP_NUM_THREADS={args.threads}"
    photo_side = args.photo_side or args.resolution
    photo_size = f"{round(photo_side * PHOTO_ASPECT)}x{photo_side}"
    images = {side: images_trained(args.steps, PHOTOS, args.batch_size, side == "ours") for side in SIDES}
    lines = [
        *report_header(MODULE, args.device, args.threads),
        f"- script: {script_source()}, run as `python train_dreambooth.py` (one process); torchvision: "
        + (
            "the stand-in bench/torchvision_stand_in.py (the real one does not import here)" if shim else "the real one"
        ),
        "- ours: `dreambooth train` (`python -m worker.cli train`), --memory-profile none, "
        + ("scoring its samples (the service's scorer)" if args.score else "no sample scoring (SCORER_MODEL=none)"),
        f"- job: builtin:{args.size} at {args.resolution} px, batch {args.batch_size}, {args.steps} steps, learning "
        f"rate 2e-6 constant, seed 0, {'center' if args.center_crop else 'random'} crop, no prior preservation, text "
        f"encoder frozen, mixed precision {args.mixed_precision}, on {args.device} ({threads}); {PHOTOS} drawn photos "
        f"{photo_size}; at the end 4 samples of one prompt, DPM-Solver++ 25 steps, guidance 7.5; training state "
        f"saved every {args.checkpointing_steps} steps",
        f"- steps/s: 1 / the median interval between optimizer steps after the first {args.warmup} (torch's global "
        "optimizer-step hook, bench/step_clock.py), the same for both; whole job: from starting the process to its "
        "exit; peak RSS: the child's ru_maxrss" + ("; peak CUDA: torch.cuda.max_memory_allocated" if cuda else ""),
        f"- {args.pairs} pair{'s' if args.pairs != 1 else ''}, run alternately (ours first in odd pairs, the script "
        "first in even ones)",
        "",
        "| pair | program | whole job s | to 1st step s | training s | after last step s | steps/s | CPU s | "
        "peak RSS MiB |" + (" peak CUDA MiB |" if cuda else ""),
        "| ---: | --- " + "| ---: " * (8 if cuda else 7) + "|",
    ]
    for index, pair in enumerate(pairs):
        for side in sorted(SIDES, key=lambda s: pair[s]["order"]):
            run = pair[side]
            cells = [
                str(index + 1), side, fmt(run["wall_s"], 1), fmt(run["to_first_step_s"], 1), fmt(run["training_s"], 1),
                fmt(run["after_last_step_s"], 1), fmt(run["steps_per_s"], 3), fmt(run["cpu_s"], 1),
                fmt(run["peak_rss_mb"], 0),
            ]  # fmt: skip
            if cuda:
                cells.append(fmt(run.get("peak_cuda_mb"), 0))
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Medians of {len(pairs)} pair{'s' if len(pairs) != 1 else ''}:",
        "",
        "| measure | ours | script | ours / script | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "wall_s": ("whole job s", 1),
        "steps_per_s": ("steps/s", 3),
        "cpu_s": ("CPU s", 1),
        "peak_rss_mb": ("peak RSS MiB", 0),
        "peak_cuda_mb": ("peak CUDA MiB", 0),
    }
    for key, (name, digits) in names.items():
        if key not in summed:
            continue
        row = summed[key]
        ratio = row["ours_over_script"]
        # note: a speed-up only for times and speeds; for memory the ratio says it
        speed_up = {"wall_s": f"{1 / ratio:.2f}x", "cpu_s": f"{1 / ratio:.2f}x", "steps_per_s": f"{ratio:.2f}x"}
        lines.append(
            f"| {name} | {fmt(row['ours'], digits)} | {fmt(row['script'], digits)} | {ratio:.2f} | "
            f"{speed_up.get(key, '-')} |"
        )
    lines += ["", "What each job left in its output folder (MiB):", ""]
    for side in SIDES:
        listed = ", ".join(f"{name} {size:.1f}" for name, size in saved.get(side, {}).items()) or "nothing"
        lines.append(f"- {side}: {listed}")
    lines += ["", "Differences in the work that the settings do not remove:", ""]
    lines += [f"- {note}" for note in work_notes(args, images)]
    return "\n".join(lines)


def work_notes(args, images: dict) -> list[str]:
    notes = [
        "Saving: the script writes the whole pipeline once (save_pretrained, fp32 safetensors; the trained UNet with "
        "the text encoder and VAE loaded again from the base model); ours writes the pipeline folder too, then two "
        "single-file checkpoints (fp16 and fp32) for AUTOMATIC1111 and ComfyUI, and its 4 samples as PNGs (the "
        "script hands its samples to the tracker only).",
        "Sampling: the script builds a new pipeline with DiffusionPipeline.from_pretrained for it (reading the "
        "scheduler config from disk); ours assembles one from the loaded parts.",
        "Per step the script opens, decodes and crops each photo (torch DataLoader, no workers), encodes it with "
        "the VAE and runs the text encoder on the prompt; ours keeps the photos decoded and the prompt's "
        "embedding, and encodes only the crop with the VAE"
        + (" (with a center crop it encodes every photo once, up front)" if args.center_crop else "")
        + ".",
        f"Tracker: {tracker_note()}.",
    ]
    if images["ours"] != images["script"]:
        notes.append(
            f"Batches: {PHOTOS} photos in batches of {args.batch_size}: the script's DataLoader ends each epoch with a "
            f"smaller batch, so its {args.steps} steps see {images['script']} photos, ours {images['ours']} (ours "
            "wraps batches across epochs); the median step of both is a full batch."
        )
    if NATIVE_RESOLUTION[args.size] != args.resolution:
        notes.append(
            f"Sample size: the script samples at the model's own size ({NATIVE_RESOLUTION[args.size]} px), ours at the "
            f"training resolution ({args.resolution} px)."
        )
    if args.device == "cpu":
        notes.append(
            "The script's log_validation samples under torch.autocast('cuda'), which does nothing on the CPU; "
            "both sample in fp32 there."
        )
    return notes


def resolve_defaults(args) -> None:
    defaults = CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.resolution = args.resolution or NATIVE_RESOLUTION[args.size]
    if args.device == "cpu" and args.mixed_precision == "fp16":
        sys.exit("--mixed-precision fp16 needs --device cuda (ours would train in fp32 on the CPU, the script fail)")
    if args.steps <= args.warmup + 1:
        sys.exit(f"--steps must exceed --warmup + 1 ({args.warmup + 1}) to leave an interval to time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, threads=None)
    parser.add_argument("--pairs", type=int, default=3, help="runs of each program, alternately")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per job")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of steps/s")
    parser.add_argument("--size", choices=list(NATIVE_RESOLUTION), help="builtin model (CPU: small, CUDA: full)")
    parser.add_argument("--resolution", type=int, help="default: the model's own (small 128, full 512)")
    parser.add_argument("--batch-size", type=int, help="default: 2 on the CPU, 1 on CUDA")
    parser.add_argument(
        "--mixed-precision", choices=["no", "fp16", "bf16"], help="default: no on the CPU, fp16 on CUDA"
    )
    parser.add_argument("--center-crop", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--checkpointing-steps", type=int, default=500, help="both save their training state so often")
    parser.add_argument("--photo-side", type=int, help="height of the drawn photos (default: the resolution)")
    parser.add_argument("--score", action="store_true", help="let ours score its samples, as the service does")
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = parser.parse_args()
    resolve_defaults(args)
    if not SCRIPT.exists():
        sys.exit(f"{SCRIPT.relative_to(REPO)} is missing: run scripts/get-train-dreambooth first")
    shim = not torchvision_imports()
    model, photos = prepare(args)
    pairs, saved = run_pairs(args, model, photos, shim)
    summed = summary(pairs)
    print(report(args, pairs, summed, saved, shim))
    if args.json:
        commands = {
            "ours": ours_command(args, model, photos, args.work_dir / "real-script" / "out-ours"),
            "script": script_command(args, model, photos, args.work_dir / "real-script" / "out-script"),
        }
        settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
        document = {
            "settings": settings,
            "script_source": (VENDOR / "SOURCE").read_text() if (VENDOR / "SOURCE").exists() else None,
            "torchvision": "stand-in" if shim else "real",
            "commands": {side: [sys.executable, "-m", "bench.step_clock", *c] for side, c in commands.items()},
            "pairs": pairs,
            "summary": summed,
            "saved_mb": saved,
        }
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()

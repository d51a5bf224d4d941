"""Peak memory of full-size Stable Diffusion training with the memory savers, against the goals.

    python bench/memory_goals.py --device cuda               # the goals: a GPU, SD 1.5's architecture at 512 px
    python bench/memory_goals.py --mixed-precision bf16      # a stand-in on the CPU (see below)
    python bench/memory_goals.py                             # the CPU in fp32: an upper bound

The model is `dreambooth make-model --size full`: SD 1.5's UNet, VAE and text encoder from their
configs with random weights (weights do not change speed or memory). Each configuration runs the
real training loop (worker/dreambooth/train.py) in a fresh process at batch 1, with 8-bit Adam,
mixed precision (fp16 unless told) and gradient checkpointing, `memory_profile` none (so the savers
are exactly these), stopped after the timed steps (before sampling and export):

- `UNet only`: goal under 10 GB;
- `+ text encoder`: goal under 12 GB.

On CUDA the memory is torch.cuda.max_memory_allocated over the whole run (model loading, latent
and prompt caching, training). On the CPU it is the process's peak RSS, with the process's own
baseline (Python, torch and the libraries, measured before the model loads) beside it; RSS also
keeps memory the allocator has freed but not handed back, so it overstates what was in use. The core has
no fp16 on the CPU and trains in fp32 there: activations and the frozen VAE and text encoder then
take twice their GPU size, an upper bound. With `--mixed-precision bf16` the CPU run keeps the same
tensors at the same sizes as a GPU's fp16 run (bf16 is 2 bytes too): the closest stand-in a CPU
gives, though RSS also counts what the CPU kernels allocate and the allocator keeps.
"""

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.lora_memory import memory_now_mb, peak_memory_mb, timed_core_steps  # noqa: E402

CONFIGS = {
    "UNet only": ({"train_text_encoder": False}, 10),
    "+ text encoder": ({"train_text_encoder": True}, 12),
}


def measure(args) -> dict:
    """One configuration's run, in this fresh process."""
    import torch

    import worker.dreambooth.train  # noqa: F401  (the libraries it loads belong in the baseline)

    torch.set_num_threads(args.threads)
    baseline = memory_now_mb("cpu")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    settings, _goal = CONFIGS[args.child]
    times = timed_core_steps(
        Path(args.work_dir), "builtin-full", args.steps + 1, "out-goals",
        resolution=args.resolution, train_batch_size=args.batch_size, learning_rate=1e-6, use_8bit_adam=True,
        mixed_precision=args.mixed_precision, gradient_checkpointing=True, device=args.device, **settings,
    )
    # note: the first step also builds the 8-bit state
    result = {"s_per_step": statistics.median(times[1:]), "peak_mb": peak_memory_mb(args.device)}
    if args.device == "cpu":
        result["baseline_mb"] = baseline
    return result


def parameter_count(folder: Path) -> int:
    """Parameters in a model folder's safetensors files, from their headers."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total


def trained_parameters(args, name: str) -> int:
    model = Path(args.work_dir) / "builtin-full"
    parts = ["unet"] + (["text_encoder"] if CONFIGS[name][0]["train_text_encoder"] else [])
    return sum(parameter_count(model / part) for part in parts)


def spawn(args, name: str) -> dict:
    command = [sys.executable, __file__, "--child", name] + [
        "--device", args.device, "--resolution", str(args.resolution), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--threads", str(args.threads), "--work-dir", args.work_dir,
        "--mixed-precision", args.mixed_precision,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def report(args, results: dict[str, dict]) -> str:
    from bench.train_speed import machine

    cpu = args.device == "cpu"
    memory = "peak RSS" if cpu else "CUDA max allocated"
    lines = [
        f"- machine: {machine(args)}",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{shlex.join(['python', 'bench/memory_goals.py', *sys.argv[1:]])}`",
        (
            f"- the training loop on builtin:full (SD 1.5's architecture, random weights) at {args.resolution} px, "
            f"batch {args.batch_size}, 8-bit Adam, mixed precision {args.mixed_precision}"
            + (" (the core trains in fp32 on the CPU)" if cpu and args.mixed_precision == "fp16" else "")
            + f", gradient checkpointing; s/step is the median of {args.steps} steps after one warm-up step"
        ),
        "",
        f"| configuration | trained parameters | {memory} GiB | " + ("process baseline GiB | " if cpu else "")
        + "goal | s/step |",
        "| --- | ---: | ---: | " + ("---: | " if cpu else "") + "---: | ---: |",
    ]
    for name, result in results.items():
        cells = [name, f"{trained_parameters(args, name):,}", f"{result['peak_mb'] / 1024:.2f}"]
        if cpu:
            cells.append(f"{result['baseline_mb'] / 1024:.2f}")
        cells += [f"under {CONFIGS[name][1]} GB", f"{result['s_per_step']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--mixed-precision", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (CPU)")
    parser.add_argument("--work-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "dreambooth-bench"))
    parser.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return

    from worker.dreambooth.tiny import make_model

    model = Path(args.work_dir) / "builtin-full"
    if not model.exists():
        make_model(model, "full")
    names = [args.only] if args.only else list(CONFIGS)
    print(report(args, {name: spawn(args, name) for name in names}))


if __name__ == "__main__":
    main()

"""Peak memory of full-size Stable Diffusion training with the memory savers, against the goals.

    python -m bench.memory_goals --device cuda               # the goals: a GPU, SD 1.5's architecture at 512 px
    python -m bench.memory_goals --mixed-precision bf16      # a stand-in on the CPU (see below)
    python -m bench.memory_goals                             # the CPU in fp32: an upper bound

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
import json
import math
import os
import statistics
from pathlib import Path

from bench.common import (
    add_common_arguments,
    command_line,
    machine,
    measure_each,
    memory_now_mb,
    peak_memory_mb,
    print_result,
    timed_core_steps,
    utc_now,
)

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
        args.work_dir,
        args.work_dir / f"builtin-{args.size}",
        args.steps + 1,
        "out-goals",
        resolution=args.resolution,
        train_batch_size=args.batch_size,
        learning_rate=1e-6,
        use_8bit_adam=True,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=True,
        device=args.device,
        **settings,
    )
    # note: the first step also builds the 8-bit state
    result = {
        "s_per_step": statistics.median(times[1:]),
        "peak_mb": peak_memory_mb(args.device),
        "first_step_s": times[0],  # note: loading, copying and caching included
    }
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
    model = args.work_dir / f"builtin-{args.size}"
    parts = ["unet"] + (["text_encoder"] if CONFIGS[name][0]["train_text_encoder"] else [])
    return sum(parameter_count(model / part) for part in parts)


FORWARDED = ("device", "size", "resolution", "batch_size", "steps", "threads", "work_dir", "mixed_precision")


def report(args, results: dict[str, dict]) -> str:
    cpu = args.device == "cpu"
    memory = "peak RSS" if cpu else "CUDA max allocated"
    model = "builtin:full (SD 1.5's architecture, random weights)" if args.size == "full" else f"builtin:{args.size}"
    lines = [
        f"- machine: {machine(args.device, args.threads)}",
        f"- date: {utc_now()}",
        f"- command: `{command_line('bench.memory_goals')}`",
        (
            f"- the training loop on {model} at {args.resolution} px, "
            f"batch {args.batch_size}, 8-bit Adam, mixed precision {args.mixed_precision}"
            + (" (the core trains in fp32 on the CPU)" if cpu and args.mixed_precision == "fp16" else "")
            + f", gradient checkpointing; s/step is the median of {args.steps} steps after one warm-up step"
        ),
        "",
        f"| configuration | trained parameters | {memory} GiB | "
        + ("process baseline GiB | " if cpu else "")
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
    add_common_arguments(parser, threads=os.cpu_count())
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="full", help="the builtin model")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--mixed-precision", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print_result(measure(args))
        return

    results = measure_each("bench.memory_goals", [args.only] if args.only else list(CONFIGS), args, FORWARDED)
    print(report(args, results))
    if args.json:
        for name, result in results.items():
            result["trained_parameters"] = trained_parameters(args, name)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

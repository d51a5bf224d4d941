"""SDXL training: peak memory and speed of LoRA rank 32 and of full UNet fine-tuning, against the goals.

    python -m bench.sdxl_memory --device cuda                                # the goals: SDXL's real size, 1024 px
    python -m bench.sdxl_memory --size tiny-sdxl --resolution 64 --steps 2   # a CPU stand-in (the same code paths)

The model is `dreambooth make-model --model full-sdxl`: SDXL base 1.0's UNet, VAE and both text encoders
from their configs with random weights (weights do not change speed or memory). Each configuration runs
the real training loop (worker/dreambooth/train.py) in a fresh process at batch 1, mixed precision fp16,
cached latents (centre crop) and cached prompt embeddings (text encoders frozen), `memory_profile` none
(so the savers are exactly these), stopped after the timed steps (before sampling and export):

- `LoRA r32, checkpointing`: peak memory, goal under 10 GB;
- `LoRA r32`: steps per second without checkpointing, goal at least 3 on an H100;
- `full UNet, 8-bit Adam, checkpointing`: peak memory (no goal: what full fine-tuning costs).

On CUDA the memory is torch.cuda.max_memory_allocated over the whole run; on the CPU the process's peak
RSS (the core trains in fp32 there), so CPU figures only show that the paths run.
"""

import argparse
import json
import os
import statistics
from pathlib import Path

from bench.common import (
    add_common_arguments,
    measure_each,
    peak_memory_mb,
    print_result,
    report_header,
    timed_core_steps,
)

LORA = {"training_method": "lora", "lora_rank": 32, "learning_rate": 1e-4}
# name -> (settings, memory goal in GB or None, speed goal in steps/s or None)
CONFIGS = {
    "LoRA r32, checkpointing": ({**LORA, "gradient_checkpointing": True}, 10, None),
    "LoRA r32": ({**LORA, "gradient_checkpointing": False}, None, 3),
    "full UNet, 8-bit Adam, checkpointing": (
        {"training_method": "full", "use_8bit_adam": True, "gradient_checkpointing": True, "learning_rate": 1e-6},
        None,
        None,
    ),
}


def measure(args) -> dict:
    """One configuration's run, in this fresh process."""
    import torch

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    settings, _, _ = CONFIGS[args.child]
    times = timed_core_steps(
        args.work_dir,
        args.work_dir / f"builtin-{args.size}",
        args.steps + 1,
        "out-sdxl",
        resolution=args.resolution,
        train_batch_size=1,
        mixed_precision="fp16",
        device=args.device,
        train_text_encoder=False,
        **settings,
    )
    # note: the first step also builds the optimizer's state and, on a GPU, picks the kernels
    seconds = statistics.median(times[1:])
    return {"s_per_step": seconds, "steps_per_s": 1 / seconds, "peak_mb": peak_memory_mb(args.device)}


FORWARDED = ("device", "size", "resolution", "steps", "threads", "work_dir")


def report(args, results: dict[str, dict]) -> str:
    memory = "peak RSS" if args.device == "cpu" else "CUDA max allocated"
    lines = [
        *report_header("bench.sdxl_memory", args.device, args.threads),
        f"- the training loop on builtin:{args.size} at {args.resolution} px, batch 1, fp16 mixed precision "
        f"(fp32 on the CPU), cached latents and embeddings; steps/s from the median of {args.steps} steps after "
        "one warm-up step",
        "",
        f"| configuration | {memory} GB | memory goal | steps/s | speed goal |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        _, memory_goal, speed_goal = CONFIGS[name]
        lines.append(
            f"| {name} | {result['peak_mb'] * 2**20 / 1e9:.2f} | "
            f"{f'under {memory_goal} GB' if memory_goal else '-'} | {result['steps_per_s']:.2f} | "
            f"{f'at least {speed_goal} (H100)' if speed_goal else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, threads=os.cpu_count())
    parser.add_argument("--size", choices=["tiny-sdxl", "full-sdxl"], default="full-sdxl", help="the builtin model")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--only", choices=list(CONFIGS), action="append", help="run these configurations only")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print_result(measure(args))
        return

    results = measure_each("bench.sdxl_memory", args.only or list(CONFIGS), args, FORWARDED)
    print(report(args, results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

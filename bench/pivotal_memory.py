"""Pivotal tuning against Dreambooth with the text encoder, at the same settings: peak memory and time per step.

    python -m bench.pivotal_memory --device cuda                          # SD 1.5's architecture at 512 px
    python -m bench.pivotal_memory --size tiny --resolution 64 --steps 2  # a CPU stand-in (the same code paths)

The study (shared/STUDY.md, finding 8) ran textual inversion, then Dreambooth, as a way to fit good training
into a 16 GB GPU. Both configurations run the real training loop (worker/dreambooth/train.py) in a fresh process
with the study's 16 GB savers (8-bit Adam, fp16 mixed precision, gradient checkpointing), batch 1, cached
latents, `memory_profile` none, and stop after the timed steps (before the final samples and export):

- `Dreambooth + text encoder`: full fine-tuning of the UNet and the text encoder;
- `pivotal`: textual inversion (the new token's embedding rows), then full fine-tuning of the UNet with the
  text encoder frozen; the same number of steps in each phase.

On CUDA the memory is torch.cuda.max_memory_allocated over the whole run; on the CPU the process's peak RSS
(the core trains in fp32 there).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.common import (
    add_common_arguments,
    drawn_photos,
    measure_each,
    peak_memory_mb,
    print_result,
    report_header,
)

SAVERS = {"use_8bit_adam": True, "mixed_precision": "fp16", "gradient_checkpointing": True, "learning_rate": 1e-6}
CONFIGS = {
    "Dreambooth + text encoder": {"training_method": "full", "train_text_encoder": True},
    "pivotal": {"training_method": "pivotal", "pivotal_second_phase": "full", "placeholder_token": "<rufus>"},
}
PROMPT = "a photo of <rufus> toy"


def measure(args) -> dict:
    """One configuration's run, in this fresh process: seconds per step in each phase and the peak memory."""
    import torch

    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.train import train

    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pivotal = args.child == "pivotal"
    # note: one warm-up step per phase, then the timed ones
    per_phase = args.steps + 1
    times: dict[str, list[float]] = {"inversion": [], "training": []}
    last = [time.perf_counter()]

    def on_progress(progress) -> None:
        if progress.phase in times:
            now = time.perf_counter()
            times[progress.phase].append(now - last[0])
            last[0] = now
        elif progress.phase == "sampling":
            last[0] = time.perf_counter()

    total = per_phase * (2 if pivotal else 1)
    config = TrainConfig(
        base_model=str(args.work_dir / f"builtin-{args.size}"),
        instance_images=drawn_photos(args.work_dir / "pivotal-photos", args.resolution),
        instance_prompt=PROMPT if pivotal else PROMPT.replace("<rufus>", "sks"),
        output_dir=args.work_dir / f"out-pivotal-{'p' if pivotal else 'd'}",
        models_dir=args.work_dir,
        resolution=args.resolution,
        center_crop=True,
        max_train_steps=per_phase + 1,
        textual_inversion_steps=per_phase,
        train_batch_size=1,
        seed=0,
        memory_profile="none",
        checkpointing_steps=None,
        validation_steps=10**6,
        device=args.device,
        **SAVERS,
        **CONFIGS[args.child],
    )
    train(config, on_progress=on_progress, should_stop=lambda: sum(map(len, times.values())) >= total)
    result = {"peak_mb": peak_memory_mb(args.device)}
    for phase, seconds in times.items():
        if seconds:
            result[f"{phase}_s_per_step"] = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return result


FORWARDED = ("device", "size", "resolution", "steps", "threads", "work_dir")


def report(args, results: dict[str, dict]) -> str:
    memory = "peak RSS" if args.device == "cpu" else "CUDA max allocated"
    lines = [
        *report_header("bench.pivotal_memory", args.device, args.threads),
        f"- the training loop on builtin:{args.size} at {args.resolution} px, batch 1, 8-bit Adam, fp16 mixed "
        "precision (fp32 on the CPU), gradient checkpointing, cached latents; s/step is the median of "
        f"{args.steps} steps per phase after one warm-up step",
        "",
        f"| configuration | {memory} GiB | textual inversion s/step | Dreambooth s/step |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        inversion = result.get("inversion_s_per_step")
        lines.append(
            f"| {name} | {result['peak_mb'] / 1024:.2f} | {f'{inversion:.3f}' if inversion else '-'} | "
            f"{result['training_s_per_step']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, threads=os.cpu_count())
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="full", help="the builtin model")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print_result(measure(args))
        return

    results = measure_each("bench.pivotal_memory", CONFIGS, args, FORWARDED)
    print(report(args, results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

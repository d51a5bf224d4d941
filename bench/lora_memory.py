"""Memory of LoRA training against full fine-tuning, each in a fresh process.

    python -m bench.lora_memory                       # CPU: builtin small model, 128 px, batch 2
    python -m bench.lora_memory --loop unet           # the minimal UNet-only loop, with parameter counts
    python -m bench.lora_memory --device cuda --size full --resolution 512 --mixed-precision fp16

`--loop core` (the default) runs the real training loop (worker/dreambooth/train.py) with
training_method full and lora, stopped after the timed steps (before sampling and export), so the
peak is the training's, with the VAE, text encoder, cached latents and prompt embeddings in memory.

`--loop unet` runs a minimal loop over the UNet alone: no VAE and no text encoder are loaded
(latents and prompt embeddings are random tensors of the right shapes), and each step is a forward
pass, an MSE loss against random noise, a backward pass and a fused AdamW step. Full fine-tuning
updates every UNet weight; LoRA (worker/dreambooth/lora.py add_adapters) only the adapters, over a
frozen base that is cast to the half precision when mixed precision is on (as diffusers' LoRA
script does; full fine-tuning keeps fp32 weights under autocast, as the core does). It also reports
trainable parameters and optimizer state, and the memory in use once set up.

No loss scaling: only memory is measured. Peak memory is the process's peak RSS on the CPU (Python,
torch and the loaded weights included) and torch.cuda.max_memory_allocated on CUDA.
"""

import argparse
import json
import statistics
import time
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

METHODS = ("full", "lora")
HALF = {"fp16": "float16", "bf16": "bfloat16"}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(args) -> dict:
    """One method's run, in this (fresh) process."""
    import torch
    from diffusers import UNet2DConditionModel

    from worker.dreambooth.lora import LoraSettings, add_adapters, lora_parameters

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    half = getattr(torch, HALF[args.mixed_precision]) if args.mixed_precision in HALF else None
    unet = UNet2DConditionModel.from_pretrained(args.work_dir / f"builtin-{args.size}", subfolder="unet")
    unet.to(args.device).train()
    if args.child == "lora":
        if half is not None:
            unet.to(dtype=half)
        add_adapters(unet, (), LoraSettings(rank=args.rank))
        parameters = lora_parameters(unet)
    else:
        parameters = list(unet.requires_grad_(True).parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)
    setup = memory_now_mb(args.device)

    side, batch = args.resolution // 8, args.batch_size
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        latents = torch.randn(batch, 4, side, side, device=args.device)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (batch,), device=args.device)
        prompts = torch.randn(batch, 77, unet.config.cross_attention_dim, device=args.device)
        with torch.autocast(args.device, dtype=half, enabled=half is not None):
            prediction = unet(latents + noise, timesteps, prompts).sample
        torch.nn.functional.mse_loss(prediction.float(), noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    state = [t for values in optimizer.state.values() for t in values.values() if torch.is_tensor(t)]
    return {
        "total_params": sum(p.numel() for p in unet.parameters()),
        "trainable_params": sum(p.numel() for p in parameters),
        "weights_mb": tensor_bytes(unet.parameters()) / 2**20,
        "optimizer_state_mb": tensor_bytes(state) / 2**20,
        "setup_mb": setup,
        "peak_mb": peak_memory_mb(args.device),
        # note: the first step also builds the optimizer state and warms up kernels
        "s_per_step": statistics.median(times[1:] or times),
    }


def measure_core(args) -> dict:
    """One method's run through the real training loop (worker/dreambooth/train.py), in this fresh process:
    VAE, text encoder, cached latents and prompt embeddings included; stopped after `steps` steps, before
    sampling and export, so the peak is the training's."""
    import torch

    torch.set_num_threads(args.threads)
    times = timed_core_steps(
        args.work_dir,
        args.work_dir / f"builtin-{args.size}",
        args.steps,
        f"out-{args.child}",
        resolution=args.resolution,
        train_batch_size=args.batch_size,
        learning_rate=1e-4,
        training_method=args.child,
        lora_rank=args.rank,
        mixed_precision=args.mixed_precision,
        device=args.device,
    )
    return {
        "peak_mb": peak_memory_mb(args.device),
        "s_per_step": statistics.median(times[1:] or times),
        "first_step_s": times[0],  # note: loading, copying and caching included
    }


FORWARDED = (
    "device",
    "size",
    "resolution",
    "batch_size",
    "steps",
    "threads",
    "rank",
    "mixed_precision",
    "work_dir",
    "loop",
)


def report_core(args, results: dict[str, dict]) -> str:
    memory = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    lines = [
        f"- machine: {machine(args.device, args.threads)}",
        f"- date: {utc_now()}",
        f"- command: `{command_line('bench.lora_memory')}`",
        (
            f"- the training loop (worker/dreambooth/train.py) on builtin:{args.size} at {args.resolution} px, "
            f"batch {args.batch_size}, {args.steps} steps, mixed precision {args.mixed_precision}, UNet only; "
            f"LoRA rank {args.rank}"
        ),
        "",
        f"| method | {memory} MiB | s/step |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {method} | {r['peak_mb']:.0f} | {r['s_per_step']:.2f} |" for method, r in results.items()]
    full, lora = results["full"], results["lora"]
    saved = full["peak_mb"] - lora["peak_mb"]
    lines += ["", f"LoRA saves {saved:.0f} MiB of {memory} ({saved / full['peak_mb']:.0%})."]
    return "\n".join(lines)


def report(args, results: dict[str, dict]) -> str:
    memory = "CUDA max allocated" if args.device == "cuda" else "peak RSS"
    current = "CUDA allocated" if args.device == "cuda" else "RSS"
    lines = [
        f"- machine: {machine(args.device, args.threads)}",
        f"- date: {utc_now()}",
        f"- command: `{command_line('bench.lora_memory')}`",
        (
            f"- builtin:{args.size} UNet at {args.resolution} px, batch {args.batch_size}, {args.steps} steps, "
            f"mixed precision {args.mixed_precision}; LoRA rank {args.rank} on the UNet's attention projections"
        ),
        "",
        (
            f"| method | trainable params | UNet weights MiB | AdamW state MiB | {current} after setup MiB "
            f"| {memory} MiB | peak less setup MiB | s/step |"
        ),
        "| --- " + "| ---: " * 7 + "|",
    ]
    for method, r in results.items():
        cells = [
            method,
            f"{r['trainable_params']:,} of {r['total_params']:,}",
            f"{r['weights_mb']:.0f}",
            f"{r['optimizer_state_mb']:.1f}",
            f"{r['setup_mb']:.0f}",
            f"{r['peak_mb']:.0f}",
            f"{r['peak_mb'] - r['setup_mb']:.0f}",
            f"{r['s_per_step']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    full, lora = results["full"], results["lora"]
    saved = full["peak_mb"] - lora["peak_mb"]
    lines += ["", f"LoRA saves {saved:.0f} MiB of {memory} ({saved / full['peak_mb']:.0%})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--resolution", type=int, help="default: 64 for tiny, 128 for small, 512 for full")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument(
        "--loop",
        choices=["core", "unet"],
        default="core",
        help="core: the real training loop; unet: a minimal UNet-only loop that also counts parameters and "
        "optimizer state",
    )
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.resolution = args.resolution or {"tiny": 64, "small": 128, "full": 512}[args.size]
    if args.child:
        print_result(measure_core(args) if args.loop == "core" else measure(args))
        return

    results = measure_each("bench.lora_memory", METHODS, args, FORWARDED)
    print(report_core(args, results) if args.loop == "core" else report(args, results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

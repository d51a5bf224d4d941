"""What one optimizer step costs over the UNet's parameters, for each optimizer the loops use.

    python -m bench.optimizer_step                    # CPU: builtin small UNet (35M parameters)
    python -m bench.optimizer_step --text-encoder     # the UNet and the text encoder, as when both train
    python -m bench.optimizer_step --device cuda --size full

Explains the 8-bit rows of bench/train_speed.py: with `use_8bit_adam` both the core and the
reference step bitsandbytes' AdamW8bit, so its cost is the same on both sides and bounds the
speed-up. Optimizers:

- `torch AdamW`: torch.optim.AdamW with its defaults (the reference without 8-bit Adam; on the CPU
  that is the per-tensor implementation);
- `fused AdamW`: torch.optim.AdamW(fused=True) (the core without 8-bit Adam);
- `AdamW8bit`: bitsandbytes.optim.AdamW8bit over the parameters as they are (both loops with 8-bit
  Adam);
- `AdamW8bit, one flat tensor`: the same optimizer over one tensor holding all the parameters, to
  show whether the per-tensor calls or the per-element work cost the time.

Gradients are random and fixed; each optimizer steps `--warmup` times and then `--steps` timed times
(the median counts). Runs in one process: time is the point, not memory.
"""

import argparse
import statistics
import time

from bench.common import add_common_arguments, builtin_model, command_line, machine, utc_now


def load_parameters(args) -> list:
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    model = builtin_model(args.work_dir, args.size)
    modules = [UNet2DConditionModel.from_pretrained(model, subfolder="unet")]
    if args.text_encoder:
        modules.append(CLIPTextModel.from_pretrained(model, subfolder="text_encoder"))
    parameters = [p for module in modules for p in module.to(args.device).parameters()]
    generator = torch.Generator(args.device).manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator, device=args.device) * 1e-3
    return parameters


def optimizers(parameters: list):
    import bitsandbytes as bnb
    import torch

    fused_ok = parameters[0].device.type in ("cuda", "cpu")
    yield "torch AdamW", lambda: torch.optim.AdamW(parameters, lr=1e-6)
    if fused_ok:
        yield "fused AdamW", lambda: torch.optim.AdamW(parameters, lr=1e-6, fused=True)
    yield "AdamW8bit", lambda: bnb.optim.AdamW8bit(parameters, lr=1e-6)

    def flat():
        flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in parameters]))
        flat.grad = torch.cat([p.grad.reshape(-1) for p in parameters])
        return bnb.optim.AdamW8bit([flat], lr=1e-6)

    yield "AdamW8bit, one flat tensor", flat


def time_steps(optimizer, args) -> float:
    import torch

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    times = []
    for index in range(args.warmup + args.steps):
        sync()
        started = time.perf_counter()
        optimizer.step()
        sync()
        if index >= args.warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--text-encoder", action="store_true", help="step the text encoder's parameters too")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    parameters = load_parameters(args)
    count = sum(p.numel() for p in parameters)
    rows = []
    for name, build in optimizers(parameters):
        optimizer = build()
        seconds = time_steps(optimizer, args)
        rows.append((name, seconds))
        del optimizer
    what = "UNet and text encoder" if args.text_encoder else "UNet"
    lines = [
        f"- machine: {machine(args.device, args.threads)}",
        f"- date: {utc_now()}",
        f"- command: `{command_line('bench.optimizer_step')}`",
        f"- builtin:{args.size} {what}: {len(parameters)} tensors, {count:,} parameters; median of "
        f"{args.steps} steps after {args.warmup} warm-up steps",
        "",
        "| optimizer | ms/step | ns/parameter |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {seconds * 1e3:.1f} | {seconds * 1e9 / count:.2f} |" for name, seconds in rows]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

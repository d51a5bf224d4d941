"""Training speed and memory of the Dreambooth core, against a re-implementation of diffusers' script.

    python -m bench.train_speed                       # CPU: builtin small model, 128 px, batch 2
    python -m bench.train_speed --device cuda --size full --resolution 512 --mixed-precision fp16
    python -m bench.train_speed --rows 0,3 --no-cache-hit   # only some configurations, no end-to-end jobs

Every configuration runs in a fresh process (so peak memory is its own): a few warm-up steps, then
timed steps. Configurations are cumulative (UNet only; + prior preservation; + text encoder; + 8-bit
Adam; + gradient checkpointing) and each runs twice, through the core and through bench/reference_loop.py,
on the same model, photos, class images and settings. Class images are made beforehand (and timed:
class images/s). Last, one process runs two prior-preservation jobs with the same class prompt, as a
worker would, to time the class-image cache and the kept base model end to end.
"""

import argparse
import itertools
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.common import (
    add_common_arguments,
    builtin_model,
    command_line,
    drawn_photos,
    forwarded,
    machine,
    peak_memory_mb,
    print_result,
    spawn,
    utc_now,
)

INSTANCE_PROMPT = "a photo of sks toy"
CLASS_PROMPT = "a photo of a toy"
CONFIGS = [
    ("UNet only", {}),
    ("+ prior preservation", {"with_prior_preservation": True}),
    ("+ text encoder", {"train_text_encoder": True}),
    ("+ 8-bit Adam", {"use_8bit_adam": True}),
    ("+ gradient checkpointing", {"gradient_checkpointing": True}),
]


def cumulative_settings(index: int) -> dict:
    settings = {}
    for _, extra in CONFIGS[: index + 1]:
        settings.update(extra)
    return settings


# ---------------------------------------------------------------------- children (one measurement each)


def child_setup(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"


class StepClock:
    """Times optimizer steps after the warm-up (wall clock and process CPU time), and takes peak memory at the last."""

    def __init__(self, args):
        self.args, self.times, self.cpu_times, self.peak = args, [], [], None

    def step(self) -> None:
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        if len(self.times) == self.args.warmup + self.args.steps:
            self.peak = peak_memory(self.args.device)

    @property
    def done(self) -> bool:
        return len(self.times) >= self.args.warmup + self.args.steps

    def result(self, started: float) -> dict:
        # note: medians, so a burst of load from another process on a shared machine does not count; with one
        # torch thread the CPU time a step takes is its work alone, whatever else the machine is running
        return {
            # note: from the loop's start (the model loaded) to the first step's end: where a compile shows
            "first_step_s": self.times[0] - started,
            "steps_per_s": 1 / median_step(self.times[self.args.warmup - 1 :]),
            "steps_per_cpu_s": 1 / median_step(self.cpu_times[self.args.warmup - 1 :]),
            **self.peak,
        }


class Stopwatch:
    """Wall-clock and process CPU seconds since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> dict:
        return {"wall": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu}

    def rates(self, count: int) -> dict:
        return {kind: count / seconds for kind, seconds in self.elapsed().items()}


def median_step(times: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(times))


def peak_memory(device: str) -> dict:
    peak = {"peak_rss_mb": peak_memory_mb("cpu")}
    if device == "cuda":
        peak["peak_cuda_mb"] = peak_memory_mb("cuda")
    return peak


def run_ours(args, settings: dict) -> dict:
    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.train import train

    work = args.work_dir
    clock = StepClock(args)
    config = TrainConfig(
        **common_settings(args),
        **settings,
        base_model=str(work / f"builtin-{args.size}"),
        instance_images=tuple(sorted((work / "photos").iterdir())),
        output_dir=work / "out-ours",
        models_dir=work,
        cache_dir=work / "cache",
        memory_profile="none",
        checkpointing_steps=None,
        max_train_steps=args.warmup + args.steps,
        # note: no validation inside the timed steps (the reference samples none either)
        validation_steps=10**6,
        compile_unet="on" if args.compile else "off",
    )
    started = time.perf_counter()
    # note: stopping after the last timed step skips sampling and export, which are not being measured
    train(config, lambda p: clock.step() if p.phase == "training" else None, should_stop=lambda: clock.done)
    return clock.result(started)


def run_reference(args, settings: dict) -> dict:
    from bench.reference_loop import main, reference_args

    work = args.work_dir
    clock = StepClock(args)
    options = {**common_settings(args), **settings}
    options.pop("device")
    started = time.perf_counter()
    main(
        reference_args(
            **options,
            pretrained_model_name_or_path=str(work / f"builtin-{args.size}"),
            instance_data_dir=str(work / "photos"),
            class_data_dir=str(work / "class-reference"),
            max_train_steps=args.warmup + args.steps,
            device=args.device,
        ),
        lambda step, loss: clock.step(),
    )
    return clock.result(started)


def common_settings(args) -> dict:
    return dict(
        instance_prompt=INSTANCE_PROMPT,
        class_prompt=CLASS_PROMPT,
        num_class_images=args.class_images,
        resolution=args.resolution,
        train_batch_size=args.batch_size,
        learning_rate=5e-6,
        lr_scheduler="constant",
        lr_warmup_steps=0,
        center_crop=True,
        seed=0,
        mixed_precision=args.mixed_precision,
        sample_batch_size=args.sample_batch_size,
        device=args.device,
    )


def run_class_images(args) -> dict:
    """Class images/s: the core (DPM-Solver++, 25 steps) into the cache; the reference (model default) alike."""
    import torch
    from accelerate import Accelerator

    from bench.reference_loop import generate_class_images, reference_args
    from worker.dreambooth.components import load_components
    from worker.dreambooth.prior import ClassImageSpec, class_image_folder, fill_class_images, generation_pipeline

    work = args.work_dir
    shutil.rmtree(work / "cache", ignore_errors=True)
    parts = load_components(str(work / f"builtin-{args.size}"), work)
    spec = ClassImageSpec(parts.identity, CLASS_PROMPT, None, args.resolution, 25, 7.5)
    folder = class_image_folder(work / "cache", spec)
    clock = Stopwatch()
    made = fill_class_images(
        folder,
        spec,
        args.class_images,
        lambda: generation_pipeline(parts, torch.device(args.device)),
        args.sample_batch_size,
    )
    ours = clock.rates(made)
    # note: the reference trains on the very same class images
    shutil.rmtree(work / "class-reference", ignore_errors=True)
    (work / "class-reference").mkdir()
    for image in sorted(folder.glob("*.jpg")):
        shutil.copy(image, work / "class-reference" / image.name)

    reference_dir = work / "class-reference-generated"
    shutil.rmtree(reference_dir, ignore_errors=True)
    accelerator = Accelerator(cpu=args.device == "cpu")
    clock = Stopwatch()
    reference_options = reference_args(
        pretrained_model_name_or_path=str(work / f"builtin-{args.size}"),
        class_data_dir=str(reference_dir),
        class_prompt=CLASS_PROMPT,
        num_class_images=args.class_images,
        resolution=args.resolution,
    )
    generate_class_images(reference_options, accelerator)
    return {"ours": ours, "reference": clock.rates(args.class_images)}


def run_cache_hit(args) -> dict:
    """Two prior-preservation jobs with the same class prompt in one process, as a worker runs them."""
    from worker.dreambooth.components import ComponentCache
    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.train import train

    work = args.work_dir
    shutil.rmtree(work / "cache-e2e", ignore_errors=True)
    models = ComponentCache()
    settings = {**common_settings(args), "num_class_images": args.e2e_class_images}
    times, generated = [], []
    for job in (1, 2):
        config = TrainConfig(
            **settings,
            base_model=str(work / f"builtin-{args.size}"),
            instance_images=tuple(sorted((work / "photos").iterdir())),
            output_dir=work / f"out-e2e-{job}",
            models_dir=work,
            cache_dir=work / "cache-e2e",
            with_prior_preservation=True,
            max_train_steps=args.e2e_steps,
            # note: one sample at the end, as before validation across the run existed
            validation_steps=args.e2e_steps,
            validation_prompts=(INSTANCE_PROMPT,),
            validation_inference_steps=25,
            memory_profile="none",
            checkpointing_steps=None,
        )
        clock = Stopwatch()
        generated.append(train(config, models=models).class_images_generated)
        times.append(clock.elapsed())
    return {"first": times[0], "second": times[1], "generated": generated}


CHILDREN = {"class-images": run_class_images, "cache-hit": run_cache_hit}


def child_main(args) -> None:
    child_setup(args)
    if args.child in CHILDREN:
        result = CHILDREN[args.child](args)
    else:
        runner = run_ours if args.child == "ours" else run_reference
        result = runner(args, cumulative_settings(args.config))
    print_result(result)


# ---------------------------------------------------------------------- the orchestrating process


FORWARDED = (
    "device",
    "size",
    "resolution",
    "batch_size",
    "steps",
    "warmup",
    "threads",
    "mixed_precision",
    "class_images",
    "sample_batch_size",
    "e2e_class_images",
    "e2e_steps",
    "work_dir",
)


def spawn_child(args, child: str, config: int | None = None) -> dict:
    arguments = ["--child", child, *forwarded(args, FORWARDED), *(["--compile"] if args.compile else [])]
    if config is not None:
        arguments += ["--config", str(config)]
    return spawn("bench.train_speed", arguments, args.threads)


def prepare(args) -> None:
    """The model and four photos (non-square, so the crops matter), made once in the work folder."""
    builtin_model(args.work_dir, args.size)
    shutil.rmtree(args.work_dir / "photos", ignore_errors=True)
    drawn_photos(args.work_dir / "photos", args.resolution, aspect=5 / 4)


def speed_cells(ours: dict, reference: dict, key: str) -> list[str]:
    return [f"{ours[key]:.2f}", f"{reference[key]:.2f}", f"{ours[key] / reference[key]:.2f}x"]


def report(args, rows: list[tuple], classes: dict | None, e2e: dict | None, command: str) -> str:
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    key = "peak_cuda_mb" if args.device == "cuda" else "peak_rss_mb"
    by_cpu = args.device == "cpu"
    lines = [
        f"- machine: {machine(args.device, args.threads)}",
        f"- date: {utc_now()}",
        f"- command: `{command}`",
        *(["- ours: the UNet's training steps torch.compile'd (compile_unet)"] if args.compile else []),
        f"- model: builtin:{args.size} at {args.resolution} px, batch {args.batch_size}, center crop, "
        f"mixed precision {args.mixed_precision}; steps/s from the median of {args.steps} timed steps after "
        f"{args.warmup} warm-up steps (best of {args.repeats} runs), by wall clock"
        + (" and by the process's CPU time" if by_cpu else "")
        + "; "
        f"prior preservation with {args.class_images} class images",
        "",
        "| configuration | ours steps/s | reference steps/s | speed-up | "
        + ("ours steps/CPU-s | reference steps/CPU-s | speed-up by CPU time | " if by_cpu else "")
        + f"ours {memory} | reference {memory} |",
        "| --- " + "| ---: " * (8 if by_cpu else 5) + "|",
    ]
    for name, ours, reference in rows:
        cells = [name, *speed_cells(ours, reference, "steps_per_s")]
        if by_cpu:
            cells += speed_cells(ours, reference, "steps_per_cpu_s")
        cells += [f"{ours[key]:.0f}", f"{reference[key]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    firsts = [f"{name}: ours {ours['first_step_s']:.1f} s, reference {reference['first_step_s']:.1f} s"
              for name, ours, reference in rows]  # fmt: skip
    lines += ["", "From the loop's start to the first step's end (a compile shows here): " + "; ".join(firsts) + "."]
    if classes:
        ours, reference = classes["ours"], classes["reference"]
        lines += [
            "",
            f"Class images: ours {ours['wall']:.2f} images/s ({ours['cpu']:.2f} per CPU-s; DPM-Solver++, 25 steps, "
            f"batch {args.sample_batch_size}); reference {reference['wall']:.2f} images/s ({reference['cpu']:.2f} "
            "per CPU-s; the model's default scheduler and steps, batch 4).",
        ]
    if e2e:
        first, second = e2e["first"], e2e["second"]
        lines += [
            "",
            f"Cache hit, end to end (prior preservation, {args.e2e_class_images} class images, {args.e2e_steps} "
            f"steps, one 25-step sample, export): first job {first['wall']:.1f} s ({first['cpu']:.1f} CPU-s; "
            f"generated {e2e['generated'][0]}), second job with the same class prompt {second['wall']:.1f} s "
            f"({second['cpu']:.1f} CPU-s; generated {e2e['generated'][1]}): {first['wall'] / second['wall']:.1f}x "
            f"faster ({first['cpu'] / second['cpu']:.1f}x by CPU time).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--resolution", type=int, help="default: 64 for tiny, 128 for small, 512 for full")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration and side; the best counts")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument(
        "--rows",
        default=",".join(str(i) for i in range(len(CONFIGS))),
        help="the configurations to run, by index: " + ", ".join(f"{i} {name}" for i, (name, _) in enumerate(CONFIGS)),
    )
    parser.add_argument("--class-images", type=int, default=8, help="class images for the speed runs")
    parser.add_argument("--sample-batch-size", type=int, default=8, help="class images generated per batch")
    parser.add_argument(
        "--cache-hit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time two prior-preservation jobs end to end (class-image cache)",
    )
    parser.add_argument("--e2e-class-images", type=int, default=32, help="class images for the cache-hit jobs")
    parser.add_argument("--e2e-steps", type=int, default=20, help="training steps of the cache-hit jobs")
    parser.add_argument("--compile", action="store_true", help="ours with torch.compile'd training steps")
    parser.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.resolution = args.resolution or {"tiny": 64, "small": 128, "full": 512}[args.size]
    if args.child:
        child_main(args)
        return

    command = command_line("bench.train_speed")
    indices = [int(index) for index in args.rows.split(",")]
    prepare(args)
    # note: every configuration after the first trains with prior preservation, on class images made here
    classes = spawn_child(args, "class-images") if max(indices) > 0 else None
    rows = []
    for index in indices:
        name = CONFIGS[index][0]
        runs = [(spawn_child(args, "ours", index), spawn_child(args, "reference", index)) for _ in range(args.repeats)]
        print(f"{name}: {runs}", flush=True)
        # note: the best of the repeats, the run least disturbed by whatever else the machine was doing
        best = [max((run[side] for run in runs), key=lambda r: r["steps_per_s"]) for side in (0, 1)]
        rows.append((name, *best))
    e2e = spawn_child(args, "cache-hit") if args.cache_hit else None
    text = report(args, rows, classes, e2e, command)
    print(text)
    if args.json:
        rows_json = [{"configuration": name, "ours": ours, "reference": reference} for name, ours, reference in rows]
        args.json.write_text(json.dumps({"rows": rows_json, "class_images": classes, "cache_hit": e2e}, indent=2))


if __name__ == "__main__":
    main()

"""Class images for prior preservation: made once, shared across jobs and processes, evicted by age."""

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from worker.dreambooth.config import Progress, TrainConfig
from worker.dreambooth.prior import (
    ClassImageSpec,
    class_image_cache_key,
    class_image_folder,
    evict_class_images,
    fill_class_images,
    generation_pipeline,
)
from worker.dreambooth.train import train

SPEC = ClassImageSpec("model@abc", "a photo of a toy", None, 64, 2, 7.5)


class FakePipeline:
    """Stands in for a StableDiffusionPipeline: one flat image per generator, coloured by its seed."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, prompts, generator, height, width, **_):
        self.batches.append(len(prompts))
        images = [Image.new("RGB", (width, height), (g.initial_seed() * 10, 0, 0)) for g in generator]
        return SimpleNamespace(images=images)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cache_key_covers_everything_that_shapes_the_images():
    changes = dict(
        model="model@def",
        prompt="a dog",
        negative_prompt="blurry",
        resolution=128,
        num_inference_steps=3,
        guidance_scale=5.0,
        scheduler="ddim",
        seed=1,
    )
    keys = {class_image_cache_key(dataclasses.replace(SPEC, **{k: v})) for k, v in changes.items()}
    assert len(keys | {class_image_cache_key(SPEC)}) == len(changes) + 1
    assert class_image_cache_key(SPEC) == class_image_cache_key(dataclasses.replace(SPEC))


def test_fill_makes_only_missing_images_in_batches(tmp_path: Path):
    pipeline, made = FakePipeline(), []
    folder = class_image_folder(tmp_path, SPEC)
    make = lambda: made.append(1) or pipeline
    assert fill_class_images(folder, SPEC, 5, make, batch_size=2) == 5
    assert pipeline.batches == [2, 2, 1]
    assert names(folder) == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg", "00004.jpg", "spec.json"]
    progress = []
    assert fill_class_images(folder, SPEC, 7, make, 2, lambda *p: progress.append(p)) == 2
    assert pipeline.batches == [2, 2, 1, 2] and progress == [(0, 2), (2, 2)]
    assert fill_class_images(folder, SPEC, 7, make, 2) == 0
    assert len(made) == 2  # note: nothing missing, so no pipeline was even built
    with Image.open(folder / "00006.jpg") as image:
        assert image.size == (64, 64) and image.getpixel((0, 0))[0] > 50  # seed 6 made it


def test_stop_ends_filling_between_batches(tmp_path: Path):
    folder = tmp_path / "f"
    calls = iter([False, True])
    assert fill_class_images(folder, SPEC, 4, FakePipeline, 2, should_stop=lambda: next(calls)) is None
    assert len(list(folder.glob("*.jpg"))) == 2


def test_eviction_removes_least_recently_used_first(tmp_path: Path):
    root = tmp_path / "class-images"
    now = time.time()
    folders = {}
    for name, age in (("old", 4000), ("older", 5000), ("recent", 10), ("in-use", 9000)):
        folders[name] = root / name
        folders[name].mkdir(parents=True)
        (folders[name] / "00000.jpg").write_bytes(b"x" * 100)
        os.utime(folders[name], (now - age, now - age))
    removed = evict_class_images(tmp_path, max_bytes=250, keep=folders["in-use"], grace_seconds=600)
    # note: 400 bytes over 250: the oldest evictable folder goes, then the next; the kept and the recent stay
    assert removed == [folders["older"], folders["old"]]
    assert names(root) == ["in-use", "recent"]
    assert evict_class_images(tmp_path, max_bytes=250, keep=folders["in-use"], grace_seconds=600) == []


def test_eviction_finishes_deleting_what_a_killed_process_left(tmp_path: Path):
    root = tmp_path / "class-images"
    (root / ".evicted-0badf00d").mkdir(parents=True)
    (root / ".evicted-0badf00d" / "00000.jpg").write_bytes(b"x" * 100)
    (root / "kept").mkdir()
    assert evict_class_images(tmp_path, max_bytes=10**6, keep=root / "kept") == []
    assert names(root) == ["kept"]


def fill_in_child(models_dir: Path, cache: Path, barrier: Path, name: str, results) -> None:
    """A second process's part: load the model, wait for the other process, fill the same key."""
    from worker.dreambooth.components import load_components

    parts = load_components("builtin:tiny", models_dir)
    spec = ClassImageSpec(parts.identity, "a photo of a toy", None, 64, 2, 7.5)
    (barrier / name).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    make = lambda: generation_pipeline(parts, torch.device("cpu"))
    results.put(fill_class_images(class_image_folder(cache, spec), spec, 6, make, 2))


def test_two_processes_filling_one_key_end_with_one_whole_set(models_dir: Path, tmp_path: Path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # note: forked, so the children start with torch and diffusers already imported (seconds saved each)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [
        context.Process(target=fill_in_child, args=(models_dir, tmp_path / "cache", barrier, name, results))
        for name in ("a", "b")
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    generated = [results.get(timeout=5) for _ in processes]
    assert 6 <= sum(generated) <= 12
    (folder,) = (tmp_path / "cache" / "class-images").iterdir()
    assert names(folder) == [f"{i:05d}.jpg" for i in range(6)] + ["spec.json"]  # note: no temporary files left

    # note: each file is the image its index's seed makes, whichever process wrote it
    from worker.dreambooth.components import load_components

    parts = load_components("builtin:tiny", models_dir)
    spec = ClassImageSpec(parts.identity, "a photo of a toy", None, 64, 2, 7.5)
    assert class_image_folder(tmp_path / "cache", spec) == folder
    fill_class_images(tmp_path / "again", spec, 6, lambda: generation_pipeline(parts, torch.device("cpu")), 6)
    for index in range(6):
        with Image.open(folder / f"{index:05d}.jpg") as a, Image.open(tmp_path / "again" / f"{index:05d}.jpg") as b:
            assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2


def test_prior_preservation_job_generates_only_missing_class_images(
    make_config: Callable[..., TrainConfig], photos: tuple[Path, ...], tmp_path: Path, component_cache
):
    cache = tmp_path / "cache"
    common = dict(
        with_prior_preservation=True,
        class_prompt="a photo of a toy",
        class_inference_steps=2,
        cache_dir=cache,
        max_train_steps=2,
        validation_inference_steps=2,
        train_batch_size=2,
    )
    progress: list[Progress] = []
    # note: one uploaded class photo, so 3 of the 4 class images are generated
    first = train(
        make_config(tmp_path / "1", num_class_images=4, class_images=photos[:1], **common),
        progress.append,
        models=component_cache,
    )
    assert first.class_images_generated == 3 and not first.stopped
    generating = [(p.step, p.total_steps) for p in progress if p.phase == "generating_class_images"]
    assert generating[0] == (0, 3) and generating[-1] == (3, 3)
    (folder,) = (cache / "class-images").iterdir()
    assert names(folder) == ["00000.jpg", "00001.jpg", "00002.jpg", "spec.json"]
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.jpg")}

    second = train(make_config(tmp_path / "2", num_class_images=3, **common), models=component_cache)
    assert second.class_images_generated == 0
    third = train(make_config(tmp_path / "3", num_class_images=5, **common), models=component_cache)
    assert third.class_images_generated == 2
    assert len(list(folder.glob("*.jpg"))) == 5
    assert all(stamps[p.name] == p.stat().st_mtime_ns for p in folder.glob("*.jpg") if p.name in stamps)


def test_prior_preservation_needs_a_class_prompt(make_config, tmp_path: Path):
    with pytest.raises(ValueError, match="class_prompt"):
        make_config(tmp_path, with_prior_preservation=True)

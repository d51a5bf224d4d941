"""The worker suites' fixtures: the builtin tiny model, four generated photos, and one short training run."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from worker.dreambooth.config import Progress, TrainConfig, TrainResult

# note: huggingface_hub reads this once at import, hence Hugging Face imports only after this line:
# inside fixtures here, and in the test modules (imported after this conftest)
os.environ["HF_HUB_OFFLINE"] = "1"

RESOLUTION = 64

# note: the tiny model's ops are too small to gain from a second thread, which only adds synchronisation
# (and stalls badly when another process holds the other core)
torch.set_num_threads(1)
EXIF_ORIENTATION = 0x0112
ROTATED_90 = 6


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder where builtin:tiny has been generated once for the session."""
    from worker.dreambooth.components import resolve_base_model

    folder = tmp_path_factory.mktemp("models")
    resolve_base_model("builtin:tiny", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """The builtin tiny model's diffusers folder."""
    return models_dir / "builtin-tiny"


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """Four photos of coloured shapes: odd sizes, PNG and JPEG, RGBA, and one EXIF-rotated."""
    folder = tmp_path_factory.mktemp("photos")
    red = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(red).ellipse((20, 8, 70, 58), fill="red")
    green = Image.new("RGB", (64, 80), "lightyellow")
    ImageDraw.Draw(green).rectangle((10, 20, 50, 70), fill="green")
    blue = Image.new("RGB", (100, 70), "white")
    ImageDraw.Draw(blue).polygon([(10, 60), (50, 5), (90, 60)], fill="blue")
    orange = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    ImageDraw.Draw(orange).ellipse((6, 16, 66, 56), fill="orange")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90
    paths = (folder / "red.png", folder / "green.png", folder / "blue.jpg", folder / "orange.png")
    red.save(paths[0])
    green.save(paths[1])
    blue.save(paths[2], quality=95, exif=exif)
    orange.save(paths[3])
    return paths


@pytest.fixture(scope="session")
def make_config(photos: tuple[Path, ...], models_dir: Path) -> Callable[..., TrainConfig]:
    """Build a fast CPU TrainConfig for builtin:tiny writing to `output_dir`, with overrides."""

    def build(output_dir: Path, **overrides) -> TrainConfig:
        settings = dict(
            base_model="builtin:tiny",
            instance_images=photos,
            instance_prompt="a photo of sks toy",
            output_dir=output_dir,
            models_dir=models_dir,
            resolution=RESOLUTION,
            max_train_steps=3,
            learning_rate=1e-3,
            seed=0,
            validation_inference_steps=4,
            device="cpu",
        )
        return TrainConfig(**{**settings, **overrides})

    return build


@pytest.fixture(scope="session")
def trained(
    make_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainConfig, TrainResult, list[Progress]]:
    """One finished run on cached latents (center crop), with two validation prompts."""
    from worker.dreambooth.train import train

    config = make_config(
        tmp_path_factory.mktemp("run"),
        center_crop=True,
        validation_prompts=("a photo of sks toy", "a sks toy on the beach"),
    )
    progress: list[Progress] = []
    return config, train(config, progress.append), progress


@pytest.fixture(scope="session")
def component_cache():
    """A base-model cache shared by the session's runs, as a worker keeps one between jobs."""
    from worker.dreambooth.components import ComponentCache

    return ComponentCache()

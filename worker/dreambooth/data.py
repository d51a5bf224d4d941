"""Instance photos as training tensors: PIL and torch only (no torchvision)."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def load_photo(path: Path, resolution: int) -> Image.Image:
    """Open a photo upright in RGB with its shortest side resized to `resolution`."""
    with Image.open(path) as file:
        image = ImageOps.exif_transpose(file).convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def to_tensor(
    image: Image.Image,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a resized photo to a square (center or random), maybe flip it, as CHW floats in [-1, 1]."""
    spare_x, spare_y = image.width - resolution, image.height - resolution
    if center_crop:
        left, top = spare_x // 2, spare_y // 2
    else:
        left = int(torch.randint(spare_x + 1, (), generator=generator))
        top = int(torch.randint(spare_y + 1, (), generator=generator))
    pixels = torch.from_numpy(np.array(image.crop((left, top, left + resolution, top + resolution))))
    pixels = pixels.permute(2, 0, 1).float() / 127.5 - 1.0
    if random_flip and torch.rand((), generator=generator) < 0.5:
        pixels = pixels.flip(-1)
    return pixels


def batches(count: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield index batches forever, reshuffling every epoch (batches wrap across epochs)."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(count, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]

"""What a training step is made of: photos as latents, prompts as embeddings, batches of indices.

PIL and torch only (no torchvision).
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ENCODE_BATCH = 8  # photos per VAE call when encoding a whole set up front


ORIGINAL_SIZE = "original_size"  # a loaded photo's info key: its (height, width) before resizing


def load_photo(path: Path, resolution: int) -> Image.Image:
    """Open a photo upright in RGB with its shortest side resized to `resolution` (info[ORIGINAL_SIZE]: the size
    it had, which SDXL is conditioned on)."""
    with Image.open(path) as file:
        image = ImageOps.exif_transpose(file).convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    resized.info[ORIGINAL_SIZE] = (image.height, image.width)
    return resized


def crop_origin(
    image: Image.Image, resolution: int, center_crop: bool, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """The (top, left) corner of a square crop of a resized photo: centred, or drawn from `generator`."""
    spare_x, spare_y = image.width - resolution, image.height - resolution
    if center_crop:
        return spare_y // 2, spare_x // 2
    left = int(torch.randint(spare_x + 1, (), generator=generator))
    top = int(torch.randint(spare_y + 1, (), generator=generator))
    return top, left


def time_ids(image: Image.Image, origin: tuple[int, int], resolution: int) -> list[int]:
    """SDXL's size and crop conditioning of a crop: original height and width, crop top and left, target size."""
    height, width = image.info.get(ORIGINAL_SIZE, (image.height, image.width))
    return [height, width, *origin, resolution, resolution]


def to_tensor(
    image: Image.Image,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    generator: torch.Generator | None = None,
    origin: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Crop a resized photo to a square (at `origin`, else center or random), maybe flip it, as CHW floats
    in [-1, 1]."""
    top, left = origin or crop_origin(image, resolution, center_crop, generator)
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


class LatentSource:
    """Scaled VAE latents of a photo set, drawn afresh from each photo's latent distribution, with each crop's
    time ids (see `time_ids`).

    When a photo's crop cannot vary (center crop, or a photo already square at the resolution), every
    photo is encoded once up front, flipped too when random_flip, and the VAE is not needed afterwards.
    """

    def __init__(
        self, vae: torch.nn.Module, photos: Sequence[Image.Image], resolution: int, center_crop: bool, random_flip: bool
    ):
        self.vae, self.photos = vae, list(photos)
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.scale = vae.config.scaling_factor
        self.precomputed = center_crop or all(photo.size == (resolution, resolution) for photo in self.photos)
        if self.precomputed:
            origins = [crop_origin(photo, resolution, center_crop=True) for photo in self.photos]
            self.time_ids = torch.tensor([time_ids(p, o, resolution) for p, o in zip(self.photos, origins)])
            tensors = [to_tensor(photo, resolution, True, False, origin=o) for photo, o in zip(self.photos, origins)]
            pixels = torch.stack(tensors)
            self.mean, self.std = self._encode(pixels)
            if random_flip:
                self.flipped_mean, self.flipped_std = self._encode(pixels.flip(-1))
            self.vae = None

    @property
    def needs_vae(self) -> bool:
        return not self.precomputed

    def __call__(
        self, indices: torch.Tensor, data_gen: torch.Generator, noise_gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, time ids) of the photos at `indices`: crops and flips from data_gen, the latent draw from
        noise_gen."""
        if self.precomputed:
            ids = self.time_ids[indices]
            mean, std = self.mean[indices], self.std[indices]
            if self.random_flip:
                flip = (torch.rand(len(indices), generator=data_gen) < 0.5).to(mean.device)[:, None, None, None]
                mean = torch.where(flip, self.flipped_mean[indices], mean)
                std = torch.where(flip, self.flipped_std[indices], std)
        else:
            tensors, rows = [], []
            for i in indices.tolist():
                photo = self.photos[i]
                origin = crop_origin(photo, self.resolution, self.center_crop, data_gen)
                tensors.append(to_tensor(photo, self.resolution, False, self.random_flip, data_gen, origin))
                rows.append(time_ids(photo, origin, self.resolution))
            mean, std = self._encode(torch.stack(tensors))
            ids = torch.tensor(rows)
        noise = torch.randn(mean.shape, generator=noise_gen, device=mean.device, dtype=mean.dtype)
        return (mean + std * noise) * self.scale, ids

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, stds = [], []
        for chunk in pixels.split(ENCODE_BATCH):
            dist = self.vae.encode(chunk.to(self.vae.device, self.vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)


def batch_order(
    count: int, batch_size: int, micro_steps: int, generator: torch.Generator, start_step: int
) -> Iterator[torch.Tensor]:
    """Index batches into the photo set; on resume, replayed up to where the saved run stopped."""
    order = batches(count, batch_size, generator)
    for _ in range(start_step * micro_steps):
        next(order)
    return order


class PromptEmbeddings:
    """The conditioning of the instance prompt (and the class prompt) expanded to a batch.

    The prompts are the same for every image of a half-batch, so the encoders run on the distinct
    prompts only: once up front when frozen, once per micro-step (with gradients) when trained.
    """

    def __init__(self, family, tokenizers: tuple, text_encoders: tuple, prompts: list[str], trained: bool):
        self.family, self.tokenizers, self.prompts = family, tokenizers, prompts
        self.text_encoders = text_encoders if trained else None
        if not trained:
            with torch.no_grad():
                self.cached = family.encode(tokenizers, text_encoders, prompts)

    def __call__(self, instances: int, classes: int):
        """The batch's Conditioning: `instances` rows of the instance prompt, then `classes` of the class prompt."""
        conditioning = (
            self.cached if self.text_encoders is None else self.family.encode(
                self.tokenizers, self.text_encoders, self.prompts
            )
        )  # fmt: skip
        which = torch.tensor([0] * instances + [1] * classes, device=conditioning.hidden.device)
        return conditioning.rows(which)

"""Photo loading and cropping."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.dreambooth.data import LatentSource, batches, load_photo, pixel_tensor, to_tensor


def test_load_photo_orients_converts_and_resizes(photos: tuple[Path, ...]):
    images = [load_photo(path, 64) for path in photos]
    assert all(image.mode == "RGB" and min(image.size) == 64 for image in images)
    assert images[0].size == (96, 64)
    assert images[2].size == (64, 91)  # note: the JPEG is 100x70 with an EXIF 90-degree rotation


def test_to_tensor_crops_to_a_square_in_range(photos: tuple[Path, ...]):
    image = load_photo(photos[0], 64)
    center = to_tensor(image, 64, center_crop=True, random_flip=False)
    assert center.shape == (3, 64, 64) and center.min() >= -1 and center.max() <= 1
    assert torch.equal(center, to_tensor(image, 64, center_crop=True, random_flip=False))
    crops = [to_tensor(image, 64, False, False, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(not torch.equal(crop, crops[0]) for crop in crops)


def test_random_flip_mirrors_some_crops(photos: tuple[Path, ...]):
    image = load_photo(photos[1], 64)
    plain = to_tensor(image, 64, center_crop=True, random_flip=False)
    flips = [to_tensor(image, 64, True, True, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(torch.equal(f, plain.flip(-1)) for f in flips) and any(torch.equal(f, plain) for f in flips)


def test_batches_cover_every_photo_each_epoch():
    stream = batches(4, 2, torch.Generator().manual_seed(0))
    for _ in range(3):
        epoch = torch.cat([next(stream), next(stream)])
        assert sorted(epoch.tolist()) == [0, 1, 2, 3]


class PoolingVAE(torch.nn.Module):
    """A VAE whose latent cell is the mean of its 8x8 pixels, counting the crops it encodes."""

    config = type("Config", (), {"scaling_factor": 1.0})
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.encoded, self.largest = 0, 0

    def encode(self, pixels: torch.Tensor):
        self.encoded += len(pixels)
        self.largest = max(self.largest, len(pixels))
        mean = torch.nn.functional.avg_pool2d(pixels, 8)
        dist = type("Dist", (), {"mean": mean, "std": torch.zeros_like(mean)})
        return type("Out", (), {"latent_dist": dist})


def _noisy_photo(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _pooled(photo: Image.Image, left: int, flipped: bool) -> torch.Tensor:
    crop = pixel_tensor(photo.crop((left, 0, left + 64, 64)))
    return torch.nn.functional.avg_pool2d(crop.flip(-1) if flipped else crop, 8)


def test_random_crops_are_drawn_from_crops_encoded_once_each():
    photo, vae = _noisy_photo(101, 64), PoolingVAE()
    source = LatentSource(vae, [photo], 64, center_crop=False, random_flip=True, batch=2)
    spots = [round(k * 37 / 7) for k in range(8)]  # note: 37 spare pixels, both edges included
    assert source.origins == [[(0, spot) for spot in spots]] and vae.encoded == 16  # note: each mirrored too
    assert vae.largest == 2  # note: a training step's worth of crops per VAE call, as a step would encode
    seen = set()
    for seed in range(200):
        latents, ids = source(torch.tensor([0]), torch.Generator().manual_seed(seed), torch.Generator())
        height, width, top, left, *_ = ids[0].tolist()
        assert (height, width, top) == (64, 101, 0) and left in spots
        plain = torch.allclose(latents[0], _pooled(photo, left, False), atol=1e-6)
        flipped = torch.allclose(latents[0], _pooled(photo, left, True), atol=1e-6)
        assert plain != flipped  # note: each latent is its crop's own encoding, mirrored or not
        seen.add((left, flipped))
    assert len(seen) == 16 and vae.encoded == 16  # note: every crop drawn; the VAE never ran again


def test_a_center_crop_is_one_crop_per_photo():
    photos, vae = [_noisy_photo(101, 64), _noisy_photo(64, 90)], PoolingVAE()
    centred = LatentSource(vae, photos, 64, center_crop=True, random_flip=False)
    assert centred.origins == [[(0, 18)], [(13, 0)]] and vae.encoded == 2
    latents, ids = centred(torch.tensor([1, 0]), torch.Generator(), torch.Generator())
    assert ids[:, 2:4].tolist() == [[13, 0], [0, 18]] and torch.allclose(latents[1], _pooled(photos[0], 18, False))

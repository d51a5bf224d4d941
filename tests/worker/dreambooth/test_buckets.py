"""Aspect-ratio buckets: photos keep their shape, cut only by their bucket's rounding; latents are cached per
bucket, batches never mix buckets, and SDXL's time ids are each photo's real size and crop."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from backend.photo_checks import PhotoFacts, assess_photos
from formats.buckets import bucket_for, bucket_sizes
from worker.dreambooth import data
from worker.dreambooth import train as train_module
from worker.dreambooth.config import TrainConfig
from worker.dreambooth.data import LatentSource, batch_order, bucket_batches, load_photo, time_ids

RESOLUTION = 128  # buckets (width x height) 64x192, 64x256, 128x128, 192x64, 256x64
# name: (stored size, its bucket, its size once resized to cover the bucket, the centred crop's (top, left))
SHAPES = {
    "wide": ((200, 66), (192, 64), (194, 64), (0, 1)),
    "square": ((130, 130), (128, 128), (128, 128), (0, 0)),
    "tall": ((66, 260), (64, 256), (65, 256), (0, 0)),
}


@pytest.fixture(scope="module")
def shaped_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two photos of each of three aspect ratios (3:1, 1:1, 1:4), a shape drawn on each."""
    folder, found = tmp_path_factory.mktemp("shaped"), {}
    for name, ((width, height), *_) in SHAPES.items():
        pair = []
        for k, colour in enumerate(("red", "blue")):
            image = Image.new("RGB", (width, height), "white")
            ImageDraw.Draw(image).ellipse((width // 8, height // 8, width * 7 // 8, height * 7 // 8), fill=colour)
            image.save(folder / f"{name}-{k}.png")
            pair.append(folder / f"{name}-{k}.png")
        found[name] = tuple(pair)
    return found


def test_buckets_keep_the_area_in_multiples_of_64():
    for resolution in (128, 512, 1024):
        sizes = bucket_sizes(resolution)
        assert (resolution, resolution) in sizes
        assert all(w % 64 == 0 and h % 64 == 0 and w * h <= resolution**2 for w, h in sizes)
        assert all(resolution // 2 <= side <= 2 * resolution for size in sizes for side in size)
    assert bucket_sizes(128) == [(64, 192), (64, 256), (128, 128), (192, 64), (256, 64)]
    # note: kohya's 512 buckets include 384x640 and 640x384 (3:5), 448x576 and 576x448
    assert {(384, 640), (640, 384), (448, 576), (576, 448), (256, 1024)} <= set(bucket_sizes(512))
    assert bucket_for(3000, 2000, 512) == (640, 384) and bucket_for(2000, 3000, 512) == (384, 640)
    assert bucket_for(1000, 1000, 1024) == (1024, 1024)


def test_a_photo_is_cut_only_by_its_buckets_rounding(shaped_photos: dict):
    for name, ((width, height), bucket, covered, origin) in SHAPES.items():
        image = load_photo(shaped_photos[name][0], RESOLUTION, bucketed=True)
        assert image.size == covered and image.info[data.TARGET_SIZE] == bucket[::-1], name
        # note: resized to cover the bucket, the photo overshoots it by a pixel or two on one side at most
        assert 0 <= covered[0] - bucket[0] <= 2 and 0 <= covered[1] - bucket[1] <= 2
        assert min(covered[0] - bucket[0], covered[1] - bucket[1]) == 0
        assert data.crop_origin(image, RESOLUTION, center_crop=True) == origin
        assert time_ids(image, origin, RESOLUTION) == [height, width, *origin, bucket[1], bucket[0]], name
        assert data.to_tensor(image, RESOLUTION, True, False).shape == (3, bucket[1], bucket[0])


def test_random_crops_stay_within_the_rounding(shaped_photos: dict):
    image = load_photo(shaped_photos["wide"][0], RESOLUTION, bucketed=True)
    source = LatentSource(_PoolingVAE(), [image], RESOLUTION, center_crop=False, random_flip=False)
    assert source.origins == [[(0, 0), (0, 1), (0, 2)]]  # note: 194 px wide in a 192 px bucket
    lefts = {source(torch.tensor([0]), torch.Generator().manual_seed(s), torch.Generator())[1][0, 3].item()
             for s in range(20)}  # fmt: skip
    assert lefts == {0, 1, 2}


def test_latents_are_cached_per_bucket_and_a_batch_takes_one(shaped_photos: dict):
    paths = [path for pair in shaped_photos.values() for path in pair]
    images = [load_photo(path, RESOLUTION, bucketed=True) for path in paths]
    vae = _PoolingVAE()
    source = LatentSource(vae, images, RESOLUTION, center_crop=True, random_flip=True, batch=4)
    # note: each photo encoded once and once mirrored, a VAE call never mixing sizes
    assert vae.encoded == 12 and vae.shapes == {(3, 64, 192), (3, 128, 128), (3, 256, 64)}
    assert {size: len(mean) for size, (mean, _) in source.cached.items()} == {(64, 192): 4, (128, 128): 4, (256, 64): 4}
    assert source.buckets() == [[0, 1], [2, 3], [4, 5]]
    latents, ids = source(torch.tensor([5, 4]), torch.Generator(), torch.Generator())
    assert latents.shape == (2, 3, 32, 8) and ids[:, 4:].tolist() == [[256, 64], [256, 64]]
    with pytest.raises(ValueError, match="one bucket"):
        source(torch.tensor([0, 2]), torch.Generator(), torch.Generator())


def test_bucket_batches_never_mix_buckets_and_fill_small_ones():
    buckets = [[0, 1, 2], [3], [4, 5]]
    stream = bucket_batches(buckets, 2, torch.Generator().manual_seed(0))
    drawn = [next(stream).tolist() for _ in range(40)]  # note: 10 epochs of 2 + 1 + 1 batches
    which = {i: k for k, bucket in enumerate(buckets) for i in bucket}
    assert all(len(batch) == 2 and len({which[i] for i in batch}) == 1 for batch in drawn)
    assert [3, 3] in drawn  # note: the one-photo bucket's batch is that photo twice
    seen = [i for batch in drawn for i in batch]
    # note: a bucket's photos are drawn alike (its batches wrap across its own epochs)
    assert sorted(seen.count(i) for i in (0, 1, 2)) == [13, 13, 14] and [seen.count(i) for i in (3, 4, 5)] == [
        20,
        10,
        10,
    ]
    assert [sum(which[b[0]] == k for b in drawn) for k in range(3)] == [20, 10, 10]


def test_a_resumed_run_replays_the_bucket_order():
    buckets = [[0, 1, 2], [3], [4, 5]]
    straight = bucket_batches(buckets, 2, torch.Generator().manual_seed(7))
    expected = [next(straight).tolist() for _ in range(12)]
    resumed = batch_order(bucket_batches(buckets, 2, torch.Generator().manual_seed(7)), micro_steps=2, start_step=3)
    assert [next(resumed).tolist() for _ in range(6)] == expected[6:]


def test_the_api_shows_each_photos_bucket():
    facts = [PhotoFacts(3000, 2000, k, 500.0, ()) for k in (0, 2**64 - 1)] + [
        PhotoFacts(600, 400, 2**32 - 1, 500.0, ())
    ]
    settings = {"resolution": 512, "crop": "bucket", "instance_prompt": "a photo of sks dog"}
    checks = assess_photos(facts, ["a.jpg", "b.jpg", "small.jpg"], settings, [None] * 3)
    assert [c.crop_box for c in checks] == [None] * 3
    assert [c.as_dict()["bucket"] for c in checks] == [[640, 384]] * 3
    # note: too small means smaller than its bucket, not than the square: 600x400 is under 640x384
    assert [c.usable for c in checks] == [True, True, False]
    assert "640x384 aspect-ratio bucket" in checks[2].warnings[0].message


def test_sdxl_trains_each_bucket_with_its_real_size_and_crop(
    make_config: Callable[..., TrainConfig], shaped_photos: dict, tmp_path: Path, monkeypatch
):
    from worker.dreambooth.families import sdxl
    from worker.dreambooth.train import train

    paths = [path for pair in shaped_photos.values() for path in pair]
    config = make_config(
        tmp_path / "run", base_model="builtin:tiny-sdxl", instance_images=paths, resolution=RESOLUTION,
        crop="bucket", center_crop=True, train_batch_size=2, max_train_steps=6, validation_steps=100,
        validation_inference_steps=1, validation_prompts=("a photo of sks toy",),
    )  # fmt: skip
    sources, calls, unet_ids = [], [], []
    real_init, real_call, real_kwargs = LatentSource.__init__, LatentSource.__call__, sdxl.SDXLFamily.unet_kwargs

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        sources.append(self)

    def call(self, indices, data_gen, noise_gen):
        latents, ids = real_call(self, indices, data_gen, noise_gen)
        calls.append((indices.tolist(), tuple(latents.shape), ids.tolist()))
        return latents, ids

    def kwargs(self, conditioning, ids):
        unet_ids.append(ids.tolist())
        return real_kwargs(self, conditioning, ids)

    monkeypatch.setattr(LatentSource, "__init__", init)
    monkeypatch.setattr(LatentSource, "__call__", call)
    monkeypatch.setattr(sdxl.SDXLFamily, "unet_kwargs", kwargs)
    result = train(config)
    assert not result.stopped and result.final_step == 6
    [source] = sources
    # note: latents cached per bucket, each photo encoded once (centre crop, no flip)
    assert {size: len(mean) for size, (mean, _) in source.cached.items()} == {(64, 192): 2, (128, 128): 2, (256, 64): 2}
    expected = {}
    for k, ((width, height), bucket, _, origin) in enumerate(SHAPES.values()):
        for i in (2 * k, 2 * k + 1):
            expected[i] = ([height, width, *origin, bucket[1], bucket[0]], (bucket[1] // 8, bucket[0] // 8))
    assert len(calls) == 6
    for indices, shape, ids in calls:
        assert len(indices) == 2 and len({expected[i][1] for i in indices}) == 1  # note: one bucket per batch
        assert shape[-2:] == expected[indices[0]][1]
        assert ids == [expected[i][0] for i in indices]
    assert unet_ids[: len(calls)] == [ids for _, _, ids in calls]  # note: what the UNet was conditioned on
    # note: 3 batches an epoch, one per bucket: two epochs cover each bucket twice
    assert sorted(shape[-2:] for _, shape, _ in calls) == sorted([(8, 24), (16, 16), (32, 8)] * 2)


def test_prior_preservation_keeps_class_images_square_beside_a_bucket(
    make_config: Callable[..., TrainConfig], shaped_photos: dict, photos: tuple[Path, ...], tmp_path: Path,
    monkeypatch,
):  # fmt: skip
    from worker.dreambooth.train import train

    config = make_config(
        tmp_path / "run", instance_images=shaped_photos["wide"] + shaped_photos["square"], resolution=RESOLUTION,
        crop="bucket", center_crop=True, train_batch_size=2, max_train_steps=4, validation_steps=100,
        validation_inference_steps=1, validation_prompts=("a photo of sks toy",), with_prior_preservation=True,
        class_prompt="a photo of a toy", class_images=photos[:2], num_class_images=2,
    )  # fmt: skip
    parts = []
    real = train_module._denoising_loss

    def loss(config, run, data, part, prior_weight):
        parts.append((tuple(part.latents.shape), part.instances, prior_weight))
        return real(config, run, data, part, prior_weight)

    monkeypatch.setattr(train_module, "_denoising_loss", loss)
    assert train(config).final_step == 4
    # note: the square bucket shares a UNet call with the square class images; the wide one runs them apart
    assert set(parts) == {((4, 4, 16, 16), 2, 1.0), ((2, 4, 8, 24), 2, None), ((2, 4, 16, 16), 0, None)}


class _PoolingVAE(torch.nn.Module):
    """A VAE whose latent cell is the mean of its 8x8 pixels, counting the crops it encodes and their shapes."""

    config = type("Config", (), {"scaling_factor": 1.0})
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.encoded, self.shapes = 0, set()

    def encode(self, pixels: torch.Tensor):
        self.encoded += len(pixels)
        self.shapes |= {tuple(p.shape) for p in pixels}
        assert len({tuple(p.shape) for p in pixels}) == 1
        mean = torch.nn.functional.avg_pool2d(pixels, 8)
        dist = type("Dist", (), {"mean": mean, "std": torch.zeros_like(mean)})
        return type("Out", (), {"latent_dist": dist})

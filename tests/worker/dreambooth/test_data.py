"""Photo loading and cropping."""

from pathlib import Path

import torch

from worker.dreambooth.data import batches, load_photo, to_tensor


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

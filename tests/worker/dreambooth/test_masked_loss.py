"""Masked loss: the instance photos' loss weighed towards the subject's (face's) box, in latent space."""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from worker.dreambooth import train as train_module
from worker.dreambooth.config import TrainConfig
from worker.dreambooth.data import SUBJECT_BOX, LatentSource, load_photo
from worker.dreambooth.train import masked_loss


class _PoolingVAE(torch.nn.Module):
    config = type("Config", (), {"scaling_factor": 1.0})
    device = torch.device("cpu")
    dtype = torch.float32

    def encode(self, pixels: torch.Tensor):
        mean = F.avg_pool2d(pixels, 8)
        return type("Out", (), {"latent_dist": type("Dist", (), {"mean": mean, "std": torch.zeros_like(mean)})})


def test_the_weight_map_is_the_box_at_latent_resolution(tmp_path: Path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (128, 64), "white").save(path)
    # note: a 128x64 photo centre-cropped to 64x64 starts at left 32; the box is 8..24 high, 40..56 wide in it
    image = load_photo(path, 64, subject_box=(72, 8, 88, 24))
    assert image.info[SUBJECT_BOX] == (72.0, 8.0, 88.0, 24.0)
    source = LatentSource(_PoolingVAE(), [image], 64, center_crop=True, random_flip=False)
    source(torch.tensor([0]), torch.Generator(), torch.Generator())
    weights = source.subject_weights((8, 8), background=0.3)
    expected = torch.full((8, 8), 0.3)
    expected[1:3, 5:7] = 1.0
    assert weights.shape == (1, 1, 8, 8) and torch.allclose(weights[0, 0], expected)
    # note: a box off the latent grid covers its cells in part: their weight is the covered share's
    image = load_photo(path, 64, subject_box=(72, 8, 92, 24))  # note: 4 px into the 7th cell column
    source = LatentSource(_PoolingVAE(), [image], 64, center_crop=True, random_flip=True)
    flipped = next(s for s in range(20) if torch.rand((), generator=torch.Generator().manual_seed(s)) < 0.5)
    source(torch.tensor([0]), torch.Generator().manual_seed(flipped), torch.Generator())
    assert source.drawn == [(0, (0, 32), True)]
    weights = source.subject_weights((8, 8), background=0.0)[0, 0]
    # note: mirrored, the box is 4..24 px wide: cell 0 half covered, cells 1 and 2 whole
    assert weights[1:3, 0].tolist() == [0.5, 0.5] and weights[1:3, 1:3].eq(1).all() and weights[0].eq(0).all()


def test_a_photo_without_a_box_weighs_evenly(tmp_path: Path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), "white").save(path)
    source = LatentSource(_PoolingVAE(), [load_photo(path, 64)], 64, center_crop=True, random_flip=False)
    source(torch.tensor([0, 0]), torch.Generator(), torch.Generator())
    assert source.subject_weights((8, 8), 0.3).eq(1).all()


def test_the_loss_is_the_weighted_mean_of_the_squared_errors():
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(4, 4, 2, 2, generator=generator), torch.randn(4, 4, 2, 2, generator=generator)
    weights = torch.tensor([[1.0, 0.3], [0.3, 0.3]]).expand(2, 1, 2, 2)
    # note: by hand: per image, the mean over channels and pixels of weight x squared error
    squared = (prediction - target) ** 2
    per_image = [
        sum(
            float(weights[i, 0, y, x]) * float(squared[i, c, y, x])
            for c in range(4)
            for y in range(2)
            for x in range(2)
        )
        / 16
        for i in range(2)
    ]
    prior = float(squared[2:].mean())
    expected = sum(per_image) / 2 + 0.5 * prior
    assert abs(masked_loss(prediction, target, weights, 0.5).item() - expected) < 1e-5
    snr = torch.tensor([2.0, 0.5])
    expected_snr = (per_image[0] * 2.0 + per_image[1] * 0.5) / 2 + 0.5 * prior
    assert abs(masked_loss(prediction, target, weights, 0.5, snr).item() - expected_snr) < 1e-5
    # note: weights of one everywhere are the plain loss
    ones = torch.ones(2, 1, 2, 2)
    plain = F.mse_loss(prediction[:2], target[:2]) + 0.5 * F.mse_loss(prediction[2:], target[2:])
    assert torch.allclose(masked_loss(prediction, target, ones, 0.5), plain)


def test_a_masked_run_weighs_its_loss_by_the_face_boxes(
    make_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch
):
    from worker.dreambooth.train import train

    boxes = ((20, 8, 70, 58), None, (10, 10, 50, 40), (6, 16, 66, 56))  # note: in each stored photo's pixels
    config = make_config(
        tmp_path / "run", masked_loss=True, masked_loss_background=0.3, instance_subject_boxes=boxes,
        train_batch_size=2, max_train_steps=2, center_crop=True, validation_steps=100,
        validation_prompts=("a photo of sks toy",), validation_inference_steps=1,
    )  # fmt: skip
    seen = []
    real = train_module.masked_loss

    def spy(prediction, target, pixel_weights, prior_loss_weight=None, instance_weights=None):
        seen.append(pixel_weights)
        return real(prediction, target, pixel_weights, prior_loss_weight, instance_weights)

    monkeypatch.setattr(train_module, "masked_loss", spy)
    assert train(config).final_step == 2
    assert len(seen) == 2 and all(w.shape == (2, 1, 8, 8) for w in seen)
    weights = torch.cat(seen)
    # note: the boxed photos weigh their background less; the one without a box weighs 1 throughout
    assert weights.max().item() == 1.0 and abs(weights.min().item() - 0.3) < 1e-6

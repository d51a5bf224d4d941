"""The Dreambooth objective as pure functions: prior preservation, Min-SNR, offset noise."""

import torch
from diffusers import DDPMScheduler

from worker.dreambooth.loss import dreambooth_loss, min_snr_weights, sample_noise, training_target


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
    )


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two instance images then two class images, with known predictions and targets."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)


def mean_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum() / a.numel()


def test_prior_preservation_loss_is_instance_mse_plus_weighted_prior_mse():
    pred, target = fixed_batch()
    instance = mean_square(pred[:2], target[:2])
    prior = mean_square(pred[2:], target[2:])
    for weight in (0.0, 1.0, 0.5):
        torch.testing.assert_close(dreambooth_loss(pred, target, prior_loss_weight=weight), instance + weight * prior)


def test_without_prior_the_whole_batch_is_instance_images():
    pred, target = fixed_batch()
    torch.testing.assert_close(dreambooth_loss(pred, target), mean_square(pred, target))


def test_min_snr_weights_apply_to_the_instance_half_only():
    pred, target = fixed_batch()
    timesteps = torch.tensor([10, 900])
    weights = min_snr_weights(scheduler(), timesteps, snr_gamma=5.0)
    alphas = scheduler().alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert weights[0] < 1 and weights[1] == 1  # note: low noise (high SNR) is down-weighted, high noise is not
    per_image = [mean_square(pred[i], target[i]) for i in range(2)]
    expected = (weights[0] * per_image[0] + weights[1] * per_image[1]) / 2 + mean_square(pred[2:], target[2:])
    torch.testing.assert_close(dreambooth_loss(pred, target, 1.0, weights), expected)


def test_v_prediction_targets_velocity_and_floors_snr_weights_at_one():
    latents, noise = fixed_batch()
    timesteps = torch.tensor([10, 300, 600, 900])
    v = scheduler("v_prediction")
    alphas = v.alphas_cumprod[timesteps][:, None, None, None]
    expected = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents
    torch.testing.assert_close(training_target(v, latents, noise, timesteps), expected)
    assert torch.equal(training_target(scheduler(), latents, noise, timesteps), noise)
    assert (min_snr_weights(v, timesteps, 5.0) >= 1).all()


def test_offset_noise_shifts_each_channel_by_a_constant():
    latents = torch.zeros(2, 4, 16, 16)
    plain = sample_noise(latents, False, torch.Generator().manual_seed(1))
    offset = sample_noise(latents, True, torch.Generator().manual_seed(1))
    shift = offset - plain
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift))
    assert 0 < shift.abs().max() < 1

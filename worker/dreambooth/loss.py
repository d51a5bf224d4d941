"""The Dreambooth objective: noise, targets, Min-SNR weights and the prior-preservation loss, as pure functions."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

OFFSET_NOISE_SCALE = 0.1  # as the reference script's --offset_noise


def sample_noise(latents: torch.Tensor, offset_noise: bool, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise like `latents`; with offset noise, plus a per-image, per-channel constant."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if offset_noise:
        # note: lets the model shift an image's mean brightness, so very dark or bright pictures become possible
        shape = (*latents.shape[:2], 1, 1)
        noise = noise + OFFSET_NOISE_SCALE * torch.randn(
            shape, generator=generator, device=latents.device, dtype=latents.dtype
        )
    return noise


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet learns to predict, per the base model's scheduler config."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r}")


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR (Min-SNR, arXiv:2303.09556), +1 for v-prediction."""
    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / snr
    if scheduler.config.prediction_type == "v_prediction":
        # note: as the reference, the velocity objective is floored to an SNR weight of one
        weights = weights + 1
    return weights


def dreambooth_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    prior_loss_weight: float | None = None,
    instance_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE over the instance images + prior_loss_weight x MSE over the class images.

    With a prior_loss_weight the batch is instance images then as many class images (the halves);
    without one it is all instance images. instance_weights (Min-SNR) weight each instance image's MSE.
    """
    pred, target = model_pred.float(), target.float()
    if prior_loss_weight is not None:
        pred, pred_prior = pred.chunk(2)
        target, target_prior = target.chunk(2)
    if instance_weights is None:
        loss = F.mse_loss(pred, target)
    else:
        per_image = F.mse_loss(pred, target, reduction="none").mean(dim=tuple(range(1, pred.ndim)))
        loss = (per_image * instance_weights).mean()
    if prior_loss_weight is not None:
        loss = loss + prior_loss_weight * F.mse_loss(pred_prior, target_prior)
    return loss

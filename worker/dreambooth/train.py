"""The Dreambooth loop: teach a base model's UNet a subject from a few photos, then sample and export."""

import copy
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import free_memory, set_seed
from PIL import Image
from transformers import CLIPTokenizer

from .components import Components, load_components
from .config import Progress, Sample, TrainConfig, TrainResult
from .data import batches, load_photo, to_tensor
from .export import export_single_file
from .files import atomic_dir
from .sample import sample_images

log = logging.getLogger(__name__)

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Fine-tune, sample and export; returns early (stopped=True, nothing exported) once should_stop()."""
    total = config.max_train_steps
    on_progress(Progress("preparing", 0, total, None, None))

    # ------------------------------------------------------------------ setup
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # note: accelerate keeps process-wide state, but a long-lived worker runs jobs with different settings
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=_supported_mixed_precision(config.mixed_precision, device),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=device == "cpu",
    )
    if config.seed is not None:
        set_seed(config.seed)
    parts = load_components(config.base_model, config.models_dir)
    weight_dtype = HALF.get(accelerator.mixed_precision, torch.float32)
    vae = _frozen_copy(parts.vae, accelerator.device, weight_dtype)
    text_encoder = _frozen_copy(parts.text_encoder, accelerator.device, weight_dtype)
    unet = parts.unet.to(accelerator.device)
    unet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    # ------------------------------------------------------------------ data
    # note: the text encoder is frozen and there is one prompt, so its embedding is computed once
    prompt_embeds = _encode_prompt(parts.tokenizer, text_encoder, config.instance_prompt)
    photos = [load_photo(path, config.resolution) for path in config.instance_images]
    latents_for = _latent_sampler(vae, photos, config)
    next_batch = batches(len(photos), config.train_batch_size)

    # ------------------------------------------------------------------ optimizer
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = _make_optimizer(unet, lr, config, accelerator.device)
    # note: a prepared scheduler steps once per process, hence the num_processes factors (as the reference)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=total * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    noise_scheduler = parts.noise_scheduler

    # ------------------------------------------------------------------ loop
    log.info("training %d steps on %s (mixed precision %s)", total, device, accelerator.mixed_precision)
    started = time.monotonic()
    step = 0
    while step < total:
        if should_stop():
            return _stopped(step)
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(config.gradient_accumulation_steps):
            with accelerator.accumulate(unet):
                latents = latents_for(next(next_batch))
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (len(latents),), device=latents.device
                )
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = prompt_embeds.expand(len(latents), -1, -1)
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
                target = _target(noise_scheduler, latents, noise, timesteps)
                loss = F.mse_loss(model_pred.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / config.gradient_accumulation_steps
        step += 1
        elapsed = time.monotonic() - started
        on_progress(Progress("training", step, total, step_loss.item(), elapsed / step * (total - step)))
    log.info("trained %d steps in %.1fs, last loss %.4f", step, time.monotonic() - started, step_loss.item())

    # ------------------------------------------------------------------ sample
    if should_stop():
        return _stopped(step)
    on_progress(Progress("sampling", step, total, None, 0.0))
    unet = accelerator.unwrap_model(unet).eval()
    del optimizer, lr_scheduler, vae, text_encoder
    free_memory()
    # note: the pipeline gets the untouched fp32 frozen parts, so exports hold the base weights exactly
    pipeline = _pipeline(parts, unet).to(accelerator.device)
    with accelerator.autocast():
        samples = _validation_samples(pipeline, config, step)

    # ------------------------------------------------------------------ export
    if should_stop():
        return _stopped(step)
    on_progress(Progress("exporting", step, total, None, 0.0))
    pipeline_dir = config.output_dir / "pipeline"
    with atomic_dir(pipeline_dir) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    metadata = {"base_model": config.base_model, "instance_prompt": config.instance_prompt, "step": str(step)}
    checkpoints = {}
    for dtype in ("fp16", "fp32"):
        path = config.output_dir / "checkpoints" / f"model-{dtype}.safetensors"
        checkpoints[dtype] = export_single_file(pipeline_dir, path, dtype, metadata)
    return TrainResult(
        stopped=False,
        final_step=step,
        pipeline_dir=pipeline_dir,
        samples=tuple(samples),
        checkpoints=checkpoints,
    )


def _supported_mixed_precision(requested: str, device: str) -> str:
    """The requested mixed precision, or "no" where the device cannot do it."""
    unsupported = (requested == "fp16" and device == "cpu") or (
        requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported()
    )
    if unsupported:
        log.warning("mixed precision %s is not supported on %s; training in fp32", requested, device)
        return "no"
    return requested


def _frozen_copy(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model frozen on `device`; in half precision it is a copy, leaving the fp32 original for export."""
    model.requires_grad_(False)
    if dtype == torch.float32:
        return model.to(device)
    return copy.deepcopy(model).to(device, dtype=dtype)


@torch.no_grad()
def _encode_prompt(tokenizer: CLIPTokenizer, text_encoder: torch.nn.Module, prompt: str) -> torch.Tensor:
    max_length = tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return text_encoder(ids.input_ids.to(text_encoder.device)).last_hidden_state


def _latent_sampler(
    vae: torch.nn.Module, photos: list[Image.Image], config: TrainConfig
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return indices -> scaled latents, encoding once up front when every crop is the same."""
    scale = vae.config.scaling_factor

    @torch.no_grad()
    def encode(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack(
            [to_tensor(photos[i], config.resolution, config.center_crop, config.random_flip) for i in indices]
        )
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def sample(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return (mean + std * torch.randn_like(mean)) * scale

    if config.center_crop and not config.random_flip:
        # note: keep the distribution, not one draw, so each step still samples fresh latents as the reference
        encoded = [encode(torch.tensor([i])) for i in range(len(photos))]
        means, stds = torch.cat([m for m, _ in encoded]), torch.cat([s for _, s in encoded])
        return lambda indices: sample(means[indices], stds[indices])
    return lambda indices: sample(*encode(indices))


def _make_optimizer(
    unet: torch.nn.Module, lr: float, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    kwargs = dict(
        lr=lr,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    if config.use_8bit_adam:
        # note: imported only when asked for; bitsandbytes probes the GPU at import time
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, fused=device.type in ("cuda", "cpu"), **kwargs)


def _target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet learns to predict, per the base model's scheduler config."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r}")


def _pipeline(parts: Components, unet: torch.nn.Module) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=unet,
        # note: the study found DDIM best on overfit models, so the saved pipeline defaults to it
        scheduler=DDIMScheduler.from_config(parts.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _validation_samples(pipeline: StableDiffusionPipeline, config: TrainConfig, step: int) -> list[Sample]:
    """num_validation_images per prompt (default: the instance prompt), seeded seed, seed + 1, ..."""
    prompts = config.validation_prompts or (config.instance_prompt,)
    prompts = [prompt for prompt in prompts for _ in range(config.num_validation_images)]
    first_seed = config.seed if config.seed is not None else 0
    return sample_images(
        pipeline,
        prompts,
        [first_seed + index for index in range(len(prompts))],
        config.num_inference_steps,
        config.guidance_scale,
        config.resolution,
        config.output_dir / "samples",
        step,
    )


def _stopped(step: int) -> TrainResult:
    log.info("stopped at step %d", step)
    return TrainResult(stopped=True, final_step=step, pipeline_dir=None, samples=(), checkpoints={})

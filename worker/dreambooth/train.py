"""The Dreambooth loop: teach a base model a subject from a few photos, then sample and export.

Options and their meanings follow diffusers' train_dreambooth.py; what differs is how the work is
done: class images come from a shared cache, photos are VAE-encoded once where their crop cannot vary,
prompt embeddings are computed once while the text encoder is frozen, and frozen parts leave the GPU
once they are no longer needed.
"""

import copy
import dataclasses
import functools
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, free_memory, set_seed
from diffusers.utils.import_utils import is_xformers_available

from .components import (
    ComponentCache,
    Components,
    frozen_on,
    load_components,
    trainable_copy,
)
from .config import MemoryPlan, Progress, Sample, TrainConfig, TrainResult
from .data import LatentSource, batches, load_photo
from .errors import TRAINING_OUT_OF_MEMORY, out_of_memory_as_error
from .export import checkpoint_metadata, export_single_file
from .files import atomic_dir
from .lora import LORA_FILE, LoraSettings, add_adapters, save_lora
from .loss import dreambooth_loss, min_snr_weights, sample_noise, training_target
from .memory import apply_memory_plan, plan_memory
from .prior import (
    ClassImageSpec,
    class_image_folder,
    class_image_path,
    evict_class_images,
    fill_class_images,
    generation_pipeline,
)
from .sample import sample_images
from .state import find_state, load_state, save_state
from .validate import (
    SAMPLES_DIR,
    Evaluator,
    Validation,
    forget_after,
    is_validation_step,
    kept_step_dirs,
    prune,
    sample_seeds,
    step_dir,
    validation_prompts,
)

log = logging.getLogger(__name__)

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
TRAIN_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


@dataclass
class _Trainees:
    """What the loop updates, and everything a saved training state must hold to resume exactly."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module | None  # only when train_text_encoder
    ema: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    order_gen: torch.Generator  # batch order (replayed from the seed on resume, see _batch_order)
    data_gen: torch.Generator  # random crops and flips
    noise_gen: torch.Generator  # latent draws, noise and timesteps, on the training device

    def parameters(self):
        """The trained parameters (for LoRA runs: the adapters')."""
        models = [self.unet] + ([self.text_encoder] if self.text_encoder is not None else [])
        return (p for p in itertools.chain.from_iterable(model.parameters() for model in models) if p.requires_grad)


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    models: ComponentCache | None = None,
    on_validation: Callable[[Validation], None] = lambda v: None,
    on_memory_plan: Callable[[MemoryPlan], None] = lambda plan: None,
) -> TrainResult:
    """Fine-tune, validating along the way, and export; returns early (stopped=True, nothing exported)
    once should_stop().

    `on_memory_plan` hears which memory savers memory_profile chose, before any weights are loaded.

    At each validation step (validate.py) the run samples, keeps that step's weights, scores the samples
    and calls `on_validation`. With `models`, the base model comes from (and stays in) that cache and is
    never modified; without it, the base model is loaded for this run alone. A GPU that runs out of memory
    raises JobError("out_of_memory") naming the settings to change, with the GPU memory handed back.
    """
    return out_of_memory_as_error(
        lambda: _train(config, on_progress, should_stop, models, on_validation, on_memory_plan),
        TRAINING_OUT_OF_MEMORY,
    )


def _train(config, on_progress, should_stop, models, on_validation, on_memory_plan) -> TrainResult:
    total = config.max_train_steps
    on_progress(Progress("preparing", 0, total, None, None))

    # ------------------------------------------------------------------ setup
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _release(device)
    plan = plan_memory(config, device.type, _gpu_memory(device))
    config = apply_memory_plan(config, plan)
    log.info(plan.describe())
    on_memory_plan(plan)
    accelerator = _accelerator(config, device)
    weight_dtype = HALF.get(accelerator.mixed_precision, torch.float32)
    parts = (
        models.get(config.base_model, config.models_dir, config.revision)
        if models
        else load_components(config.base_model, config.models_dir, config.revision)
    )
    state_path = find_state(config.output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    saved = load_state(state_path) if state_path else None
    if saved:
        _check_resumable(saved[0], config)
    base_seed = saved[0]["base_seed"] if saved else _base_seed(config.seed)
    if config.seed is not None:
        set_seed(config.seed)

    # ------------------------------------------------------------------ class images
    class_paths, generated = (), 0
    if config.with_prior_preservation:
        prepared = _class_images(config, parts, device, on_progress, should_stop)
        if prepared is None:
            return _stopped(0, plan)
        class_paths, generated = prepared

    # ------------------------------------------------------------------ models
    run = _make_trainees(config, parts, accelerator, base_seed, shared=models is not None)
    start = _restore(saved, run, accelerator, config) if saved else 0
    if start:
        log.info("resuming from %s at step %d of %d", state_path, start, total)

    # ------------------------------------------------------------------ data
    vae = frozen_on(parts.vae, accelerator.device, weight_dtype)
    photos = [load_photo(p, config.resolution) for p in config.instance_images]
    instance_latents = LatentSource(vae, photos, config.resolution, config.center_crop, config.random_flip)
    class_latents = (
        LatentSource(
            vae,
            [load_photo(p, config.resolution) for p in class_paths],
            config.resolution,
            config.center_crop,
            config.random_flip,
        )
        if class_paths
        else None
    )
    prompts = [config.instance_prompt] + ([config.class_prompt] if class_paths else [])
    text_encoder = run.text_encoder or frozen_on(parts.text_encoder, accelerator.device, weight_dtype)
    embed = _PromptEmbeddings(parts.tokenizer, text_encoder, prompts, trained=run.text_encoder is not None)
    # note: frozen parts whose work is done leave the device (the latent sources keep the VAE if they need it)
    del text_encoder, vae
    _release(device)
    count = max(len(instance_latents.photos), len(class_latents.photos) if class_latents else 0)
    order = _batch_order(count, config, run.order_gen, start)
    forget_after(config.output_dir, start)
    validator = _Validator(config, parts, accelerator, weight_dtype, photos, start, on_progress, on_validation)

    # ------------------------------------------------------------------ loop
    noise_scheduler = parts.noise_scheduler
    prior_weight = config.prior_loss_weight if class_latents else None
    trained = [m for m in (run.unet, run.text_encoder) if m is not None]
    parameters = list(run.parameters())
    log.info(
        "training steps %d-%d on %s (mixed precision %s, %s)",
        start + 1,
        total,
        device,
        accelerator.mixed_precision,
        "unet + text encoder" if run.text_encoder is not None else "unet",
    )
    started, step, step_loss = time.monotonic(), start, torch.zeros(())
    while step < total:
        if should_stop():
            return _stopped(step, plan, generated, start)
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(config.gradient_accumulation_steps):
            with accelerator.accumulate(*trained):
                indices = next(order)
                latents = instance_latents(indices % len(instance_latents.photos), run.data_gen, run.noise_gen)
                if class_latents:
                    class_part = class_latents(indices % len(class_latents.photos), run.data_gen, run.noise_gen)
                    latents = torch.cat([latents, class_part])
                noise = sample_noise(latents, config.offset_noise, run.noise_gen)
                timesteps = torch.randint(
                    0,
                    noise_scheduler.config.num_train_timesteps,
                    (len(latents),),
                    generator=run.noise_gen,
                    device=latents.device,
                )
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                hidden_states = embed(len(indices), len(indices) if class_latents else 0)
                model_pred = run.unet(noisy_latents, timesteps, hidden_states).sample
                target = training_target(noise_scheduler, latents, noise, timesteps)
                weights = None
                if config.snr_gamma is not None:
                    weights = min_snr_weights(noise_scheduler, timesteps[: len(indices)], config.snr_gamma)
                loss = dreambooth_loss(model_pred, target, prior_weight, weights)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                run.optimizer.step()
                run.lr_scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / config.gradient_accumulation_steps
        if run.ema is not None:
            run.ema.step(run.unet.parameters())
        step += 1
        loss_value = step_loss.item()
        elapsed = time.monotonic() - started
        on_progress(Progress("training", step, total, loss_value, elapsed / (step - start) * (total - step)))
        if config.checkpointing_steps and step % config.checkpointing_steps == 0:
            _save(config, run, accelerator, step, base_seed)
        if step < total and is_validation_step(config, step):
            if should_stop():
                return _stopped(step, plan, generated, start)
            validator(step, run)
            started = time.monotonic() - elapsed  # note: sampling time is not training time, for the ETA
    log.info("trained to step %d in %.1fs, last loss %.4f", step, time.monotonic() - started, step_loss.item())

    # ------------------------------------------------------------------ sample the final weights
    if should_stop():
        return _stopped(step, plan, generated, start)
    del embed, instance_latents, class_latents, order, trained, parameters
    _release(device)
    validator(step, run)

    # ------------------------------------------------------------------ export
    if should_stop():
        return _stopped(step, plan, generated, start)
    on_progress(Progress("exporting", step, total, None, 0.0))
    unet = accelerator.unwrap_model(run.unet).eval()
    if run.ema is not None:
        run.ema.copy_to(unet.parameters())
    text_encoder = accelerator.unwrap_model(run.text_encoder).eval() if run.text_encoder is not None else None
    del run
    _release(device)
    metadata = checkpoint_metadata(config, step)
    checkpoints = {}
    if config.training_method == "lora":
        checkpoints.update(save_lora(config.output_dir / "lora", unet, text_encoder, lora_settings(config), metadata))
        del unet, text_encoder
        unet, text_encoder = _fused(parts, config.output_dir / "lora", config.train_text_encoder)
    pipeline_dir = config.output_dir / "pipeline"
    # note: the exported pipeline holds the untouched fp32 frozen parts, so exports carry the base weights exactly
    export = _pipeline(parts, unet, vae=parts.vae, text_encoder=text_encoder or parts.text_encoder)
    with atomic_dir(pipeline_dir) as tmp:
        export.save_pretrained(tmp, safe_serialization=True)
    del export, unet, text_encoder
    _release(device)
    for dtype in ("fp16", "fp32"):
        path = config.output_dir / "checkpoints" / f"model-{dtype}.safetensors"
        checkpoints[dtype] = export_single_file(pipeline_dir, path, dtype, metadata)
    return TrainResult(
        stopped=False,
        final_step=step,
        pipeline_dir=pipeline_dir,
        samples=tuple(validator.samples),
        checkpoints=checkpoints,
        memory_plan=plan,
        class_images_generated=generated,
        resumed_from_step=start,
        kept_steps=kept_step_dirs(config.output_dir),
        evaluation=validator.evaluation,
    )


# ---------------------------------------------------------------------- setup helpers


def _release(device: torch.device) -> None:
    """Hand freed GPU memory back; on the CPU, dropped tensors are already freed (and gc.collect is slow)."""
    if device.type == "cuda":
        free_memory()


def _gpu_memory(device: torch.device) -> int | None:
    """The GPU memory this process may use: the card's, or its share of it (set_per_process_memory_fraction)."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    # note: the fraction wants an index (None: the current device), not a bare torch.device("cuda")
    return int(total * torch.cuda.get_per_process_memory_fraction(device.index))


def _accelerator(config: TrainConfig, device: torch.device) -> Accelerator:
    if device.type == "cuda":
        # note: a job's shapes never change, so cuDNN's search for the fastest convolutions pays off
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
    # note: accelerate keeps process-wide state, but a long-lived worker runs jobs with different settings
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=_supported_mixed_precision(config.mixed_precision, device.type),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=device.type == "cpu",
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


def _base_seed(seed: int | None) -> int:
    """The seed of the run's random generators: the config's, else a fresh one (saved with the state)."""
    return seed if seed is not None else random.SystemRandom().randrange(2**31)


def _make_trainees(
    config: TrainConfig, parts: Components, accelerator: Accelerator, base_seed: int, shared: bool
) -> _Trainees:
    """Trainable copies, optimizer, schedule, EMA and generators, prepared by accelerate."""
    device = accelerator.device
    unet = trainable_copy(parts.unet, shared).to(device)
    text_encoder = trainable_copy(parts.text_encoder, shared).to(device) if config.train_text_encoder else None
    if config.training_method == "lora":
        # note: the base weights stay frozen in the training precision; only the small fp32 adapters get
        # gradients and optimizer state, which is where LoRA's memory saving comes from
        weight_dtype = HALF.get(accelerator.mixed_precision, torch.float32)
        for model in (unet, text_encoder):
            if model is not None:
                model.to(dtype=weight_dtype)
        add_adapters(unet, text_encoder, lora_settings(config))
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if text_encoder is not None:
            # note: transformers 5.2x renamed gradient_checkpointing_enable (kept as a deprecated alias), which
            # is all that the 4.x and early 5.x releases in pyproject's range have
            enable = getattr(
                text_encoder, "activation_checkpointing_enable", text_encoder.gradient_checkpointing_enable
            )
            enable()
    if config.enable_xformers_memory_efficient_attention:
        if is_xformers_available():
            unet.enable_xformers_memory_efficient_attention()
        else:
            log.warning("xformers is not installed; using PyTorch's scaled-dot-product attention")
    ema = None
    if config.use_ema:
        ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config, foreach=True)
    scale = config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    lr = config.learning_rate * (scale if config.scale_lr else 1)
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": lr}]
    if text_encoder is not None:
        text_lr = (config.text_encoder_lr or config.learning_rate) * (scale if config.scale_lr else 1)
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": text_lr})
    optimizer = _make_optimizer(groups, config, device)
    # note: a prepared scheduler steps once per process, hence the num_processes factors (as the reference)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )
    if text_encoder is not None:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    return _Trainees(
        unet=unet,
        text_encoder=text_encoder,
        ema=ema,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        order_gen=torch.Generator().manual_seed(base_seed),
        data_gen=torch.Generator().manual_seed(base_seed + 1),
        noise_gen=torch.Generator(device).manual_seed(base_seed + 2),
    )


def _make_optimizer(groups: list[dict], config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(
        betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay, eps=config.adam_epsilon
    )
    if config.use_8bit_adam:
        # note: imported only when asked for; bitsandbytes probes the GPU at import time
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kwargs)
    # note: the fused kernel updates all parameters in one pass: faster, and no per-tensor temporaries
    return torch.optim.AdamW(groups, fused=device.type in ("cuda", "cpu"), **kwargs)


def _batch_order(count: int, config: TrainConfig, generator: torch.Generator, start_step: int):
    """Index batches into the photo set; on resume, replayed up to where the saved run stopped."""
    order = batches(count, config.train_batch_size, generator)
    for _ in range(start_step * config.gradient_accumulation_steps):
        next(order)
    return order


# ---------------------------------------------------------------------- class images


def _class_images(
    config: TrainConfig,
    parts: Components,
    device: torch.device,
    on_progress: Callable[[Progress], None],
    should_stop: Callable[[], bool],
) -> tuple[tuple, int] | None:
    """Uploaded class photos first, then generated ones from the cache: (paths, generated now), or None if stopped."""
    uploaded = config.class_images[: config.num_class_images]
    needed = config.num_class_images - len(uploaded)
    if needed == 0:
        return uploaded, 0
    spec = ClassImageSpec(
        model=parts.identity,
        prompt=config.class_prompt,
        negative_prompt=config.class_negative_prompt,
        resolution=config.resolution,
        num_inference_steps=config.class_inference_steps,
        guidance_scale=config.class_guidance_scale,
    )
    folder = class_image_folder(config.class_cache_dir, spec)
    started = time.monotonic()

    def report(made: int, total: int) -> None:
        eta = (time.monotonic() - started) / made * (total - made) if made else None
        on_progress(Progress("generating_class_images", made, total, None, eta))

    generated = fill_class_images(
        folder,
        spec,
        needed,
        lambda: generation_pipeline(parts, device),
        config.sample_batch_size,
        report,
        should_stop,
    )
    _release(device)
    if generated is None:
        return None
    evict_class_images(config.class_cache_dir, config.class_cache_max_bytes, keep=folder)
    return uploaded + tuple(class_image_path(folder, i) for i in range(needed)), generated


# ---------------------------------------------------------------------- prompts


class _PromptEmbeddings:
    """Text-encoder outputs for the instance prompt (and the class prompt) expanded to a batch.

    The prompts are the same for every image of a half-batch, so the encoder runs on the distinct
    prompts only: once up front when frozen, once per micro-step (with gradients) when trained.
    """

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, prompts: list[str], trained: bool):
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        self.ids = ids.to(text_encoder.device)
        self.text_encoder = text_encoder if trained else None
        if not trained:
            with torch.no_grad():
                self.cached = text_encoder(self.ids).last_hidden_state

    def __call__(self, instances: int, classes: int) -> torch.Tensor:
        embeddings = self.cached if self.text_encoder is None else self.text_encoder(self.ids).last_hidden_state
        which = torch.tensor([0] * instances + [1] * classes, device=embeddings.device)
        return embeddings[which]


# ---------------------------------------------------------------------- training state


def _trained_state(model: torch.nn.Module, config: TrainConfig) -> dict[str, torch.Tensor]:
    """What a saved training state must hold of a model: every weight, or a LoRA run's adapters only."""
    state = model.state_dict()
    if config.training_method == "lora":
        return {key: value for key, value in state.items() if ".lora_A." in key or ".lora_B." in key}
    return state


def _save(config: TrainConfig, run: _Trainees, accelerator: Accelerator, step: int, base_seed: int) -> None:
    weights = {"unet": _trained_state(accelerator.unwrap_model(run.unet), config)}
    if run.text_encoder is not None:
        weights["text_encoder"] = _trained_state(accelerator.unwrap_model(run.text_encoder), config)
    trainer = {
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        # note: not order_gen: the batch order is replayed from the seed (see _batch_order)
        "generators": {name: getattr(run, name).get_state() for name in ("data_gen", "noise_gen")},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    info = {
        "base_seed": base_seed,
        "base_model": config.base_model,
        "train_text_encoder": config.train_text_encoder,
        "use_ema": config.use_ema,
        "training_method": config.training_method,
        "lora_rank": config.lora_rank,
        "optimizer": type(run.optimizer.optimizer).__name__,
    }
    save_state(config.output_dir, step, weights, trainer, info, config.checkpoints_total_limit)


def _check_resumable(info: dict, config: TrainConfig) -> None:
    """Refuse a saved state of a different kind of run (its weights or moments would not fit)."""
    for name in ("base_model", "train_text_encoder", "use_ema", "training_method", "lora_rank"):
        # note: states saved before a setting existed were saved with its default
        if info.get(name, TRAIN_DEFAULTS.get(name)) != getattr(config, name):
            raise ValueError(f"the saved training state has {name}={info[name]!r}, this run {getattr(config, name)!r}")


def _restore(saved: tuple, run: _Trainees, accelerator: Accelerator, config: TrainConfig) -> int:
    """Load a saved state into the run; returns its step."""
    info, weights, trainer = saved
    # note: a LoRA state holds the adapters only; the base weights are the base model's
    strict = config.training_method != "lora"
    accelerator.unwrap_model(run.unet).load_state_dict(weights["unet"], strict=strict)
    if run.text_encoder is not None:
        accelerator.unwrap_model(run.text_encoder).load_state_dict(weights["text_encoder"], strict=strict)
    if info["optimizer"] == type(run.optimizer.optimizer).__name__:
        run.optimizer.load_state_dict(trainer["optimizer"])
    else:
        # note: memory_profile "auto" may pick another optimizer on another GPU; its moments then start afresh
        log.warning("saved optimizer %s differs from this run's; its state starts afresh", info["optimizer"])
    run.lr_scheduler.load_state_dict(trainer["lr_scheduler"])
    if run.ema is not None:
        run.ema.load_state_dict(trainer["ema"])
        run.ema.to(accelerator.device)
    if accelerator.scaler is not None and trainer["scaler"]:
        accelerator.scaler.load_state_dict(trainer["scaler"])
    for name, state in trainer["generators"].items():
        getattr(run, name).set_state(state)
    torch.set_rng_state(trainer["torch_rng"])
    if trainer["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    return info["step"]


# ---------------------------------------------------------------------- sampling


def _pipeline(parts: Components, unet: torch.nn.Module, vae, text_encoder) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=parts.tokenizer,
        unet=unet,
        # note: the study found DDIM best on overfit models, so the saved pipeline defaults to it
        scheduler=DDIMScheduler.from_config(parts.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


class _Validator:
    """Samples, keeps and scores the weights at a validation step (see validate.py), then reports it."""

    def __init__(self, config, parts, accelerator, weight_dtype, photos, start, on_progress, on_validation):
        self.config, self.parts, self.accelerator, self.weight_dtype = config, parts, accelerator, weight_dtype
        self.on_progress, self.on_validation = on_progress, on_validation
        prompts = validation_prompts(config)
        per_prompt = config.num_validation_images
        self.prompts = [prompt for prompt, _ in prompts for _ in range(per_prompt)]
        self.contexts = [context for _, context in prompts for _ in range(per_prompt)]
        self.seeds = sample_seeds(config, len(self.prompts))
        self.evaluator = Evaluator(
            config, photos, accelerator.device, start, functools.partial(_scorer, models_dir=config.models_dir)
        )
        self.samples: list[Sample] = []
        self.evaluation: dict | None = None

    @torch.no_grad()
    def __call__(self, step: int, run: _Trainees) -> None:
        config, accelerator = self.config, self.accelerator
        final = step == config.max_train_steps
        self.on_progress(Progress("sampling", step, config.max_train_steps, None, None))
        unet = accelerator.unwrap_model(run.unet)
        text_encoder = accelerator.unwrap_model(run.text_encoder) if run.text_encoder is not None else None
        trained = [model for model in (unet, text_encoder) if model is not None]
        if run.ema is not None:
            # note: samples and kept weights show the averaged weights, as the export will
            run.ema.store(unet.parameters())
            run.ema.copy_to(unet.parameters())
        for model in trained:
            model.eval()
        try:
            pipeline = _pipeline(
                self.parts,
                unet,
                vae=frozen_on(self.parts.vae, accelerator.device, self.weight_dtype),
                text_encoder=text_encoder or frozen_on(self.parts.text_encoder, accelerator.device, self.weight_dtype),
            )
            with accelerator.autocast():
                samples = sample_images(
                    pipeline,
                    self.prompts,
                    self.seeds,
                    config.validation_inference_steps,
                    config.guidance_scale,
                    config.resolution,
                    config.output_dir / SAMPLES_DIR,
                    step,
                    scheduler=config.validation_scheduler,
                )
            del pipeline
            weights_dir = None
            if config.keep_step_weights and not final:
                weights_dir = self._keep(step, unet, text_encoder)
        finally:
            for model in trained:
                model.train()
            if run.ema is not None:
                run.ema.restore(unet.parameters())
        _release(accelerator.device)
        self.samples += samples
        self.evaluator.score(step, samples, self.contexts)
        kept = kept_step_dirs(config.output_dir)
        self.evaluation = self.evaluator.evaluation(set(kept) | {step})
        recommended = self.evaluation["recommended_step"] if self.evaluation else None
        kept = prune(kept, config.kept_steps_limit, protected={step, recommended})
        self.on_validation(
            Validation(
                step=step,
                samples=tuple(samples),
                weights_dir=weights_dir,
                weights_format="lora" if config.training_method == "lora" else "diffusers",
                kept_steps=tuple(kept),
                evaluation=self.evaluation,
            )
        )

    def _keep(self, step: int, unet, text_encoder) -> Path:
        """Save what training changed at this step: the LoRA files, or the trained models laid out like the
        pipeline folder."""
        path = step_dir(self.config.output_dir, step)
        with atomic_dir(path) as tmp:
            if self.config.training_method == "lora":
                save_lora(tmp, unet, text_encoder, lora_settings(self.config), checkpoint_metadata(self.config, step))
            else:
                unet.save_pretrained(tmp / "unet", safe_serialization=True)
                if text_encoder is not None:
                    text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        return path


# The scorer loaded last, by (model, device, models dir): a worker scores job after job with it.
_SCORERS: dict[tuple, object] = {}


def _scorer(model: str, device: torch.device, models_dir: Path):
    """The scorer for `model`, loaded once per process (a worker scores many jobs)."""
    from .score import Scorer

    cache = _SCORERS
    key = (model, str(device), models_dir)
    if key not in cache:
        cache.clear()  # note: one scoring model in memory at a time
        cache[key] = Scorer(model, models_dir, device)
    return cache[key]


def lora_settings(config: TrainConfig) -> LoraSettings:
    return LoraSettings(rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout)


def _fused(parts: Components, lora_dir: Path, text_encoder_trained: bool):
    """The base model's fp32 UNet (and text encoder) with the saved LoRA merged in: what a full export holds.

    Merged into fresh copies of the untouched fp32 base (the run may have trained over an fp16 one), through
    diffusers' own loader, so the export is what anyone loading the LoRA file onto the base would get.
    """
    text_encoder = copy.deepcopy(parts.text_encoder) if text_encoder_trained else parts.text_encoder
    pipeline = _pipeline(parts, copy.deepcopy(parts.unet), vae=parts.vae, text_encoder=text_encoder)
    pipeline.load_lora_weights(lora_dir, weight_name=LORA_FILE)
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()
    return pipeline.unet, pipeline.text_encoder if text_encoder_trained else None


def _stopped(step: int, plan: MemoryPlan, generated: int = 0, start: int = 0) -> TrainResult:
    log.info("stopped at step %d", step)
    return TrainResult(
        stopped=True,
        final_step=step,
        pipeline_dir=None,
        samples=(),
        checkpoints={},
        memory_plan=plan,
        class_images_generated=generated,
        resumed_from_step=start,
    )

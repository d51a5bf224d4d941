"""The Dreambooth loop: teach a base model a subject from a few photos, then sample and export.

Options and their meanings follow diffusers' train_dreambooth.py; what differs is how the work is
done: class images come from a shared cache, photos are VAE-encoded once where their crop cannot vary,
prompt embeddings are computed once while the text encoder is frozen, and frozen parts leave the GPU
once they are no longer needed.
"""

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers.training_utils import set_seed

from .components import ComponentCache, Components, base_model_family, frozen_on, load_components, release
from .config import MemoryPlan, Progress, TrainConfig, TrainResult
from .data import (
    LatentSource,
    PromptEmbeddings,
    batch_order,
    batches,
    bucket_batches,
    load_photo,
    overlong_prompts,
)
from .errors import TRAINING_OUT_OF_MEMORY, out_of_memory_as_error
from .export import export_run
from .families import Conditioning
from .loss import dreambooth_loss, min_snr_weights, sample_noise, training_target
from .memory import apply_memory_plan, plan_memory
from .pivotal import (
    RowKeeper,
    inversion_file,
    learned_vectors,
    load_embedding,
    save_embedding,
    with_new_tokens,
    with_placeholders,
)
from .prior import prepare_class_images
from .state import check_resumable, find_state, load_state, restore_run, save_run
from .steps import Validation, forget_after, is_validation_step, kept_step_dirs
from .trainees import Trainees, make_inversion_trainees, make_trainees, weight_dtype
from .validate import Validator

log = logging.getLogger(__name__)


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

    At each validation step (steps.py) the run samples, keeps that step's weights, scores the samples
    and calls `on_validation`. With `models`, the base model comes from (and stays in) that cache and is
    never modified; without it, the base model is loaded for this run alone. A GPU that runs out of memory
    raises JobError("out_of_memory") naming the settings to change, with the GPU memory handed back.
    """
    run = lambda: _train(config, _Hooks(on_progress, should_stop, on_validation), models, on_memory_plan)
    return out_of_memory_as_error(run, TRAINING_OUT_OF_MEMORY)


@dataclass(frozen=True)
class _Hooks:
    on_progress: Callable[[Progress], None]
    should_stop: Callable[[], bool]
    on_validation: Callable[[Validation], None]

    def stop_if_asked(self, step: int) -> None:
        """The one way a run stops early: raise _Stopped, which _train turns into a stopped result."""
        if self.should_stop():
            raise _Stopped(step)


class _Stopped(Exception):
    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}")
        self.step = step


def _train(config: TrainConfig, hooks: _Hooks, models: ComponentCache | None, on_memory_plan) -> TrainResult:
    hooks.on_progress(Progress("preparing", 0, config.total_steps, None, None))
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    release(device)
    family = base_model_family(config.base_model, config.models_dir, config.revision)
    plan = plan_memory(config, device.type, _gpu_memory(device), family.info.name)
    config = apply_memory_plan(config, plan)
    log.info(plan.describe())
    on_memory_plan(plan)
    accelerator = _accelerator(config, device)
    parts = models.get(config.base_model, config.models_dir, config.revision) if models else load_components(
        config.base_model, config.models_dir, config.revision
    )  # fmt: skip
    state_path = find_state(config.output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    saved = load_state(state_path) if state_path else None
    if saved:
        check_resumable(saved[0], config)
    base_seed = saved[0]["base_seed"] if saved else _base_seed(config.seed)
    if config.seed is not None:
        set_seed(config.seed)
    generated, start = 0, 0
    try:
        class_paths = ()
        if config.with_prior_preservation:
            prepared = prepare_class_images(config, parts, device, hooks.on_progress, hooks.should_stop)
            if prepared is None:
                raise _Stopped(0)
            class_paths, generated = prepared
        start = saved[0]["step"] if saved else 0
        if start:
            log.info("resuming from %s at step %d of %d", state_path, start, config.total_steps)
        forget_after(config.output_dir, start)
        photos = [
            load_photo(path, config.resolution, box, config.bucketed, subject)
            for path, box, subject in zip(config.instance_images, config.crop_boxes, config.subject_boxes, strict=True)
        ]
        validator = Validator(config, parts, accelerator, photos, start, hooks.on_progress, hooks.on_validation)
        if config.training_method == "pivotal":
            parts, saved = _invert(config, parts, accelerator, saved, base_seed, validator, hooks, photos)
        run = make_trainees(config, parts, accelerator, base_seed, shared=models is not None)
        first = restore_run(saved, run, config) if saved else config.inversion_steps
        data = _TrainingData(config, parts, run, class_paths, first - config.inversion_steps, photos)
        step = _train_steps(config, run, data, validator, hooks, first, base_seed)
        del data  # note: the latents and embeddings leave the GPU before the final samples
        release(device)
        hooks.stop_if_asked(step)
        validator(step, run)
        hooks.stop_if_asked(step)
        hooks.on_progress(Progress("exporting", step, config.total_steps, None, 0.0))
        pipeline_dir, checkpoints = export_run(config, parts, run, step)
    except _Stopped as stopped:
        log.info("stopped at step %d", stopped.step)
        return TrainResult(
            stopped=True, final_step=stopped.step, pipeline_dir=None, samples=(), checkpoints={}, memory_plan=plan,
            class_images_generated=generated, resumed_from_step=start,
        )  # fmt: skip
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


# ---------------------------------------------------------------------- the loop


def _invert(
    config: TrainConfig, parts: Components, accelerator: Accelerator, saved: tuple | None, base_seed: int,
    validate: Validator, hooks: _Hooks, photos: list,
) -> tuple[Components, tuple | None]:  # fmt: skip
    """Pivotal tuning's phase one (pivotal.py), or its result when a resumed run is past it: the base model's
    parts with the learned tokens for phase two, and the saved state phase two resumes from (None: afresh)."""
    inversion = config.inversion_steps
    # note: phase one writes its result before phase two's first step, so every later state has it; a state at
    # phase one's last step (stopped before the handoff) resumes phase one, to write it
    if saved and saved[0]["step"] > inversion:
        return with_new_tokens(parts, config, load_embedding(inversion_file(config.output_dir))), saved
    pivoted = with_new_tokens(parts, config)
    run = make_inversion_trainees(config, pivoted, accelerator, base_seed)
    start = restore_run(saved, run, config) if saved else 0
    # note: phase one learns the subject's tokens from its photos alone; the class prompt has none of them
    data = _TrainingData(config, pivoted, run, (), start, photos)
    validate.parts = pivoted
    keep_rows = RowKeeper(pivoted.tokenizers, run.unwrapped()[1], config)
    step = _train_steps(config, run, data, validate, hooks, start, base_seed, until=inversion, after_step=keep_rows)
    vectors = learned_vectors(pivoted.tokenizers, run.unwrapped()[1], config)
    save_embedding(inversion_file(config.output_dir), vectors, config, step)
    run.finish()
    del data, run, keep_rows
    release(accelerator.device)
    hooks.stop_if_asked(step)
    pivoted = with_new_tokens(parts, config, vectors)
    validate.parts = pivoted
    return pivoted, None


def _train_steps(
    config: TrainConfig, run: Trainees, data: "_TrainingData", validate: Validator, hooks: _Hooks, start: int,
    base_seed: int, until: int | None = None, after_step: Callable[[], None] = lambda: None,
) -> int:  # fmt: skip
    """Optimizer steps from `start` to `until` (the run's last step unless said), saving and validating along the
    way; the last step. Steps up to the run's inversion_steps are pivotal tuning's phase one ("inversion")."""
    total = config.total_steps
    until = total if until is None else until
    phase = "inversion" if until <= config.inversion_steps else "training"
    trained = "unet" + "".join(f" + text encoder {i + 1}" for i in range(len(run.text_encoders)))
    log.info(
        "training steps %d-%d on %s (mixed precision %s, %s)", start + 1, total, run.accelerator.device,
        run.accelerator.mixed_precision, trained,
    )  # fmt: skip
    started, step = time.monotonic(), start
    while step < until:
        hooks.stop_if_asked(step)
        loss = _optimizer_step(config, run, data)
        after_step()
        step += 1
        elapsed = time.monotonic() - started
        hooks.on_progress(Progress(phase, step, total, loss.item(), elapsed / (step - start) * (until - step)))
        if config.checkpointing_steps and step % config.checkpointing_steps == 0:
            save_run(config, run, step, base_seed)
        if step < total and is_validation_step(config, step):
            hooks.stop_if_asked(step)
            validate(step, run)
            started = time.monotonic() - elapsed  # note: sampling time is not training time, for the ETA
    log.info("trained to step %d", step)
    return step


def _optimizer_step(config: TrainConfig, run: Trainees, data: "_TrainingData") -> torch.Tensor:
    """One optimizer step over gradient_accumulation_steps micro-steps; the step's mean loss (on the device)."""
    accelerator, parameters = run.accelerator, run.parameters()
    step_loss = torch.zeros((), device=accelerator.device)
    for _ in range(config.gradient_accumulation_steps):
        with accelerator.accumulate(*run.models):
            loss = _micro_step(config, run, data)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            run.optimizer.step()
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        step_loss += loss.detach() / config.gradient_accumulation_steps
    if run.ema is not None:
        run.ema.step(run.unet.parameters())
    return step_loss


def _micro_step(config: TrainConfig, run: Trainees, data: "_TrainingData") -> torch.Tensor:
    """The denoising loss of one batch: noise the latents at random timesteps, predict, compare."""
    parts = data.next_batch(run)
    if len(parts) == 1:
        return _denoising_loss(config, run, data, parts[0], data.prior_weight)
    instances, classes = parts
    # note: the class images' loss on a UNet call of their own, weighed as in the joint batch's formula
    return _denoising_loss(config, run, data, instances, None) + data.prior_weight * _denoising_loss(
        config, run, data, classes, None
    )


def _denoising_loss(
    config: TrainConfig, run: Trainees, data: "_TrainingData", part: "_Batch", prior_weight: float | None
) -> torch.Tensor:
    """The loss of one UNet call: its instance rows (Min-SNR and subject weighted, where asked), then, with a
    prior_weight, as many class rows."""
    latents, noise_scheduler = part.latents, data.noise_scheduler
    noise = sample_noise(latents, config.offset_noise, run.noise_gen)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=run.noise_gen, device=latents.device
    )
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    unet_kwargs = data.family.unet_kwargs(part.conditioning, part.time_ids)
    prediction = run.step_unet(noisy_latents, timesteps, **unet_kwargs).sample
    target = training_target(noise_scheduler, latents, noise, timesteps)
    weights = None
    if config.snr_gamma and part.instances:
        weights = min_snr_weights(noise_scheduler, timesteps[: part.instances], config.snr_gamma)
    if part.subject_weights is None:
        return dreambooth_loss(prediction, target, prior_weight, weights)
    return masked_loss(prediction, target, part.subject_weights, prior_weight, weights)


def masked_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    pixel_weights: torch.Tensor,
    prior_loss_weight: float | None = None,
    instance_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """dreambooth_loss with the instance images' squared errors weighed per latent pixel: the mean over pixels of
    pixel_weights (batch, 1, height, width) x MSE, then Min-SNR's instance_weights per image; the class images
    (the second half, with a prior_loss_weight) unweighed."""
    # note: as kohya's masked loss, not renormalised by the weights' sum: a mostly-background photo counts less
    pred, target = prediction.float(), target.float()
    if prior_loss_weight is not None:
        pred, pred_prior = pred.chunk(2)
        target, target_prior = target.chunk(2)
    squared = F.mse_loss(pred, target, reduction="none") * pixel_weights.to(pred.device, pred.dtype)
    per_image = squared.mean(dim=tuple(range(1, pred.ndim)))
    loss = (per_image * instance_weights).mean() if instance_weights is not None else per_image.mean()
    if prior_loss_weight is not None:
        loss = loss + prior_loss_weight * F.mse_loss(pred_prior, target_prior)
    return loss


@dataclass(frozen=True)
class _Batch:
    """One UNet call's worth of a micro-step: latents, time ids and conditioning of `instances` instance photos,
    then of any class images; with masked loss, the instance rows' loss weights at latent resolution."""

    latents: torch.Tensor
    time_ids: torch.Tensor
    conditioning: Conditioning
    instances: int
    subject_weights: torch.Tensor | None = None


class _TrainingData:
    """Where each micro-step's latents and prompt embeddings come from: the photos (and class images) as
    latents, the prompts as embeddings, and the batch order.

    With aspect-ratio buckets (crop "bucket") each batch's instance photos come from one bucket; class images stay
    square at the resolution (generated ones are square anyway), so a batch in a non-square bucket runs its
    class images through the UNet on a call of their own."""

    def __init__(
        self, config: TrainConfig, parts: Components, run: Trainees, class_paths: tuple, start: int, photos: list
    ):
        """`start`: the optimizer steps of this phase already done (a resumed run replays the batch order)."""
        device, dtype = run.accelerator.device, weight_dtype(run.accelerator)
        vae = frozen_on(parts.vae, device, dtype)
        crop = (config.resolution, config.center_crop, config.random_flip, config.train_batch_size)
        self.photos = photos
        self.instances = LatentSource(vae, self.photos, *crop)
        class_photos = [load_photo(p, config.resolution) for p in class_paths]
        self.classes = LatentSource(vae, class_photos, *crop) if class_paths else None
        prompts = [with_placeholders(p, config) if config.inversion_steps else p for p in config.photo_prompts]
        for prompt, length in overlong_prompts(parts.tokenizers, prompts):
            log.warning("prompt of %d tokens is cut to the text encoder's limit: %r", length, prompt)
        text_encoders = run.text_encoders or tuple(frozen_on(m, device, dtype) for m in parts.text_encoders)
        self.family = parts.family
        class_prompt = config.class_prompt if class_paths else None
        self.embed = PromptEmbeddings(
            parts.family, parts.tokenizers, text_encoders, prompts, class_prompt, bool(run.text_encoders)
        )
        self.noise_scheduler = parts.noise_scheduler
        self.prior_weight = config.prior_loss_weight if class_paths else None
        self.background = config.masked_loss_background if config.masked_loss else None
        self.order = batch_order(
            self._batches(config, len(class_photos), run.order_gen), config.gradient_accumulation_steps, start
        )
        if config.bucketed:
            sizes = ", ".join(
                f"{w}x{h}: {len(b)}" for b in self.instances.buckets() for h, w in [self.instances.sizes[b[0]]]
            )
            log.info("aspect-ratio buckets (width x height: photos): %s", sizes)
        # note: frozen parts whose work is done leave the device
        del vae, text_encoders
        release(device)

    def _batches(self, config: TrainConfig, classes: int, generator: torch.Generator):
        """(instance photo indices, class image indices or None) of each micro-step, forever."""
        size = config.train_batch_size
        if config.bucketed:
            # note: class images are square (one bucket), so they follow an order of their own
            class_order = batches(classes, size, generator) if classes else None
            for photos in bucket_batches(self.instances.buckets(), size, generator):
                yield photos, next(class_order) if class_order else None
        else:
            for indices in batches(max(len(self.photos), classes), size, generator):
                yield indices % len(self.photos), indices % classes if classes else None

    def next_batch(self, run: Trainees) -> list[_Batch]:
        """The micro-step's UNet calls: one of the instances then as many class images, or, when their sizes
        differ (a non-square bucket), the instances' and the class images' apart."""
        photos, classes = next(self.order)
        latents, time_ids = self.instances(photos, run.data_gen, run.noise_gen)
        weights = None
        if self.background is not None:
            weights = self.instances.subject_weights(tuple(latents.shape[-2:]), self.background).to(latents.device)
        if classes is None:
            return [_Batch(latents, time_ids, self.embed(photos, 0), len(photos), weights)]
        class_latents, class_ids = self.classes(classes, run.data_gen, run.noise_gen)
        if class_latents.shape[1:] != latents.shape[1:]:
            return [
                _Batch(latents, time_ids, self.embed(photos, 0), len(photos), weights),
                _Batch(class_latents, class_ids, self.embed(photos[:0], len(classes)), 0),
            ]
        return [
            _Batch(
                torch.cat([latents, class_latents]), torch.cat([time_ids, class_ids]),
                self.embed(photos, len(classes)), len(photos), weights,
            )
        ]  # fmt: skip


# ---------------------------------------------------------------------- setup


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

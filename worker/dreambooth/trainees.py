"""What the loop updates: trainable copies of the UNet (and the text encoders), their optimizer, schedule, EMA
and the run's random generators, prepared by accelerate."""

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils.import_utils import is_xformers_available

from .components import Components, frozen_on, trainable_copy
from .config import TrainConfig
from .lora import add_adapters, lora_settings

log = logging.getLogger(__name__)

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Trainees:
    """What the loop updates, and everything a saved training state must hold to resume exactly."""

    unet: torch.nn.Module
    text_encoders: tuple[torch.nn.Module, ...]  # every text encoder of the family when train_text_encoder, else ()
    ema: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    accelerator: Accelerator
    order_gen: torch.Generator  # batch order (replayed from the seed on resume, see data.batch_order)
    data_gen: torch.Generator  # random crops and flips
    noise_gen: torch.Generator  # latent draws, noise and timesteps, on the training device
    step_unet: torch.nn.Module | None = None  # what training steps call: the UNet, or its compiled form

    def __post_init__(self):
        if self.step_unet is None:
            self.step_unet = self.unet

    @property
    def models(self) -> list[torch.nn.Module]:
        return [self.unet, *self.text_encoders]

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trained parameters (for LoRA runs: the adapters')."""
        return [p for p in itertools.chain.from_iterable(m.parameters() for m in self.models) if p.requires_grad]

    def unwrapped(self) -> tuple[torch.nn.Module, tuple[torch.nn.Module, ...]]:
        """The UNet and the trained text encoders without accelerate's wrappers."""
        unwrap = self.accelerator.unwrap_model
        return unwrap(self.unet), tuple(unwrap(model) for model in self.text_encoders)

    def finish(self) -> tuple[torch.nn.Module, tuple[torch.nn.Module, ...]]:
        """The trained models to save (EMA weights applied, eval mode); the run drops everything else it held."""
        unet, text_encoders = self.unwrapped()
        if self.ema is not None:
            self.ema.copy_to(unet.parameters())
        for model in (unet, *text_encoders):
            model.eval()
        # note: accelerate keeps references to what it prepared; without them the optimizer state can be freed
        self.accelerator.free_memory()
        self.unet = self.step_unet = self.ema = self.optimizer = self.lr_scheduler = None
        self.text_encoders = ()
        return unet, text_encoders

    @contextlib.contextmanager
    def evaluated(self) -> Iterator[tuple[torch.nn.Module, tuple[torch.nn.Module, ...]]]:
        """The unwrapped models in eval mode, holding the EMA weights when there are any; training resumes after."""
        unet, text_encoders = self.unwrapped()
        if self.ema is not None:
            # note: samples and kept weights show the averaged weights, as the export will
            self.ema.store(unet.parameters())
            self.ema.copy_to(unet.parameters())
        for model in (unet, *text_encoders):
            model.eval()
        try:
            yield unet, text_encoders
        finally:
            for model in (unet, *text_encoders):
                model.train()
            if self.ema is not None:
                self.ema.restore(unet.parameters())


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype frozen parts run in: the mixed precision's half type, else fp32."""
    return HALF.get(accelerator.mixed_precision, torch.float32)


def make_trainees(
    config: TrainConfig, parts: Components, accelerator: Accelerator, base_seed: int, shared: bool
) -> Trainees:
    """Trainable copies, optimizer, schedule, EMA and generators, prepared by accelerate."""
    device = accelerator.device
    lora = config.adapter_method == "lora"
    # note: LoRA's base weights stay frozen in the training precision; only the small fp32 adapters get gradients
    # and optimizer state, which is where its memory saving comes from. They reach the device already cast: an
    # fp32 copy on the GPU first would be the run's peak (10 GB more for SDXL's UNet)
    dtype = weight_dtype(accelerator) if lora else torch.float32
    unet = trainable_copy(parts.unet, shared).to(device, dtype=dtype)
    text_encoders = tuple(
        trainable_copy(model, shared).to(device, dtype=dtype)
        for model in (parts.text_encoders if config.train_text_encoder else ())
    )
    if lora:
        add_adapters(unet, text_encoders, lora_settings(config))
    _save_memory(config, unet, text_encoders)
    ema = None
    if config.use_ema:
        ema = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config, foreach=True)
    optimizer = _make_optimizer(_parameter_groups(config, unet, text_encoders, accelerator), config, device)
    lr_scheduler = _lr_schedule(config, optimizer, accelerator, config.max_train_steps)
    *models, optimizer, lr_scheduler = accelerator.prepare(unet, *text_encoders, optimizer, lr_scheduler)
    return Trainees(
        unet=models[0],
        # note: only the training steps run compiled (one shape, one graph); samples, saves and exports see the
        # plain module, whose weights the compiled one shares
        step_unet=torch.compile(models[0]) if compiles(config, device) else None,
        text_encoders=tuple(models[1:]),
        ema=ema,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        accelerator=accelerator,
        order_gen=torch.Generator().manual_seed(base_seed),
        data_gen=torch.Generator().manual_seed(base_seed + 1),
        noise_gen=torch.Generator(device).manual_seed(base_seed + 2),
    )


# A compiled UNet's training steps pay back their compile from about this many micro-steps on. Measured on an
# H200 (bench/RESULTS.md, SD 1.5's architecture at 512 px, batch 1, fp16): 140 s to compile and run the first step,
# then 9.85 steps/s against 6.54 uncompiled, 0.051 s saved a step. A worker's later jobs find most of the compile
# in torch's on-disk cache, so this errs on the side of not compiling.
COMPILE_PAYS_BACK = 3000


def compiles(config: TrainConfig, device: torch.device) -> bool:
    """Whether the run's training steps go through torch.compile: as compile_unet says, or (auto) on a GPU for a
    run long enough to pay the compile back."""
    if config.compile_unet != "auto":
        return config.compile_unet == "on"
    micro_steps = config.max_train_steps * config.gradient_accumulation_steps
    return device.type == "cuda" and micro_steps >= COMPILE_PAYS_BACK


def make_inversion_trainees(
    config: TrainConfig, parts: Components, accelerator: Accelerator, base_seed: int
) -> Trainees:
    """Pivotal tuning's phase one: the text encoders' input embeddings train (pivotal.RowKeeper puts back all
    but the new tokens' rows after each step), the UNet is frozen in the training precision.

    `parts` are pivotal.with_new_tokens' copies, so the text encoders here are this run's own.
    """
    device = accelerator.device
    unet = frozen_on(parts.unet, device, weight_dtype(accelerator))
    if config.gradient_checkpointing and unet is parts.unet:
        unet = copy.deepcopy(unet)  # note: the cached base model itself must not change, even its modes
    text_encoders = tuple(model.to(device).train() for model in parts.text_encoders)
    embeddings = []
    for model in text_encoders:
        model.requires_grad_(False)
        embeddings.append(model.get_input_embeddings().weight.requires_grad_(True))
    _save_memory(config, unet, ())
    optimizer = torch.optim.AdamW(embeddings, lr=config.textual_inversion_lr, **_adam_options(config))
    lr_scheduler = _lr_schedule(config, optimizer, accelerator, config.inversion_steps)
    *models, optimizer, lr_scheduler = accelerator.prepare(unet, *text_encoders, optimizer, lr_scheduler)
    return Trainees(
        unet=models[0],
        text_encoders=tuple(models[1:]),
        ema=None,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        accelerator=accelerator,
        # note: generators of their own, so phase two draws the same whether or not a resume split the run
        order_gen=torch.Generator().manual_seed(base_seed + 10),
        data_gen=torch.Generator().manual_seed(base_seed + 11),
        noise_gen=torch.Generator(device).manual_seed(base_seed + 12),
    )


def _save_memory(config: TrainConfig, unet: torch.nn.Module, text_encoders: tuple) -> None:
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for text_encoder in text_encoders:
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


def _parameter_groups(config: TrainConfig, unet, text_encoders: tuple, accelerator: Accelerator) -> list[dict]:
    """The UNet's trained parameters at learning_rate, the text encoders' at text_encoder_lr."""
    scale = config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    factor = scale if config.scale_lr else 1
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": config.learning_rate * factor}]
    text_lr = (config.text_encoder_lr or config.learning_rate) * factor
    for text_encoder in text_encoders:
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": text_lr})
    return groups


def _lr_schedule(config: TrainConfig, optimizer, accelerator: Accelerator, steps: int):
    """The learning-rate schedule of a phase of `steps` optimizer steps."""
    # note: a prepared scheduler steps once per process, hence the num_processes factors (as the reference)
    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=steps * accelerator.num_processes,
        num_cycles=config.lr_num_cycles,
        power=config.lr_power,
    )


def _adam_options(config: TrainConfig) -> dict:
    return dict(
        betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay, eps=config.adam_epsilon
    )


def _make_optimizer(groups: list[dict], config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    kwargs = _adam_options(config)
    if config.use_8bit_adam:
        # note: imported only when asked for; bitsandbytes probes the GPU at import time
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kwargs)
    # note: the fused kernel updates all parameters in one pass: faster, and no per-tensor temporaries
    return torch.optim.AdamW(groups, fused=device.type in ("cuda", "cpu"), **kwargs)

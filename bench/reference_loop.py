"""A faithful re-implementation of diffusers' examples/dreambooth/train_dreambooth.py, for comparison.

Written from that script (it is not installed here): the same class-image generation, dataset,
collate function, optimizer choice, accelerate preparation and inner loop, with its defaults — torch
AdamW (no fused kernel), the VAE encoding every batch every step, the text encoder run every step on
every sample's prompt ids, zero_grad(set_to_none=False) — and without its Hub, logging, validation and
checkpoint-saving branches, which the benchmark does not reach. torchvision's transforms are
re-done with PIL (Resize(BILINEAR), CenterCrop/RandomCrop, ToTensor, Normalize([0.5], [0.5])).
"""

import hashlib
import itertools
import math
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import set_seed
from PIL import Image
from PIL.ImageOps import exif_transpose
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPTextModel, CLIPTokenizer

# The script's argparse defaults, for the options this re-implementation reads.
DEFAULTS = dict(
    revision=None,
    class_data_dir=None,
    class_prompt=None,
    with_prior_preservation=False,
    prior_loss_weight=1.0,
    num_class_images=100,
    seed=None,
    resolution=512,
    center_crop=False,
    train_text_encoder=False,
    train_batch_size=4,
    sample_batch_size=4,
    num_train_epochs=1,
    max_train_steps=None,
    gradient_accumulation_steps=1,
    gradient_checkpointing=False,
    learning_rate=5e-6,
    scale_lr=False,
    lr_scheduler="constant",
    lr_warmup_steps=500,
    lr_num_cycles=1,
    lr_power=1.0,
    use_8bit_adam=False,
    dataloader_num_workers=0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_weight_decay=1e-2,
    adam_epsilon=1e-08,
    max_grad_norm=1.0,
    mixed_precision=None,
    set_grads_to_none=False,
    tokenizer_max_length=None,
    text_encoder_use_attention_mask=False,
)


def reference_args(**options) -> Namespace:
    return Namespace(**{**DEFAULTS, **options})


class DreamBoothDataset(Dataset):
    """The script's dataset: instance images and prompts, with class images and prompts alongside."""

    def __init__(
        self,
        instance_data_root,
        instance_prompt,
        tokenizer,
        class_data_root=None,
        class_prompt=None,
        class_num=None,
        size=512,
        center_crop=False,
        tokenizer_max_length=None,
    ):
        self.size, self.center_crop, self.tokenizer = size, center_crop, tokenizer
        self.tokenizer_max_length = tokenizer_max_length
        self.instance_images_path = sorted(Path(instance_data_root).iterdir())
        self.num_instance_images = len(self.instance_images_path)
        self.instance_prompt = instance_prompt
        self._length = self.num_instance_images
        if class_data_root is not None:
            self.class_data_root = Path(class_data_root)
            self.class_images_path = sorted(self.class_data_root.iterdir())
            self.num_class_images = (
                min(len(self.class_images_path), class_num) if class_num else len(self.class_images_path)
            )
            self._length = max(self.num_class_images, self.num_instance_images)
            self.class_prompt = class_prompt
        else:
            self.class_data_root = None

    def image_transforms(self, image: Image.Image) -> torch.Tensor:
        # transforms.Resize(size, BILINEAR): the shorter side to `size`
        scale = self.size / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        if self.center_crop:  # transforms.CenterCrop
            left, top = round((image.width - self.size) / 2.0), round((image.height - self.size) / 2.0)
        else:  # transforms.RandomCrop
            left = int(torch.randint(0, image.width - self.size + 1, size=(1,)).item())
            top = int(torch.randint(0, image.height - self.size + 1, size=(1,)).item())
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)  # transforms.ToTensor
        return (pixels - 0.5) / 0.5  # transforms.Normalize([0.5], [0.5])

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        example = {}
        instance_image = exif_transpose(Image.open(self.instance_images_path[index % self.num_instance_images]))
        if instance_image.mode != "RGB":
            instance_image = instance_image.convert("RGB")
        example["instance_images"] = self.image_transforms(instance_image)
        text_inputs = tokenize_prompt(self.tokenizer, self.instance_prompt, self.tokenizer_max_length)
        example["instance_prompt_ids"] = text_inputs.input_ids
        example["instance_attention_mask"] = text_inputs.attention_mask
        if self.class_data_root:
            class_image = exif_transpose(Image.open(self.class_images_path[index % self.num_class_images]))
            if class_image.mode != "RGB":
                class_image = class_image.convert("RGB")
            example["class_images"] = self.image_transforms(class_image)
            class_text_inputs = tokenize_prompt(self.tokenizer, self.class_prompt, self.tokenizer_max_length)
            example["class_prompt_ids"] = class_text_inputs.input_ids
            example["class_attention_mask"] = class_text_inputs.attention_mask
        return example


def collate_fn(examples, with_prior_preservation=False):
    input_ids = [example["instance_prompt_ids"] for example in examples]
    pixel_values = [example["instance_images"] for example in examples]
    attention_mask = [example["instance_attention_mask"] for example in examples]
    if with_prior_preservation:
        input_ids += [example["class_prompt_ids"] for example in examples]
        pixel_values += [example["class_images"] for example in examples]
        attention_mask += [example["class_attention_mask"] for example in examples]
    pixel_values = torch.stack(pixel_values).to(memory_format=torch.contiguous_format).float()
    return {
        "input_ids": torch.cat(input_ids, dim=0),
        "pixel_values": pixel_values,
        "attention_mask": torch.cat(attention_mask, dim=0),
    }


class PromptDataset(Dataset):
    def __init__(self, prompt, num_samples):
        self.prompt, self.num_samples = prompt, num_samples

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        return {"prompt": self.prompt, "index": index}


def tokenize_prompt(tokenizer, prompt, tokenizer_max_length=None):
    max_length = tokenizer_max_length if tokenizer_max_length is not None else tokenizer.model_max_length
    return tokenizer(prompt, truncation=True, padding="max_length", max_length=max_length, return_tensors="pt")


def encode_prompt(text_encoder, input_ids, attention_mask, text_encoder_use_attention_mask=None):
    text_input_ids = input_ids.to(text_encoder.device)
    attention_mask = attention_mask.to(text_encoder.device) if text_encoder_use_attention_mask else None
    return text_encoder(text_input_ids, attention_mask=attention_mask, return_dict=False)[0]


def generate_class_images(args, accelerator: Accelerator, on_image: Callable[[], None] = lambda: None) -> None:
    """The script's class-image step: the model's own scheduler and steps, fp16 on CUDA, fp32 elsewhere."""
    class_images_dir = Path(args.class_data_dir)
    class_images_dir.mkdir(parents=True, exist_ok=True)
    cur_class_images = len(list(class_images_dir.iterdir()))
    if cur_class_images >= args.num_class_images:
        return
    torch_dtype = torch.float16 if accelerator.device.type == "cuda" else torch.float32
    pipeline = DiffusionPipeline.from_pretrained(
        args.pretrained_model_name_or_path, torch_dtype=torch_dtype, safety_checker=None, revision=args.revision
    )
    pipeline.set_progress_bar_config(disable=True)
    num_new_images = args.num_class_images - cur_class_images
    sample_dataloader = DataLoader(PromptDataset(args.class_prompt, num_new_images), batch_size=args.sample_batch_size)
    pipeline.to(accelerator.device)
    for example in sample_dataloader:
        images = pipeline(example["prompt"]).images
        for i, image in enumerate(images):
            hash_image = hashlib.sha1(image.tobytes()).hexdigest()
            image.save(class_images_dir / f"{example['index'][i] + cur_class_images}-{hash_image}.jpg")
            on_image()
    del pipeline


def main(args: Namespace, on_step: Callable[[int, float], None] = lambda step, loss: None) -> None:
    """Train as the script does; on_step(global_step, loss) after every optimizer step."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        cpu=args.device == "cpu",
    )
    if args.seed is not None:
        set_seed(args.seed)
    if args.with_prior_preservation:
        generate_class_images(args, accelerator)

    tokenizer = CLIPTokenizer.from_pretrained(args.pretrained_model_name_or_path, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(args.pretrained_model_name_or_path, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
    vae.requires_grad_(False)
    if not args.train_text_encoder:
        text_encoder.requires_grad_(False)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    if args.scale_lr:
        args.learning_rate = (
            args.learning_rate * args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        )
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    params_to_optimize = (
        itertools.chain(unet.parameters(), text_encoder.parameters()) if args.train_text_encoder else unet.parameters()
    )
    optimizer = optimizer_class(
        params_to_optimize,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    train_dataset = DreamBoothDataset(
        instance_data_root=args.instance_data_dir,
        instance_prompt=args.instance_prompt,
        class_data_root=args.class_data_dir if args.with_prior_preservation else None,
        class_num=args.num_class_images,
        class_prompt=args.class_prompt,
        tokenizer=tokenizer,
        size=args.resolution,
        center_crop=args.center_crop,
        tokenizer_max_length=args.tokenizer_max_length,
    )
    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=lambda examples: collate_fn(examples, args.with_prior_preservation),
        num_workers=args.dataloader_num_workers,
    )
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    if args.train_text_encoder:
        unet, text_encoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, text_encoder, optimizer, train_dataloader, lr_scheduler
        )
    else:
        unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            unet, optimizer, train_dataloader, lr_scheduler
        )
    weight_dtype = torch.float32
    if accelerator.mixed_precision == "fp16":
        weight_dtype = torch.float16
    elif accelerator.mixed_precision == "bf16":
        weight_dtype = torch.bfloat16
    vae.to(accelerator.device, dtype=weight_dtype)
    if not args.train_text_encoder:
        text_encoder.to(accelerator.device, dtype=weight_dtype)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)

    global_step = 0
    for _epoch in range(num_train_epochs):
        unet.train()
        if args.train_text_encoder:
            text_encoder.train()
        for batch in train_dataloader:
            with accelerator.accumulate(unet):
                pixel_values = batch["pixel_values"].to(dtype=weight_dtype)
                model_input = vae.encode(pixel_values).latent_dist.sample()
                model_input = model_input * vae.config.scaling_factor
                noise = torch.randn_like(model_input)
                bsz = model_input.shape[0]
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (bsz,), device=model_input.device
                ).long()
                noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
                encoder_hidden_states = encode_prompt(
                    text_encoder,
                    batch["input_ids"],
                    batch["attention_mask"],
                    text_encoder_use_attention_mask=args.text_encoder_use_attention_mask,
                )
                model_pred = unet(noisy_model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(model_input, noise, timesteps)
                if args.with_prior_preservation:
                    model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
                    target, target_prior = torch.chunk(target, 2, dim=0)
                    prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                if args.with_prior_preservation:
                    loss = loss + args.prior_loss_weight * prior_loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    params_to_clip = (
                        itertools.chain(unet.parameters(), text_encoder.parameters())
                        if args.train_text_encoder
                        else unet.parameters()
                    )
                    accelerator.clip_grad_norm_(params_to_clip, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=args.set_grads_to_none)
            if accelerator.sync_gradients:
                global_step += 1
                on_step(global_step, loss.detach().item())
            if global_step >= args.max_train_steps:
                return

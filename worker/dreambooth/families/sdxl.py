"""Stable Diffusion XL (base 1.0): two text encoders whose penultimate layers are concatenated, the second's
pooled embedding and each image's size and crop ("time ids") as added conditioning, 1024 px.

The refiner is out of scope (formats/families.py refuses it).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from formats.families import FAMILIES

from .base import Conditioning, Family, _token_ids

TIME_IDS = 6  # original height and width, crop top and left, target height and width


@dataclass(frozen=True)
class _Widths:
    unet_channels: tuple[int, int, int]
    unet_heads: tuple[int, int, int]  # attention heads per level
    transformer_layers: tuple[int, int, int]  # transformer blocks per attention, per level (SDXL: 1, 2, 10)
    time_embed: int  # each time id's sinusoidal width (SDXL: 256)
    vae_channels: tuple[int, int, int, int]
    text_hidden: int  # the first encoder (OpenAI CLIP-L)
    text_layers: int
    text_heads: int
    text_2_hidden: int  # the second (OpenCLIP-bigG), also its projection's width
    text_2_layers: int
    text_2_heads: int
    norm_groups: int
    sample_size: int
    vocab_size: int | None = None


SIZES = {
    # note: every block of SDXL's topology (10 transformer blocks per attention at the lowest level included)
    # note: the two text encoders differ in width, as SDXL's do (768 and 1280): single-file loaders tell them
    # apart by it
    "tiny-sdxl": _Widths((16, 32, 64), (1, 2, 4), (1, 2, 10), 8, (8, 16, 32, 32), 32, 2, 4, 48, 2, 4, 8, 8),
    # note: SDXL base 1.0's real widths (random weights), for GPU benchmarks
    "full-sdxl": _Widths(
        (320, 640, 1280),
        (5, 10, 20),
        (1, 2, 10),
        256,
        (128, 256, 512, 512),
        768,
        12,
        12,
        1280,
        32,
        20,
        32,
        128,
        vocab_size=49408,
    ),
}


class SDXLFamily(Family):
    info = FAMILIES["sdxl"]
    pipeline_class = StableDiffusionXLPipeline
    text_encoder_classes = (CLIPTextModel, CLIPTextModelWithProjection)

    def encode(self, tokenizers: tuple, text_encoders: tuple, prompts: list[str]) -> Conditioning:
        hidden, pooled = [], None
        for tokenizer, text_encoder in zip(tokenizers, text_encoders):
            output = text_encoder(_token_ids(tokenizer, prompts, text_encoder.device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            # note: the pooled embedding is the second encoder's projected end-of-text token
            pooled = output[0]
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    def unet_kwargs(self, conditioning: Conditioning, time_ids: torch.Tensor) -> dict:
        hidden = conditioning.hidden
        added = {"text_embeds": conditioning.pooled, "time_ids": time_ids.to(hidden.device, hidden.dtype)}
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": added}

    def pipeline(self, tokenizers: tuple, text_encoders: tuple, vae, unet, scheduler) -> StableDiffusionXLPipeline:
        (tokenizer, tokenizer_2), (text_encoder, text_encoder_2) = tokenizers, text_encoders
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )

    def load_options(self) -> dict:
        return {"add_watermarker": False}

    def save_lora_weights(self, folder: Path, weight_name: str, unet_layers: dict, text_layers: tuple, save) -> None:
        text, text_2 = text_layers or (None, None)
        StableDiffusionXLPipeline.save_lora_weights(
            folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text, text_encoder_2_lora_layers=text_2,
            weight_name=weight_name, save_function=save,
        )  # fmt: skip

    def builtin_pipeline(self, name: str, tokenizer_dir: Path) -> StableDiffusionXLPipeline:
        from .. import tiny

        w = SIZES[name]
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=tiny.MAX_LENGTH)
        # note: SDXL's second tokenizer pads with "!" where the first repeats the end-of-text token
        tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=tiny.MAX_LENGTH, pad_token="!")
        text_encoder = CLIPTextModel(
            _text_config(tokenizer, w.text_hidden, w.text_layers, w.text_heads, "quick_gelu", w)
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(tokenizer_2, w.text_2_hidden, w.text_2_layers, w.text_2_heads, "gelu", w)
        )
        unet = UNet2DConditionModel(
            sample_size=w.sample_size,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=w.unet_channels,
            layers_per_block=2,
            transformer_layers_per_block=w.transformer_layers,
            attention_head_dim=w.unet_heads,
            cross_attention_dim=w.text_hidden + w.text_2_hidden,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=w.time_embed,
            projection_class_embeddings_input_dim=w.text_2_hidden + TIME_IDS * w.time_embed,
            norm_num_groups=w.norm_groups,
        )
        # note: SDXL's VAE has SD's architecture with its own scaling, and overflows in fp16 (hence the upcast)
        vae = tiny.make_vae(w.vae_channels, w.norm_groups, w.sample_size * 8, scaling_factor=0.13025, force_upcast=True)
        with torch.device("cpu"):
            scheduler = EulerDiscreteScheduler(
                num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
            )  # fmt: skip
        return self.pipeline((tokenizer, tokenizer_2), (text_encoder, text_encoder_2), vae, unet, scheduler)


def _text_config(tokenizer, hidden: int, layers: int, heads: int, act: str, w: _Widths) -> CLIPTextConfig:
    from ..tiny import MAX_LENGTH

    return CLIPTextConfig(
        vocab_size=w.vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        hidden_act=act,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

"""Stable Diffusion 2.x: an OpenCLIP-H text encoder (saved without its last layer, so its last hidden state
is the original's penultimate), linear-projection attention, v-prediction at 768 px (epsilon at 512 px for
the -base models; the scheduler config says which)."""

from dataclasses import dataclass
from pathlib import Path

from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from formats.families import FAMILIES

from .base import Family


@dataclass(frozen=True)
class _Widths:
    unet_channels: tuple[int, int, int, int]
    unet_heads: tuple[int, int, int, int]  # attention heads per level (diffusers calls it attention_head_dim)
    vae_channels: tuple[int, int, int, int]
    text_hidden: int
    text_layers: int  # SD 2.x: 23 of OpenCLIP-H's 24 (the penultimate layer conditions the UNet)
    text_heads: int
    norm_groups: int
    sample_size: int
    vocab_size: int | None = None


SIZES = {
    "tiny-sd2": _Widths((8, 16, 32, 32), (1, 2, 4, 4), (8, 16, 32, 32), 32, 2, 4, 8, 8),
    # note: SD 2.1's real widths (random weights), for GPU benchmarks
    "full-sd2": _Widths((320, 640, 1280, 1280), (5, 10, 20, 20), (128, 256, 512, 512), 1024, 23, 16, 32, 96, 49408),
}


class SD2Family(Family):
    info = FAMILIES["sd2"]

    def builtin_pipeline(self, name: str, tokenizer_dir: Path):
        from .. import tiny

        w = SIZES[name]
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=tiny.MAX_LENGTH)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=w.vocab_size or len(tokenizer),
                hidden_size=w.text_hidden,
                intermediate_size=4 * w.text_hidden,
                num_hidden_layers=w.text_layers,
                num_attention_heads=w.text_heads,
                max_position_embeddings=tiny.MAX_LENGTH,
                hidden_act="gelu",
                projection_dim=512,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=w.sample_size,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=w.unet_channels,
            layers_per_block=2,
            cross_attention_dim=w.text_hidden,
            attention_head_dim=w.unet_heads,
            use_linear_projection=True,
            norm_num_groups=w.norm_groups,
        )
        vae = tiny.make_vae(w.vae_channels, w.norm_groups, w.sample_size * 8, scaling_factor=0.18215)
        # note: SD 2.1 (768-v)'s scheduler: v-prediction
        scheduler = DDIMScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
        )  # fmt: skip
        return self.pipeline((tokenizer,), (text_encoder,), vae, unet, scheduler)

"""Stable Diffusion 1.x: one OpenAI CLIP text encoder (its last layer), epsilon prediction, 512 px."""

from pathlib import Path

from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from formats.families import FAMILIES

from .base import Family


class SD1Family(Family):
    info = FAMILIES["sd1"]

    def builtin_pipeline(self, name: str, tokenizer_dir: Path) -> StableDiffusionPipeline:
        from .. import tiny

        widths = tiny.SIZES[name]
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=tiny.MAX_LENGTH)
        return self.pipeline(
            (tokenizer,),
            (tiny._make_text_encoder(widths, tokenizer),),
            tiny._make_vae(widths),
            tiny._make_unet(widths),
            tiny._make_scheduler(),
        )

"""What every family adapter answers; the defaults are the one-CLIP families' (SD 1.x and 2.x)."""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from transformers import CLIPTextModel, CLIPTokenizer

from formats.families import FamilyInfo


@dataclass
class Conditioning:
    """What the UNet is conditioned on, one row per prompt: the text encoders' hidden states, and the pooled
    embedding for families whose UNet takes one (SDXL)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def rows(self, which: torch.Tensor) -> "Conditioning":
        """The conditioning of the prompts at `which`, in that order (a batch's rows)."""
        return Conditioning(self.hidden[which], self.pooled[which] if self.pooled is not None else None)


class Family:
    """A Stable Diffusion family: its parts, its conditioning, its pipeline and its built-in models."""

    info: FamilyInfo
    pipeline_class: type[DiffusionPipeline] = StableDiffusionPipeline
    text_encoder_classes: tuple[type, ...] = (CLIPTextModel,)

    # ── loading ─────────────────────────────────────────────────────────────────────────────────

    def load_text_parts(self, location: str, revision: str | None) -> tuple[tuple, tuple]:
        """(tokenizers, text encoders) of the model at `location`, in the family's order."""
        tokenizers = tuple(
            CLIPTokenizer.from_pretrained(location, subfolder=folder, revision=revision)
            for folder in self.info.tokenizers
        )
        encoders = tuple(
            cls.from_pretrained(location, subfolder=folder, revision=revision)
            for cls, folder in zip(self.text_encoder_classes, self.info.text_encoders)
        )
        return tokenizers, encoders

    # ── conditioning ────────────────────────────────────────────────────────────────────────────

    def encode(self, tokenizers: tuple, text_encoders: tuple, prompts: list[str]) -> Conditioning:
        """The conditioning of `prompts` (with gradients when the encoders are trained)."""
        [tokenizer], [text_encoder] = tokenizers, text_encoders
        ids = _token_ids(tokenizer, prompts, text_encoder.device)
        # note: SD 2.x's penultimate-layer conditioning is in its config already (the last layer is not saved)
        return Conditioning(text_encoder(ids).last_hidden_state)

    def unet_kwargs(self, conditioning: Conditioning, time_ids: torch.Tensor) -> dict:
        """The UNet's keyword arguments besides the latents and timesteps. `time_ids` are each image's
        (original height, width, crop top, left, target height, width), used by families that take them."""
        return {"encoder_hidden_states": conditioning.hidden}

    # ── rendering ───────────────────────────────────────────────────────────────────────────────

    def pipeline(self, tokenizers: tuple, text_encoders: tuple, vae, unet, scheduler) -> DiffusionPipeline:
        """The family's pipeline over these parts (no safety checker: the user's own fine-tune)."""
        [tokenizer], [text_encoder] = tokenizers, text_encoders
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def load_options(self) -> dict:
        """from_pretrained options of the family's pipeline class."""
        return {"safety_checker": None, "requires_safety_checker": False}

    def save_lora_weights(self, folder: Path, weight_name: str, unet_layers: dict, text_layers: tuple, save) -> None:
        """Write diffusers' LoRA layout through the pipeline class's own writer."""
        [text] = text_layers or (None,)
        self.pipeline_class.save_lora_weights(
            folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text, weight_name=weight_name,
            save_function=save,
        )  # fmt: skip

    # ── built-in test models ────────────────────────────────────────────────────────────────────

    def builtin_pipeline(self, name: str, tokenizer_dir: Path) -> DiffusionPipeline:
        raise NotImplementedError


def _token_ids(tokenizer, prompts: list[str], device) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)

"""The builtin tiny model: SD 1.5's topology, loadable offline, deterministic, with a working tokenizer."""

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from worker.dreambooth.tiny import make_model


def test_tiny_model_loads_with_sd15_topology(tiny_model: Path):
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model)
    unet, vae = pipeline.unet.config, pipeline.vae.config
    assert tuple(unet.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(unet.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert unet.layers_per_block == 2
    assert unet.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    assert len(vae.block_out_channels) == 4 and vae.latent_channels == 4 and vae.scaling_factor == 0.18215
    scheduler = pipeline.scheduler.config
    assert scheduler.beta_schedule == "scaled_linear"
    assert (scheduler.beta_start, scheduler.beta_end) == (0.00085, 0.012)
    assert scheduler.num_train_timesteps == 1000 and scheduler.clip_sample is False
    models = (pipeline.unet, pipeline.vae, pipeline.text_encoder)
    assert sum(p.numel() for model in models for p in model.parameters()) < 2_000_000


def test_tokenizer_tokenizes_prompts(tiny_model: Path):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
    ids = tokenizer("A photo of sks dog, Zürich!", padding="max_length", max_length=77).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 77 and tokenizer.model_max_length == 77
    assert tokens[:5] == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "sks</w>"]
    assert tokens[-1] == "<|endoftext|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of sks dog , zürich !"


def test_vocab_files_alone_load(tiny_model: Path, tmp_path: Path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_model / "tokenizer" / name, tmp_path / name)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    reference = CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
    prompt = "a cute puppy on the beach at sunset"
    assert tokenizer(prompt).input_ids == reference(prompt).input_ids


def test_make_model_is_deterministic_and_never_overwrites(tiny_model: Path, tmp_path: Path):
    again = StableDiffusionPipeline.from_pretrained(make_model(tmp_path / "again"))
    original = StableDiffusionPipeline.from_pretrained(tiny_model)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(again, name).state_dict(), getattr(original, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(FileExistsError):
        make_model(tmp_path / "again")
    assert not [p for p in tmp_path.iterdir() if p.name != "again"]  # no temporary folder left behind

"""Built-in test models: each family's exact topology at tiny widths (and at full widths for GPU
benchmarks), random weights. SD 1.5's widths live here; SD 2.x's and SDXL's in their family modules.

They need no network, train in seconds on a CPU, and exercise every code path the real models do.
"""

import itertools
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from formats.families import BUILTIN_MODELS

from .files import atomic_dir
from .saving import save_pipeline

log = logging.getLogger(__name__)

SEED = 0
MAX_LENGTH = 77  # CLIP's context length, as SD 1.5
NUM_MERGES = 400
CLIP_WIDTH = 32  # the tiny CLIP's hidden and projection width, both towers
CLIP_IMAGE_SIZE = 32  # the tiny CLIP's input side: 4 x 4 patches of 8 px
# note: at CLIP's usual initialisation the tiny towers' outputs are dominated by the class and position
# embeddings, so every image embeds alike (cosines ~0.95); 3x larger weights let the pixels through
CLIP_INIT_FACTOR = 3.0

# note: enough everyday and prompt words that a BPE pass learns useful merges
WORDS = """
a an the of in on at with and or to for from by as is it this that photo picture image portrait
painting drawing sketch render illustration style art artist oil watercolor digital anime cartoon
realistic detailed high quality best sharp focus lighting light dark night day sunset sunrise sky
cloud sun moon star rain snow beach sea ocean river lake mountain forest tree flower garden park
city street road house room kitchen table chair bed window door wall floor grass field desert
dog cat puppy kitten bird horse cow pig fish toy teddy bear robot car bike boat train plane
man woman boy girl person people child baby face eyes hair smile hat shirt dress jacket glasses
red green blue yellow orange purple pink black white gray brown gold silver colorful bright
small big large tiny little old young new happy sad cute beautiful standing sitting running
sleeping wearing holding looking front side back top view close up shot camera lens wide angle
sks subject object head potato cartoon character vintage modern studio background bokeh cinematic
""".split()


@dataclass(frozen=True)
class _Widths:
    """The width knobs that distinguish the built-in sizes; the topology is SD 1.5's."""

    unet_channels: tuple[int, int, int, int]  # SD's 1:2:4:4 ratios, so the same resnets get shortcut convs
    unet_heads: int  # attention heads, 8 as SD
    vae_channels: tuple[int, int, int, int]  # SD's 1:2:4:4 ratios again
    text_hidden: int  # CLIP width, also the UNet's cross-attention width
    text_layers: int  # CLIP depth (SD 1.5: 12)
    text_heads: int  # CLIP attention heads
    norm_groups: int  # GroupNorm groups; SD uses 32, the tiniest widths need fewer
    sample_size: int  # latent side; the pipeline's default image side is 8x this
    vocab_size: int | None = None  # text embedding rows; None = the generated tokenizer's vocabulary


SIZES = {
    # note: about 1M parameters in all, so a training step at 64 px is cheap on a CPU
    "tiny": _Widths((8, 16, 32, 32), 8, (8, 16, 32, 32), 32, 2, 4, 8, 8),
    # note: a 35M-parameter UNet, so benchmarks at 128 px measure compute rather than overhead
    "small": _Widths((64, 128, 256, 256), 8, (32, 64, 128, 128), 256, 4, 4, 32, 16),
    # note: SD 1.5's real widths and CLIP vocabulary size (random weights), for GPU speed and memory benchmarks
    "full": _Widths((320, 640, 1280, 1280), 8, (128, 256, 512, 512), 768, 12, 12, 32, 64, vocab_size=49408),
}


def make_model(out_dir: Path, name: str = "tiny") -> Path:
    """Generate the deterministic pipeline folder of builtin model `name` at `out_dir` (FileExistsError if taken)."""
    from .families import family_named

    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; choose from {sorted(BUILTIN_MODELS)}")
    family = family_named(BUILTIN_MODELS[name].family)
    with torch.random.fork_rng(devices=[]), atomic_dir(out_dir, replace=False) as tmp:
        torch.manual_seed(SEED)
        _write_vocab_files(tmp / "tokenizer")
        pipeline = family.builtin_pipeline(name, tmp / "tokenizer")
        save_pipeline(pipeline, tmp)
    log.info("generated builtin %s model at %s", name, out_dir)
    return out_dir


def build_tiny_clip(out_dir: Path) -> Path:
    """Generate a deterministic tiny CLIPModel folder (model, image processor, tokenizer) at `out_dir`.

    Random weights: its image-image similarities still tell identical, perturbed and unrelated images
    apart, but its text-image similarities mean nothing. FileExistsError if `out_dir` is taken.
    """
    with torch.random.fork_rng(devices=[]), atomic_dir(out_dir, replace=False) as tmp:
        torch.manual_seed(SEED)
        _write_vocab_files(tmp / "vocab")
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "vocab", model_max_length=MAX_LENGTH)
        shutil.rmtree(tmp / "vocab")
        tower = {
            "hidden_size": CLIP_WIDTH,
            "intermediate_size": 4 * CLIP_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
            "initializer_factor": CLIP_INIT_FACTOR,
        }
        config = CLIPConfig(
            text_config=dict(
                **tower,
                vocab_size=len(tokenizer),
                max_position_embeddings=MAX_LENGTH,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            vision_config=dict(**tower, image_size=CLIP_IMAGE_SIZE, patch_size=8),
            projection_dim=CLIP_WIDTH,
            initializer_factor=CLIP_INIT_FACTOR,
        )
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": CLIP_IMAGE_SIZE}, crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
        )
        CLIPModel(config).save_pretrained(tmp)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
    log.info("generated builtin tiny CLIP at %s", out_dir)
    return out_dir


def _make_unet(w: _Widths) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=w.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=w.unet_channels,
        layers_per_block=2,
        cross_attention_dim=w.text_hidden,
        attention_head_dim=w.unet_heads,
        norm_num_groups=w.norm_groups,
    )


def _make_vae(w: _Widths) -> AutoencoderKL:
    return make_vae(w.vae_channels, w.norm_groups, w.sample_size * 8, scaling_factor=0.18215)


def make_vae(channels: tuple, norm_groups: int, sample_size: int, scaling_factor: float, **options) -> AutoencoderKL:
    """Stable Diffusion's VAE (every family's) at these widths."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=norm_groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        **options,
    )


def _make_text_encoder(w: _Widths, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=w.vocab_size or len(tokenizer),
        hidden_size=w.text_hidden,
        intermediate_size=4 * w.text_hidden,
        num_hidden_layers=w.text_layers,
        num_attention_heads=w.text_heads,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _make_scheduler() -> PNDMScheduler:
    """SD 1.5's scheduler config; training reads it as DDPM, sampling as DDIM."""
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    # note: PNDM ignores clip_sample, but SD 1.5 records it so that DDIM built from this config does not clip
    scheduler.register_to_config(clip_sample=False)
    return scheduler


def _write_vocab_files(folder: Path) -> None:
    """Write a CLIP byte-level BPE vocabulary (vocab.json, merges.txt) learned here from WORDS."""
    symbols = list(_bytes_to_unicode().values())
    merges = _learn_merges([_word_symbols(word) for word in WORDS], NUM_MERGES)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _learn_merges(words: list[tuple[str, ...]], num_merges: int) -> list[tuple[str, str]]:
    """Classic BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair itself)."""
    corpus = Counter(words)
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in corpus.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        corpus = Counter({_merge(word, best): count for word, count in corpus.items()})
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _word_symbols(word: str) -> tuple[str, ...]:
    table = _bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return tuple(symbols)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in their order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table

"""Pivotal tuning: textual inversion of new tokens first, then Dreambooth with them in the prompt.

The study's closing experiment (shared/STUDY.md, finding 8): 2000 steps of textual inversion, then 500 of
Dreambooth at 1e-6, beat plain Dreambooth (not full text-encoder fine-tuning), and may fit a 16 GB GPU. Here:

- the placeholder token (and `num_vectors - 1` more, named `<token>_1`, ... as diffusers' textual-inversion
  loader names a multi-vector embedding's) is added to every tokenizer of the family, and each text encoder
  gets new embedding rows initialised from the initializer word's;
- phase one trains those rows only: every other weight of the text encoders is restored bit for bit after
  each step, and the UNet is frozen (the conditioning's gradient flows through it);
- phase two is Dreambooth (full or LoRA, `pivotal_second_phase`) over the base model with the new tokens,
  the learned rows frozen unless the text encoder trains too.

The learned vectors are also a file of their own (formats/embedding.py), written when phase one ends: a
resumed run in phase two rebuilds the tokens from it.
"""

import copy
import dataclasses
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from formats.embedding import EMBEDDING_FILE, EMBEDDING_KEYS

from .components import Components
from .config import TrainConfig
from .errors import JobError
from .files import atomic_file

log = logging.getLogger(__name__)


def placeholder_tokens(config: TrainConfig) -> list[str]:
    """The new tokens: the placeholder, then one more per extra vector."""
    token = config.placeholder_token
    return [token] + [f"{token}_{index}" for index in range(1, config.num_vectors)]


def with_placeholders(prompt: str, config: TrainConfig) -> str:
    """`prompt` with the placeholder spelled out as all its vectors' tokens (as diffusers' pipelines do)."""
    return prompt.replace(config.placeholder_token, " ".join(placeholder_tokens(config)))


def initializer_word(config: TrainConfig) -> str:
    """The word the new rows start from: initializer_token, else the class noun (the word after the placeholder
    in the instance prompt, else the class prompt's last word), else "object"."""
    if config.initializer_token:
        return config.initializer_token
    after = re.search(re.escape(config.placeholder_token) + r"\s+([A-Za-z]+)", config.instance_prompt)
    if after:
        return after.group(1)
    if config.class_prompt and (words := re.findall(r"[A-Za-z]+", config.class_prompt)):
        return words[-1]
    return "object"


def with_new_tokens(parts: Components, config: TrainConfig, vectors: tuple[torch.Tensor, ...] | None = None):
    """Copies of the base model's tokenizers and text encoders with the new tokens added: their rows start from
    the initializer word's embedding, or are `vectors` (one (num_vectors, width) tensor per text encoder).

    The cached base parts stay untouched (a worker keeps them for the next job)."""
    tokens, word = placeholder_tokens(config), initializer_word(config)
    tokenizers, encoders = [], []
    for index, (tokenizer, encoder) in enumerate(zip(parts.tokenizers, parts.text_encoders)):
        tokenizer = copy.deepcopy(tokenizer)
        # note: a word the vocabulary spells as one token (CLIP's "toy</w>" for "toy") is no new token either
        known = any(len(tokenizer.encode(token, add_special_tokens=False)) == 1 for token in tokens)
        if known or tokenizer.add_tokens(tokens) != len(tokens):
            raise JobError(
                "invalid_settings",
                f"placeholder_token {config.placeholder_token!r} is already in the base model's vocabulary; "
                "choose a new word, such as <rufus>",
            )
        start = tokenizer.encode(word, add_special_tokens=False)
        if len(start) != 1:
            raise JobError(
                "invalid_settings",
                f"initializer_token {word!r} is {len(start)} tokens for this model; choose a one-token word",
            )
        encoder = copy.deepcopy(encoder)
        # note: mean_resizing would draw the new rows from the global random generator; they are set below
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            rows = new_rows(tokenizer, config)
            weight[rows] = vectors[index].to(weight) if vectors is not None else weight[start[0]].clone()
        tokenizers.append(tokenizer)
        encoders.append(encoder.requires_grad_(False).eval())
    return dataclasses.replace(parts, tokenizers=tuple(tokenizers), text_encoders=tuple(encoders))


def new_rows(tokenizer, config: TrainConfig) -> list[int]:
    return tokenizer.convert_tokens_to_ids(placeholder_tokens(config))


class RowKeeper:
    """Puts back every embedding row but the new tokens' after an optimizer step, so phase one changes those
    rows alone (weight decay and Adam's moments would otherwise move the rest)."""

    def __init__(self, tokenizers: tuple, text_encoders: tuple, config: TrainConfig):
        self.kept = []
        for tokenizer, encoder in zip(tokenizers, text_encoders):
            weight = encoder.get_input_embeddings().weight
            frozen = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            frozen[new_rows(tokenizer, config)] = False
            self.kept.append((weight, frozen, weight.detach()[frozen].clone()))

    @torch.no_grad()
    def __call__(self) -> None:
        for weight, frozen, original in self.kept:
            weight[frozen] = original


def learned_vectors(tokenizers: tuple, text_encoders: tuple, config: TrainConfig) -> tuple[torch.Tensor, ...]:
    """The new tokens' rows of each text encoder, as (num_vectors, width) fp32 CPU tensors."""
    return tuple(
        encoder.get_input_embeddings().weight.detach()[new_rows(tokenizer, config)].float().cpu().contiguous()
        for tokenizer, encoder in zip(tokenizers, text_encoders)
    )


def save_embedding(path: Path, vectors: tuple[torch.Tensor, ...], config: TrainConfig, step: int) -> Path:
    """Write the learned vectors in AUTOMATIC1111's layout (formats/embedding.py), atomically."""
    keys = EMBEDDING_KEYS[len(vectors)]
    header = {
        "format": "pt",
        "placeholder_token": config.placeholder_token,
        "num_vectors": str(config.num_vectors),
        "initializer_token": initializer_word(config),
        "base_model": config.base_model,
        "step": str(step),
    }
    with atomic_file(path) as tmp:
        save_file(dict(zip(keys, vectors)), tmp, metadata=header)
    return path


def load_embedding(path: Path) -> tuple[torch.Tensor, ...]:
    """The vectors of an embedding file, one tensor per text encoder in the family's order."""
    tensors = load_file(path)
    keys = EMBEDDING_KEYS[len(tensors)]
    return tuple(tensors[key] for key in keys)


def inversion_file(output_dir: Path) -> Path:
    """Where phase one's result is kept for phase two (and a resumed run)."""
    return output_dir / EMBEDDING_FILE

"""Stored crop boxes and per-photo captions in the core: the crop the API chose is the one trained on, and each
photo's own prompt is the one its rows are embedded with."""

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.dreambooth import data
from worker.dreambooth.data import load_photo, time_ids
from worker.dreambooth.families import base

CAPTIONS = ("red ball", None, "blue triangle", "orange ellipse")


def test_a_crop_box_is_the_square_trained_on(photos: tuple[Path, ...]):
    box = (20, 8, 70, 58)  # the red ellipse of the 96x64 photo
    image = load_photo(photos[0], 64, box)
    with Image.open(photos[0]) as original:
        expected = original.convert("RGB").crop(box).resize((64, 64), Image.Resampling.LANCZOS)
    assert image.size == (64, 64) and np.array_equal(np.asarray(image), np.asarray(expected))
    # note: SDXL is told the photo's real size and where the crop starts, at the crop's scale (64 / 50)
    assert time_ids(image, (0, 0), 64) == [64, 96, 10, 26, 64, 64]


def test_captions_reach_the_text_encoder(make_config, tmp_path: Path, monkeypatch):
    from worker.dreambooth.train import train

    config = make_config(
        tmp_path / "run", instance_captions=CAPTIONS, caption_mode="instance_plus_caption", train_batch_size=2,
        max_train_steps=4, center_crop=True, validation_steps=100,
    )  # fmt: skip
    expected = [f"a photo of sks toy, {c}" if c else "a photo of sks toy" for c in CAPTIONS]
    assert config.photo_prompts == tuple(expected)
    encoded, batches = [], []  # (tokenizer, token ids) the encoders ran on; (photo indices, rows) of each batch
    real_ids, real_call, real_rows = base._token_ids, data.PromptEmbeddings.__call__, base.Conditioning.rows

    def token_ids(tokenizer, prompts, device):
        ids = real_ids(tokenizer, prompts, device)
        encoded.append((tokenizer, ids))
        return ids

    def embed(self, photos, classes):
        batches.append((photos.tolist(), []))
        return real_call(self, photos, classes)

    def rows(self, which):
        if batches and not batches[-1][1]:
            batches[-1][1].extend(which.tolist())
        return real_rows(self, which)

    monkeypatch.setattr(base, "_token_ids", token_ids)
    monkeypatch.setattr(data.PromptEmbeddings, "__call__", embed)
    monkeypatch.setattr(base.Conditioning, "rows", rows)
    train(config)
    # note: the frozen text encoder runs once, on the distinct prompts; every batch takes its rows from that
    [(tokenizer, ids)] = [(t, i) for t, i in encoded if len(i) == len(set(expected))]
    assert len(batches) == 4 and {i for photos, _ in batches for i in photos} == {0, 1, 2, 3}
    for photos, which in batches:
        for photo, row in zip(photos, which, strict=True):
            wanted = tokenizer(expected[photo], padding="max_length", max_length=ids.shape[1], truncation=True)
            assert ids[row].tolist() == wanted.input_ids, (photo, expected[photo])


def test_without_captions_every_photo_trains_on_the_instance_prompt(make_config, tmp_path: Path):
    config = make_config(tmp_path / "run", instance_captions=CAPTIONS)  # caption_mode instance_only
    assert set(config.photo_prompts) == {"a photo of sks toy"}


def test_a_prompt_over_the_limit_is_logged_not_silently_cut(make_config, tmp_path: Path, caplog):
    from worker.dreambooth.train import train

    long = " ".join(["red"] * 100)
    config = make_config(
        tmp_path / "run", instance_captions=(long, None, None, None), caption_mode="instance_plus_caption",
        max_train_steps=1, validation_steps=100,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="worker.dreambooth.train"):
        train(config)
    [record] = [r for r in caplog.records if "cut to the text encoder's limit" in r.getMessage()]
    assert long in record.getMessage()


def test_each_photo_row_is_its_own_prompt():
    class Family:
        def encode(self, tokenizers, text_encoders, prompts):
            return base.Conditioning(torch.tensor([[[float(len(p))]] for p in prompts]))

    embed = data.PromptEmbeddings(Family(), (), (), ["a", "a b", "a"], "class prompt", trained=False)
    assert embed.prompts == ["a", "a b", "class prompt"]
    rows = embed(torch.tensor([1, 0, 2]), classes=2).hidden.flatten().tolist()
    assert rows == [3.0, 1.0, 1.0, 12.0, 12.0]

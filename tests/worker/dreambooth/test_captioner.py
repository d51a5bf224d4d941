"""The automatic captioner on the built-in tiny BLIP: it loads through from_pretrained as a real model does, captions
each photo in words of its vocabulary, and its captions are the tokens the training loop embeds."""

from pathlib import Path

import pytest

from worker.dreambooth import captioner
from worker.dreambooth.families import base
from worker.dreambooth.tiny import WORDS


@pytest.fixture(scope="module")
def captions(photos: tuple[Path, ...], models_dir: Path) -> list[str | None]:
    return captioner.caption_photos(photos, captioner.BUILTIN_BLIP, models_dir)


def test_the_tiny_captioner_captions_every_photo_in_words(captions: list[str | None], models_dir: Path):
    assert len(captions) == 4 and all(captions)
    assert all(set(caption.split()) <= set(WORDS) for caption in captions)
    assert all(len(caption.split()) <= captioner.MAX_CAPTION_TOKENS for caption in captions)
    # note: generated once under models_dir, then loaded from there like any from_pretrained folder
    assert captioner.resolve_caption_model(captioner.BUILTIN_BLIP, models_dir) == str(models_dir / "builtin-tiny-blip")
    assert (models_dir / "builtin-tiny-blip" / "config.json").is_file()


def test_a_real_model_id_is_passed_to_from_pretrained_and_an_unknown_builtin_is_refused(models_dir: Path):
    assert captioner.resolve_caption_model("Salesforce/blip-image-captioning-base", models_dir) == (
        "Salesforce/blip-image-captioning-base"
    )
    with pytest.raises(ValueError, match="builtin:tiny-blip"):
        captioner.resolve_caption_model("builtin:huge-blip", models_dir)


def test_automatic_captions_reach_the_text_encoder(captions, make_config, tmp_path: Path, monkeypatch):
    from worker.dreambooth.train import train

    mine = ("red ball", None, None, None)  # the user's caption wins over the model's
    merged = tuple(given or auto for given, auto in zip(mine, captions))
    config = make_config(
        tmp_path / "run", instance_captions=merged, caption_mode="instance_plus_auto_caption", max_train_steps=1,
        center_crop=True, validation_steps=100,
    )  # fmt: skip
    assert config.photo_prompts == tuple(f"a photo of sks toy, {caption}" for caption in merged)
    encoded = []
    real_ids = base._token_ids

    def token_ids(tokenizer, prompts, device):
        ids = real_ids(tokenizer, prompts, device)
        encoded.append(tokenizer.batch_decode(ids, skip_special_tokens=True))
        return ids

    monkeypatch.setattr(base, "_token_ids", token_ids)
    train(config)
    # note: the tiny CLIP tokenizer decodes "toy, red" as "toy , red"
    embedded = {" ".join(text.split()).replace(" ,", ",") for texts in encoded for text in texts}
    assert {f"a photo of sks toy, {caption}" for caption in merged} <= embedded

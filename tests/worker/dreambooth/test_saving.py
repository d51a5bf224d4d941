"""Saved folders use the Hub's weight names (formats/hub_layout.py), whatever transformers is installed."""

import json
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from worker.dreambooth.config import TrainConfig
from worker.dreambooth.saving import save_model, to_hub_layout
from worker.dreambooth.train import train


def names(folder: Path) -> list[str]:
    (path,) = folder.glob("*.safetensors")
    with safe_open(path, "pt") as weights:
        return list(weights.keys())


def small_clip() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    return CLIPTextModel(config)


def test_a_text_encoder_is_saved_under_text_model_and_loads_back_whole(tmp_path: Path):
    model = small_clip()
    save_model(model, tmp_path / "text_encoder")
    assert names(tmp_path / "text_encoder") and all(
        n.startswith("text_model.") for n in names(tmp_path / "text_encoder")
    )
    loaded, info = CLIPTextModel.from_pretrained(tmp_path / "text_encoder", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert all((loaded.state_dict()[k] == v).all() for k, v in model.state_dict().items())


def test_renaming_is_idempotent_and_covers_a_sharded_index(tmp_path: Path):
    model = small_clip()
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="2KB")
    index = next(folder.glob("*.index.json"))
    to_hub_layout(folder)
    to_hub_layout(folder)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert all(name.startswith("text_model.") for name in weight_map)
    assert sorted(weight_map) == sorted(n for shard in folder.glob("*.safetensors") for n in names_of(shard))


def names_of(path: Path) -> list[str]:
    with safe_open(path, "pt") as weights:
        return list(weights.keys())


def test_builtin_models_and_trained_folders_name_the_text_encoder_the_hub_way(
    make_config: Callable[..., TrainConfig], tmp_path: Path, tiny_model: Path
):
    assert all(n.startswith("text_model.") for n in names(tiny_model / "text_encoder"))
    config = make_config(tmp_path, train_text_encoder=True, max_train_steps=2, validation_steps=1,
                         validation_prompts=("a photo of sks toy",), validation_inference_steps=1)  # fmt: skip
    result = train(config)
    for folder in (result.pipeline_dir / "text_encoder", result.kept_steps[1] / "text_encoder"):
        assert all(n.startswith("text_model.") for n in names(folder)), folder

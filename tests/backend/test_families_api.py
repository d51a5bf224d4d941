"""Model families through the API: each offered base model's family, resolution and fitting presets; presets that
do not fit refused; resolution defaults from the model; jobs that cannot fit the workers' GPU memory refused; the
job's family stored."""

import json
import secrets
import uuid
from pathlib import Path

import huggingface_hub.constants
import pytest

from backend.base_models import model_facts
from backend.models import Job
from backend.settings import get_settings
from formats.families import SDXL_FULL_FINETUNE_MIN_GIB, min_gpu_memory_gib
from tests.backend.conftest import DOG

SD_PRESETS = ["object", "face", "face_16gb", "custom"]
SDXL_PRESETS = ["sdxl_object", "sdxl_face", "custom"]
ALL_PRESETS = ["object", "face", "face_16gb", "sdxl_object", "sdxl_face", "custom"]
CLIP_TEXT = ["transformers", "CLIPTextModel"]


def write_configs(folder: Path, files: dict[str, dict]) -> Path:
    """A model folder holding only these JSON files (no weights: the API never loads them)."""
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(json.dumps(content))
    return folder


def sdxl_configs(sample_size: int = 128) -> dict[str, dict]:
    index = {"_class_name": "StableDiffusionXLPipeline", "text_encoder": CLIP_TEXT, "text_encoder_2": CLIP_TEXT}
    return {"model_index.json": index, "unet/config.json": {"sample_size": sample_size}}


def sd2_configs() -> dict[str, dict]:
    return {
        "model_index.json": {"_class_name": "StableDiffusionPipeline", "text_encoder": CLIP_TEXT},
        "text_encoder/config.json": {"hidden_act": "gelu"},
        "unet/config.json": {"sample_size": 96},
    }


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_hub_model(cache: Path, repo_id: str, files: dict[str, dict]) -> None:
    """Lay out `files` as the Hugging Face cache keeps a downloaded model's main revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = secrets.token_hex(20)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write_configs(repo / "snapshots" / commit, files)


def offer(monkeypatch, *models: str) -> None:
    monkeypatch.setattr(get_settings(), "extra_base_models", ",".join(str(model) for model in models))


def info_models(client, auth_headers) -> dict[str, dict]:
    response = client.get("/api/info", headers=auth_headers)
    assert response.status_code == 200
    return {model["name"]: model for model in response.json()["models"]}


def test_info_lists_every_builtin_family_in_demo_mode(client, auth_headers):
    info = client.get("/api/info", headers=auth_headers).json()
    assert info["base_models"] == [model["name"] for model in info["models"]]  # the old field, kept
    assert info["models"] == [
        {"name": "builtin:tiny", "family": "sd1", "family_title": "Stable Diffusion 1.x", "resolution": 64,
         "presets": SD_PRESETS},
        {"name": "builtin:tiny-sd2", "family": "sd2", "family_title": "Stable Diffusion 2.x", "resolution": 64,
         "presets": SD_PRESETS},
        {"name": "builtin:tiny-sdxl", "family": "sdxl", "family_title": "Stable Diffusion XL", "resolution": 64,
         "presets": SDXL_PRESETS},
    ]  # fmt: skip
    assert info["gpu_memory_gib"] is None


def test_local_folders_and_cached_hub_models_are_told_by_their_configs_never_their_names(
    client, auth_headers, tmp_path, hub_cache, monkeypatch
):
    # note: named like SD 1.5, configured as SDXL: the configs decide
    folder = write_configs(tmp_path / "stable-diffusion-v1-5", sdxl_configs())
    cache_hub_model(hub_cache, "acme/cached-model", sd2_configs())
    offer(monkeypatch, folder, "acme/cached-model", "stabilityai/stable-diffusion-xl-base-1.0")
    models = info_models(client, auth_headers)

    assert models[str(folder)] | {"name": ""} == {
        "name": "", "family": "sdxl", "family_title": "Stable Diffusion XL", "resolution": 1024,
        "presets": SDXL_PRESETS,
    }  # fmt: skip
    assert (models["acme/cached-model"]["family"], models["acme/cached-model"]["resolution"]) == ("sd2", 768)
    missing = models["stabilityai/stable-diffusion-xl-base-1.0"]  # not downloaded: no guess from the name
    assert missing | {"name": ""} == {
        "name": "",
        "family": None,
        "family_title": None,
        "resolution": None,
        "presets": ALL_PRESETS,
    }


def test_a_model_downloaded_later_is_known_at_the_next_question(hub_cache):
    """An unknown family is not remembered, so a model a worker has since downloaded is told at once."""
    repo_id = f"acme/later-{secrets.token_hex(3)}"
    assert model_facts(repo_id).family is None
    cache_hub_model(hub_cache, repo_id, sdxl_configs())
    assert model_facts(repo_id).family_name == "sdxl"


def test_presets_name_their_families_and_reason(client, auth_headers):
    presets = {preset["name"]: preset for preset in client.get("/api/presets", headers=auth_headers).json()}
    assert list(presets) == ALL_PRESETS
    assert presets["object"]["families"] == presets["face"]["families"] == ["sd1", "sd2"]
    assert presets["sdxl_object"]["families"] == presets["sdxl_face"]["families"] == ["sdxl"]
    assert presets["custom"]["families"] == ["sd1", "sd2", "sdxl"]
    assert all(preset["reason"] for preset in presets.values())
    assert "README_sdxl.md" in presets["sdxl_object"]["reason"]
    assert presets["sdxl_object"]["values"] | {"with_prior_preservation": None, "train_text_encoder": None} == {
        "training_method": "lora", "lora_rank": 4, "learning_rate": 1e-4, "max_train_steps": 500,
        "train_batch_size": 1, "gradient_accumulation_steps": 4, "mixed_precision": "fp16", "lr_scheduler": "constant",
        "lr_warmup_steps": 0, "with_prior_preservation": None, "train_text_encoder": None,
    }  # fmt: skip
    face = presets["sdxl_face"]["values"]
    assert (face["with_prior_preservation"], face["class_prompt"], face["train_text_encoder"]) == (
        True,
        "a photo of a person",
        True,
    )


def test_a_left_out_preset_and_resolution_follow_the_model(post_job):
    job = post_job({**DOG, "base_model": "builtin:tiny-sdxl"}).json()
    settings = job["settings"]
    assert (settings["preset"], settings["training_method"], settings["learning_rate"]) == ("sdxl_object", "lora", 1e-4)
    assert (settings["resolution"], settings["gradient_accumulation_steps"]) == (64, 4)
    assert post_job(DOG).json()["settings"]["preset"] == "object"  # builtin:tiny, the default model


def test_the_resolution_default_is_the_models_own_and_an_explicit_one_wins(post_job, tmp_path, monkeypatch):
    folder = write_configs(tmp_path / "xl", sdxl_configs(sample_size=128))
    offer(monkeypatch, folder)
    assert post_job({**DOG, "base_model": str(folder)}).json()["settings"]["resolution"] == 1024
    explicit = post_job({**DOG, "base_model": str(folder), "resolution": 256}).json()["settings"]
    assert (explicit["resolution"], explicit["preset"]) == (256, "sdxl_object")


@pytest.mark.parametrize(
    ("base_model", "preset", "fitting"),
    [("builtin:tiny-sdxl", "object", "sdxl_object, sdxl_face, custom"), ("builtin:tiny", "sdxl_face", "object, face")],
)
def test_a_preset_of_another_family_is_a_422_naming_those_that_fit(post_job, db, base_model, preset, fitting):
    response = post_job({**DOG, "base_model": base_model, "preset": preset})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "settings.preset"
    assert base_model in error["message"] and fitting in error["message"]
    assert db.query(Job).count() == 0


def test_custom_fits_every_family(post_job):
    for model in ("builtin:tiny", "builtin:tiny-sd2", "builtin:tiny-sdxl"):
        response = post_job({**DOG, "base_model": model, "preset": "custom"})
        assert response.status_code == 202, response.text


def test_a_model_of_unknown_family_takes_any_preset(post_job, hub_cache, monkeypatch):
    offer(monkeypatch, "acme/not-downloaded")
    response = post_job({**DOG, "base_model": "acme/not-downloaded", "preset": "sdxl_face"})
    assert response.status_code == 202, response.text
    assert response.json()["family"] is None
    assert response.json()["settings"]["resolution"] == 512  # the setting's own default: nothing is known


def test_sdxl_full_fine_tuning_is_refused_below_its_memory_and_lora_accepted(
    client, auth_headers, post_job, db, monkeypatch
):
    monkeypatch.setattr(get_settings(), "gpu_memory_gib", 24.0)
    assert client.get("/api/info", headers=auth_headers).json()["gpu_memory_gib"] == 24.0
    refused = post_job({**DOG, "base_model": "builtin:tiny-sdxl", "training_method": "full"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["field"] == "settings.training_method"
    assert "lora" in error["message"] and f"{SDXL_FULL_FINETUNE_MIN_GIB:g} GiB" in error["message"]
    assert "GPU_MEMORY_GIB" in error["message"]
    assert db.query(Job).count() == 0
    accepted = post_job({**DOG, "base_model": "builtin:tiny-sdxl"})  # sdxl_object: LoRA
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["settings"]["training_method"] == "lora"
    assert post_job({**DOG, "training_method": "full"}).status_code == 202  # SD 1.x fits 24 GiB


@pytest.mark.parametrize(
    ("gib", "base_model", "method", "status"),
    [
        (8.0, "builtin:tiny", "full", 422),
        (12.0, "builtin:tiny", "full", 202),
        (8.0, "builtin:tiny", "lora", 202),
        (8.0, "builtin:tiny-sdxl", "lora", 202),
        (4.0, "builtin:tiny-sdxl", "lora", 422),
        (48.0, "builtin:tiny-sdxl", "full", 202),
    ],
)
def test_the_memory_rules(post_job, monkeypatch, gib, base_model, method, status):
    monkeypatch.setattr(get_settings(), "gpu_memory_gib", gib)
    preset = "custom"  # note: the family's own presets would set the method too
    response = post_job({**DOG, "base_model": base_model, "preset": preset, "training_method": method})
    assert response.status_code == status, response.text


def test_an_unknown_family_is_held_to_what_every_family_needs():
    assert min_gpu_memory_gib(None, "full") == 12.0
    assert min_gpu_memory_gib(None, "lora") == 0.0


def test_the_job_stores_and_returns_its_family(client, auth_headers, post_job, db):
    created = post_job({**DOG, "base_model": "builtin:tiny-sdxl"}).json()
    assert created["family"] == "sdxl"
    assert client.get(f"/api/jobs/{created['id']}", headers=auth_headers).json()["family"] == "sdxl"
    assert db.get(Job, uuid.UUID(created["id"])).family == "sdxl"
    assert post_job({**DOG, "base_model": "builtin:tiny-sd2"}).json()["family"] == "sd2"
    listed = client.get("/api/jobs", headers=auth_headers).json()["items"]
    assert [job["family"] for job in listed] == ["sd2", "sdxl"]

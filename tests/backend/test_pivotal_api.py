"""Pivotal tuning through the API (issue 17): its settings and their checks, the face_16gb preset, the memory
rule, and the learned embedding's download at the final and at kept steps."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load, save_file

from backend import jobs, storage
from backend.base_models import memory_refusal, model_facts
from backend.models import Artifact, Job, JobStatus
from backend.presets import PRESETS, misfit_message
from backend.settings import get_settings
from backend.training_settings import TrainingSettings, dreambooth_method
from formats.embedding import EMBEDDING_FILE
from formats.lora import LORA_FILES

PIVOTAL = {"instance_prompt": "a photo of <sks> dog", "training_method": "pivotal"}
# A pivotal job's steps: 1-2000 textual inversion (kept at 1000), 2001-2500 Dreambooth (kept at 2200), final 2500.
INVERSION_STEP, DREAMBOOTH_STEP, FINAL = 1000, 2200, 2500
STEM = "sks-dog"  # download_stem of "a photo of <sks> dog"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ── settings ────────────────────────────────────────────────────────────────────────────────


def test_pivotal_settings_default_to_the_studys_recipe():
    settings = TrainingSettings.model_validate(PIVOTAL)
    assert (settings.training_method, settings.pivotal_second_phase) == ("pivotal", "full")
    assert (settings.placeholder_token, settings.num_vectors, settings.initializer_token) == ("<sks>", 1, None)
    assert (settings.textual_inversion_steps, settings.textual_inversion_lr) == (2000, 5e-4)
    assert dreambooth_method(settings.model_dump()) == "full"
    assert dreambooth_method({**PIVOTAL, "pivotal_second_phase": "lora"}) == "lora"
    assert dreambooth_method({"training_method": "lora"}) == "lora"


def test_a_pivotal_job_is_accepted_with_its_settings_stored(post_job):
    response = post_job({**PIVOTAL, "num_vectors": 2, "initializer_token": "dog", "textual_inversion_steps": 300})
    assert response.status_code == 202, response.text
    stored = response.json()["settings"]
    assert stored["training_method"] == "pivotal"
    assert (stored["num_vectors"], stored["initializer_token"], stored["textual_inversion_steps"]) == (2, "dog", 300)


def test_a_pivotal_prompt_without_the_placeholder_names_it(post_job):
    response = post_job({**PIVOTAL, "instance_prompt": "a photo of rufus dog"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "settings.placeholder_token"
    assert "'<sks>'" in error["message"] and "instance_prompt" in error["message"]
    own = post_job({**PIVOTAL, "instance_prompt": "a photo of <rufus> dog", "placeholder_token": "<rufus>"})
    assert own.status_code == 202, own.text


def test_other_methods_need_no_placeholder(post_job):
    assert post_job({"instance_prompt": "a photo of rufus dog", "training_method": "full"}).status_code == 202


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"placeholder_token": "<my dog>", "instance_prompt": "a photo of <my dog>"}, "placeholder_token"),
        ({"placeholder_token": "x" * 33}, "placeholder_token"),
        ({"placeholder_token": ""}, "placeholder_token"),
        ({"initializer_token": "two words"}, "initializer_token"),
        ({"num_vectors": 0}, "num_vectors"),
        ({"num_vectors": 17}, "num_vectors"),
        ({"textual_inversion_steps": 20_001}, "textual_inversion_steps"),
        ({"textual_inversion_lr": 0}, "textual_inversion_lr"),
        ({"textual_inversion_lr": 0.02}, "textual_inversion_lr"),
        ({"pivotal_second_phase": "pivotal"}, "pivotal_second_phase"),
    ],
)
def test_out_of_range_pivotal_settings_name_their_field(post_job, change, field):
    response = post_job({**PIVOTAL, **change})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == f"settings.{field}"


def test_ema_is_refused_only_with_a_lora_second_phase(post_job):
    refused = post_job({**PIVOTAL, "pivotal_second_phase": "lora", "use_ema": True})
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "settings.use_ema"
    assert "pivotal_second_phase lora" in refused.json()["error"]["message"]
    assert post_job({**PIVOTAL, "use_ema": True}).status_code == 202


def test_the_pivotal_group_shows_only_for_pivotal(client, auth_headers):
    described = client.get("/api/training-settings", headers=auth_headers).json()
    settings = {setting["name"]: setting for setting in described["settings"]}
    assert "Pivotal tuning" in described["groups"]
    pivotal = [name for name, setting in settings.items() if setting["group"] == "Pivotal tuning"]
    assert pivotal == [
        "pivotal_second_phase", "placeholder_token", "num_vectors", "initializer_token", "textual_inversion_steps",
        "textual_inversion_lr",
    ]  # fmt: skip
    assert all(settings[name]["shown_when"] == {"training_method": "pivotal"} for name in pivotal)
    assert settings["training_method"]["choices"] == ["full", "lora", "pivotal"]
    assert "pivotal" in settings["training_method"]["help"]
    assert settings["placeholder_token"]["max_length"] == 32
    assert {"training_method": "pivotal", "pivotal_second_phase": "lora"} in settings["lora_rank"]["shown_when"]


# ── the preset and the memory rule ──────────────────────────────────────────────────────────


def test_the_face_16gb_preset_is_the_studys_finding_8_in_16_gb(post_job, client, auth_headers):
    preset = PRESETS["face_16gb"]
    assert preset.families == ("sd1", "sd2")
    assert "finding 8" in preset.reason
    assert "beat plain Dreambooth" in preset.summary and "16 GB" in preset.summary
    response = post_job({"preset": "face_16gb", "instance_prompt": "a photo of <sks> person"})
    assert response.status_code == 202, response.text
    settings = response.json()["settings"]
    assert settings | preset.values == settings
    assert settings["training_method"] == "pivotal" and settings["pivotal_second_phase"] == "full"
    assert (settings["textual_inversion_steps"], settings["max_train_steps"], settings["learning_rate"]) == (
        2000, 500, 1e-6,
    )  # fmt: skip
    assert settings["with_prior_preservation"] and settings["class_prompt"] == "a photo of a person"
    assert settings["num_class_images"] == 200
    assert settings["use_8bit_adam"] and settings["gradient_checkpointing"] and settings["mixed_precision"] == "fp16"
    assert (settings["train_batch_size"], settings["gradient_accumulation_steps"]) == (1, 2)
    presets = {preset["name"]: preset for preset in client.get("/api/presets", headers=auth_headers).json()}
    assert presets["face_16gb"]["families"] == ["sd1", "sd2"]


def test_the_face_16gb_preset_needs_the_placeholder_and_an_sd_model(post_job):
    assert post_job({"preset": "face_16gb", "instance_prompt": "a photo of ana person"}).status_code == 422
    assert "use sdxl_object, sdxl_face, custom" in misfit_message("face_16gb", "sdxl")


@pytest.mark.parametrize(
    ("gib", "base_model", "second_phase", "status"),
    [
        (8.0, "builtin:tiny", "full", 422),
        (12.0, "builtin:tiny", "full", 202),
        (8.0, "builtin:tiny", "lora", 202),
        (24.0, "builtin:tiny-sdxl", "full", 422),
        (24.0, "builtin:tiny-sdxl", "lora", 202),
    ],
)
def test_a_pivotal_job_needs_the_memory_its_second_phase_needs(
    post_job, monkeypatch, gib, base_model, second_phase, status
):
    monkeypatch.setattr(get_settings(), "gpu_memory_gib", gib)
    settings = {**PIVOTAL, "preset": "custom", "base_model": base_model, "pivotal_second_phase": second_phase}
    response = post_job(settings)
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"]["field"] == "settings.training_method"
        assert "pivotal_second_phase lora" in response.json()["error"]["message"]


def test_the_memory_refusal_of_a_pivotal_run_follows_its_second_phase():
    sdxl = model_facts("builtin:tiny-sdxl")
    assert memory_refusal(sdxl, "pivotal", 24.0, "lora") is None
    assert "pivotal_second_phase lora" in memory_refusal(sdxl, "pivotal", 24.0, "full")
    assert "training_method lora" in memory_refusal(sdxl, "full", 24.0)


# ── downloads ───────────────────────────────────────────────────────────────────────────────


def embedding_file(path: Path, seed: int, vectors: int = 1) -> Path:
    """An SD 1.x embedding as the worker writes it: AUTOMATIC1111's `emb_params`, fp32, the token in the header."""
    rows = np.random.default_rng(seed).standard_normal((vectors, 32), np.float32)
    save_file({"emb_params": rows}, path, metadata={"placeholder_token": "<sks>", "format": "pt"})
    return path


def output(job: Job, name: str) -> Path:
    """Where the worker writes `name` in the job's output folder (the folder made)."""
    path = storage.job_dir(job.id) / "output" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def artifact(job: Job, path: Path, **fields) -> Artifact:
    files = [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
    return Artifact(path=storage.relative(path), size_bytes=sum(file.stat().st_size for file in files), **fields)


def weights_folder(job: Job, step: int, file_format: str) -> Artifact:
    """A kept step's weights folder: the embedding, beside LoRA files in a LoRA second phase (a diffusers one's
    unet/ is left out: the embedding download does not read it)."""
    folder = output(job, f"steps/step-{step}")
    folder.mkdir()
    embedding_file(folder / EMBEDDING_FILE, seed=step)
    if file_format == "lora":
        for name in LORA_FILES.values():
            save_file({"unet.a.lora_A.weight": np.ones((4, 8), np.float32)}, folder / name)
    return artifact(job, folder, kind="weights", step=step, format=file_format, dtype="fp32")


def finished_pivotal_job(db, make_job, user, second_phase: str = "full") -> Job:
    """A succeeded pivotal job: a kept textual-inversion step, a kept Dreambooth step and the final outputs."""
    job = make_job(user)
    job.settings = TrainingSettings.model_validate({**PIVOTAL, "pivotal_second_phase": second_phase}).model_dump(
        mode="json"
    )
    db.commit()
    single = output(job, "model-fp16.safetensors")
    save_file({"model.diffusion_model.x": np.zeros(4, np.float16)}, single)
    artifacts = [
        weights_folder(job, INVERSION_STEP, "embedding"),
        weights_folder(job, DREAMBOOTH_STEP, "lora" if second_phase == "lora" else "diffusers"),
        artifact(job, single, kind="checkpoint", step=FINAL, format="single", dtype="fp16"),
        artifact(
            job,
            embedding_file(output(job, EMBEDDING_FILE), seed=FINAL),
            kind="checkpoint",
            step=FINAL,
            format="embedding",
            dtype="fp32",
        ),
    ]
    if second_phase == "lora":
        for lora_format, name in LORA_FILES.items():
            path = output(job, name)
            save_file({"unet.a.lora_A.weight": np.full((4, 8), 2, np.float32)}, path)
            artifacts.append(artifact(job, path, kind="checkpoint", step=FINAL, format=lora_format, dtype="fp32"))
    lease = jobs.claim_job(db, job.id)
    jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=artifacts)
    return job


def finished_job(db, make_job, user, training_method: str) -> Job:
    """A succeeded job of another method, with its final single file."""
    job = make_job(user)
    job.settings = {**job.settings, "training_method": training_method}
    db.commit()
    single = output(job, "model-fp16.safetensors")
    save_file({"model.diffusion_model.x": np.zeros(4, np.float16)}, single)
    lease = jobs.claim_job(db, job.id)
    artifacts = [artifact(job, single, kind="checkpoint", step=400, format="single", dtype="fp16")]
    jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=artifacts)
    return job


@pytest.fixture
def owner(user_factory):
    user, token = user_factory("alice")
    return user, bearer(token)


@pytest.fixture
def pivotal_job(db, make_job, owner) -> Job:
    return finished_pivotal_job(db, make_job, owner[0])


def checkpoint(client, job: Job, headers: dict, **params):
    return client.get(f"/api/jobs/{job.id}/checkpoint", params=params, headers=headers)


def test_the_final_embedding_downloads_as_the_worker_wrote_it(client, pivotal_job, owner):
    response = checkpoint(client, pivotal_job, owner[1], format="embedding", dtype="fp32")
    assert response.status_code == 200, response.text
    assert response.content == output(pivotal_job, EMBEDDING_FILE).read_bytes()
    filename = f"{STEM}-step{FINAL}-fp32-embedding.safetensors"
    assert response.headers["content-disposition"] == f'attachment; filename="{filename}"'


def test_an_fp16_embedding_is_cast_keeping_the_token_in_its_header(client, pivotal_job, owner):
    response = checkpoint(client, pivotal_job, owner[1], format="embedding")  # dtype: fp16 by default
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].endswith(f'filename="{STEM}-step{FINAL}-fp16-embedding.safetensors"')
    size = int.from_bytes(response.content[:8], "little")
    header = json.loads(response.content[8 : 8 + size])
    assert header["emb_params"]["dtype"] == "F16" and header["__metadata__"]["placeholder_token"] == "<sks>"
    final = load(output(pivotal_job, EMBEDDING_FILE).read_bytes())["emb_params"]
    np.testing.assert_array_equal(load(response.content)["emb_params"], final.astype(np.float16))


@pytest.mark.parametrize("step", [INVERSION_STEP, DREAMBOOTH_STEP])
def test_a_kept_steps_embedding_is_the_one_in_its_weights_folder(client, pivotal_job, owner, step):
    response = checkpoint(client, pivotal_job, owner[1], format="embedding", dtype="fp32", step=step)
    assert response.status_code == 200, response.text
    assert response.content == (output(pivotal_job, f"steps/step-{step}") / EMBEDDING_FILE).read_bytes()
    assert f"step{step}-fp32-embedding.safetensors" in response.headers["content-disposition"]


def test_every_embedding_artifact_url_downloads(client, pivotal_job, owner):
    job = client.get(f"/api/jobs/{pivotal_job.id}", headers=owner[1]).json()
    urls = [item["url"] for item in job["artifacts"] if item["format"] == "embedding"]
    assert urls == [
        f"/api/jobs/{pivotal_job.id}/checkpoint?format=embedding&dtype=fp32&step={INVERSION_STEP}",
        f"/api/jobs/{pivotal_job.id}/checkpoint?format=embedding&dtype=fp32&step={FINAL}",
    ]
    for url in urls:
        assert client.get(url, headers=owner[1]).status_code == 200, url


@pytest.mark.parametrize("file_format", ["single", "diffusers"])
def test_a_textual_inversion_step_has_only_the_embedding(client, pivotal_job, owner, file_format):
    response = checkpoint(client, pivotal_job, owner[1], format=file_format, step=INVERSION_STEP)
    assert response.status_code == 404
    assert "format=embedding" in response.json()["error"]["message"]


def test_a_step_that_kept_nothing_has_no_embedding(client, pivotal_job, owner):
    response = checkpoint(client, pivotal_job, owner[1], format="embedding", step=1500)
    assert response.status_code == 404
    assert "kept steps: 1000, 2200, 2500" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("training_method", "formats"),
    [
        ("full", "format=single or format=diffusers"),
        ("lora", "format=single or format=diffusers or format=lora or format=lora_kohya"),
    ],
)
def test_a_job_of_another_method_names_the_formats_it_has(client, db, make_job, owner, training_method, formats):
    job = finished_job(db, make_job, owner[0], training_method)
    response = checkpoint(client, job, owner[1], format="embedding")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "learned no embedding" in message and message.endswith(f"download {formats} instead")


def test_a_pivotal_job_with_a_full_second_phase_has_no_lora(client, pivotal_job, owner):
    response = checkpoint(client, pivotal_job, owner[1], format="lora")
    assert response.status_code == 404
    assert "format=embedding" in response.json()["error"]["message"]


def test_a_lora_second_phase_downloads_like_a_lora_job(client, db, make_job, owner):
    job = finished_pivotal_job(db, make_job, owner[0], second_phase="lora")
    for lora_format, name in LORA_FILES.items():
        final = checkpoint(client, job, owner[1], format=lora_format, dtype="fp32")
        assert final.status_code == 200, final.text
        assert final.content == output(job, name).read_bytes()
        kept = checkpoint(client, job, owner[1], format=lora_format, dtype="fp32", step=DREAMBOOTH_STEP)
        assert kept.content == (output(job, f"steps/step-{DREAMBOOTH_STEP}") / name).read_bytes()
    kept = checkpoint(client, job, owner[1], format="embedding", dtype="fp32", step=DREAMBOOTH_STEP)
    assert kept.content == (output(job, f"steps/step-{DREAMBOOTH_STEP}") / EMBEDDING_FILE).read_bytes()
    inversion = checkpoint(client, job, owner[1], format="lora", step=INVERSION_STEP)
    assert inversion.status_code == 404 and "format=embedding" in inversion.json()["error"]["message"]


def test_a_steps_diffusers_overlay_takes_its_folders_not_its_embedding(tmp_path):
    from backend.exports import overlaid

    pipeline, weights = tmp_path / "pipeline", tmp_path / "weights"
    for folder in (pipeline / "unet", pipeline / "vae", weights / "unet"):
        folder.mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    embedding_file(weights / EMBEDDING_FILE, seed=1)
    entries = overlaid(pipeline, weights)
    assert entries == {
        "model_index.json": pipeline / "model_index.json",
        "unet": weights / "unet",
        "vae": pipeline / "vae",
    }

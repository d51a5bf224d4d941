"""An SDXL job on the whole stack (API + Postgres + Redis + a Celery worker + builtin:tiny-sdxl), as a user would:
submitted over HTTP, samples at several steps, a recommended step, downloads at a kept step that load in
diffusers (the single file in SDXL's original layout, kohya's LoRA with both text encoders), and a generation.
"""

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.stack import FAST_SETTINGS, Client, Stack, running_stack
from tests.e2e.test_whole_stack import create_user

pytestmark = pytest.mark.e2e

SDXL = {
    **FAST_SETTINGS,
    "base_model": "builtin:tiny-sdxl",
    "max_train_steps": 4,
    "validation_steps": 2,
    "train_batch_size": 1,
    "train_text_encoder": True,
}


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("sdxl")) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, create_user(stack, "sdxl-user"))


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:tiny-sdxl's folder, whose configs let `from_single_file` and `load_lora_weights` work offline."""
    from worker.dreambooth.tiny import make_model

    return make_model(tmp_path_factory.mktemp("tiny-sdxl") / "model", "tiny-sdxl")


def finished_job(client: Client, stack: Stack, settings: dict) -> dict:
    job = client.submit(settings)
    assert job["family"] == "sdxl"
    job = client.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, stack, timeout=400)
    assert job["status"] == "succeeded", (job, stack.logs())
    samples = [a for a in job["artifacts"] if a["kind"] == "sample"]
    assert sorted({sample["step"] for sample in samples}) == [2, 4]
    assert job["kept_steps"] == [2, 4]
    assert job["evaluation"]["recommended_step"] in (2, 4)
    return job


def download(client: Client, job: dict, path: Path, **params) -> Path:
    response = client.http.get(f"/api/jobs/{job['id']}/checkpoint", params=params)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def test_a_full_sdxl_job_downloads_a_kept_steps_single_file_that_loads(
    client: Client, stack: Stack, sdxl_folder: Path, tmp_path: Path
):
    from diffusers import StableDiffusionXLPipeline

    job = finished_job(client, stack, SDXL)
    path = download(client, job, tmp_path / "step2.safetensors", format="single", dtype="fp32", step=2)
    pipeline = StableDiffusionXLPipeline.from_single_file(str(path), config=str(sdxl_folder))
    kept = download(client, job, tmp_path / "step2.zip", format="diffusers", dtype="fp32", step=2)
    import zipfile

    with zipfile.ZipFile(kept) as archive:
        archive.extractall(tmp_path / "step2")
    [folder] = (tmp_path / "step2").iterdir()
    expected = StableDiffusionXLPipeline.from_pretrained(folder)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        loaded = getattr(pipeline, part).state_dict()
        for key, value in getattr(expected, part).state_dict().items():
            assert torch.equal(loaded[key], value), f"{part} {key}"


def test_an_sdxl_lora_job_downloads_kohya_files_and_generates(
    client: Client, stack: Stack, sdxl_folder: Path, tmp_path: Path
):
    from diffusers import StableDiffusionXLPipeline

    job = finished_job(client, stack, {**SDXL, "training_method": "lora", "learning_rate": 1e-3})
    path = download(client, job, tmp_path / "kohya.safetensors", format="lora_kohya", step=2)
    prefixes = {key.split("_")[1] for key in load_file(path)}
    assert prefixes == {"unet", "te1", "te2"}
    pipeline = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    pipeline.load_lora_weights(str(path))
    assert {"unet", "text_encoder", "text_encoder_2"} <= set(pipeline.get_list_adapters())

    response = client.http.post(
        f"/api/jobs/{job['id']}/generations",
        json={"prompt": "a photo of rufus toy", "num_inference_steps": 2, "num_images": 1, "seed": 1, "step": 2},
    )
    assert response.status_code == 202, response.text
    generation = response.json()
    deadline = time.monotonic() + 120
    while generation["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.3)
        generation = client.http.get(f"/api/generations/{generation['id']}").json()
    assert generation["status"] == "succeeded", (generation, stack.logs())
    image = client.http.get(generation["images"][0]["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

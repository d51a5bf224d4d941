"""Generations on the whole stack: one trained job, then new images from it through the API and a real worker.

Every sampler renders, a seed gives the same pixels twice, the worker keeps the loaded model between
generations, a kept step's own weights are used, other users see nothing, and unfinished jobs refuse.
"""

import io
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select, text

from backend.auth import create_user
from backend.db import get_engine, get_sessionmaker
from backend.models import Artifact, Base
from tests.e2e.stack import FAST_SETTINGS, Client, Stack, running_stack

pytestmark = pytest.mark.e2e

SCHEDULERS = ["ddim", "pndm", "lms", "euler", "euler_a", "dpmpp_2m"]
QUICK = {"prompt": "a photo of rufus toy on the beach", "num_inference_steps": 3, "num_images": 1, "seed": 11}
LOADED, REUSED = "loaded the model from disk", "reusing the loaded model"
# note: generations need a finished job, not a good one, so it trains briefly
TRAINING = {**FAST_SETTINGS, "max_train_steps": 8}


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The API and one worker on an emptied test database and broker, for the whole module."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_engine().begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("generations")) as running:
        yield running


def user(stack: Stack, name: str) -> Client:
    with get_sessionmaker()() as session:
        _user, token = create_user(session, name)
    return Client(stack.url, token)


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Client:
    return user(stack, "alice")


@pytest.fixture(scope="module")
def trained_job(stack: Stack, alice: Client) -> dict:
    job = alice.submit(TRAINING)
    job = alice.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, stack)
    assert job["status"] == "succeeded", stack.logs()
    return job


def generate(client: Client, job_id: str, **params) -> dict:
    response = client.http.post(f"/api/jobs/{job_id}/generations", json={**QUICK, **params})
    assert response.status_code == 202, response.text
    return response.json()


def finished(client: Client, generation: dict, stack: Stack, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while generation["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"generation {generation['id']} stuck:\n{stack.logs()}"
        time.sleep(0.2)
        generation = client.http.get(f"/api/generations/{generation['id']}").json()
    assert generation["status"] == "succeeded", (generation, stack.logs())
    return generation


def image_bytes(client: Client, generation: dict) -> list[bytes]:
    images = []
    for image in generation["images"]:
        response = client.http.get(image["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        images.append(response.content)
    return images


def model_source(stack: Stack, generation: dict) -> str:
    """What the worker's log says it did for the generation: LOADED or REUSED."""
    log = (stack.log_dir / "worker.log").read_text(errors="replace")
    match = re.search(rf"generation {generation['id']}: ({LOADED}|{REUSED})", log)
    assert match, f"no model line for generation {generation['id']}:\n{log[-3000:]}"
    return match.group(1)


def test_every_sampler_renders_a_png_from_one_loaded_model(stack, alice, trained_job):
    queued = [generate(alice, trained_job["id"], scheduler=name) for name in SCHEDULERS]
    done = [finished(alice, generation, stack) for generation in queued]
    for generation, name in zip(done, SCHEDULERS, strict=True):
        assert generation["params"]["scheduler"] == name
        assert generation["params"]["step"] == TRAINING["max_train_steps"]
        [image] = generation["images"]
        assert image["seed"] == QUICK["seed"]
        [data] = image_bytes(alice, generation)
        with Image.open(io.BytesIO(data)) as png:
            assert (png.format, png.size, png.mode) == ("PNG", (64, 64), "RGB")
    assert [model_source(stack, generation) for generation in done[1:]] == [REUSED] * 5


def test_a_seed_gives_the_same_pixels_again(stack, alice, trained_job):
    params = {"seed": 123, "num_images": 2, "scheduler": "euler_a", "negative_prompt": "blurry"}
    first = finished(alice, generate(alice, trained_job["id"], **params), stack)
    second = finished(alice, generate(alice, trained_job["id"], **params), stack)
    assert [image["seed"] for image in first["images"]] == [123, 124]
    assert image_bytes(alice, first) == image_bytes(alice, second)
    assert model_source(stack, second) == REUSED


def keep_handmade_weights(stack: Stack, job: dict, step: int) -> None:
    """Record diffusers weights for `step` as a kept step of `job`: its final UNet, every weight nudged."""
    from safetensors.torch import load_file, save_file

    data_dir = Path(stack.env["DATA_DIR"]).resolve()
    weights_file = "diffusion_pytorch_model.safetensors"
    with get_sessionmaker()() as session:
        pipeline = session.scalar(select(Artifact).where(Artifact.job_id == job["id"], Artifact.kind == "pipeline"))
        final_unet = data_dir / pipeline.path / "unet"
        weights = (data_dir / pipeline.path).parent / "handmade-weights" / f"step-{step}"
        (weights / "unet").mkdir(parents=True)
        shutil.copy(final_unet / "config.json", weights / "unet")
        tensors = load_file(final_unet / weights_file)
        save_file({name: tensor + 0.05 for name, tensor in tensors.items()}, weights / "unet" / weights_file)
        path = weights.resolve().relative_to(data_dir).as_posix()
        session.add(Artifact(job_id=pipeline.job_id, kind="weights", path=path, size_bytes=1, step=step,
                             format="diffusers", dtype="fp32"))  # fmt: skip
        session.commit()


def test_a_kept_step_renders_from_its_own_weights(stack, alice, trained_job):
    step = min(set(range(1, TRAINING["max_train_steps"])) - set(trained_job["kept_steps"]))
    keep_handmade_weights(stack, trained_job, step)
    kept = finished(alice, generate(alice, trained_job["id"], step=step), stack)
    final = finished(alice, generate(alice, trained_job["id"]), stack)
    assert kept["params"]["step"] == step
    assert image_bytes(alice, kept) != image_bytes(alice, final)
    # note: the worker keeps one model: each switch loads from disk
    assert (model_source(stack, kept), model_source(stack, final)) == (LOADED, LOADED)


def test_another_users_generations_are_missing(stack, alice, trained_job):
    generation = finished(alice, generate(alice, trained_job["id"]), stack)
    mallory = user(stack, "mallory")
    urls = [f"/api/generations/{generation['id']}", generation["images"][0]["url"]]
    for url in (*urls, f"/api/jobs/{trained_job['id']}/generations"):
        response = mallory.http.get(url)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", url
    response = mallory.http.post(f"/api/jobs/{trained_job['id']}/generations", json=QUICK)
    assert response.json()["error"] == {"code": "not_found", "message": f"job {trained_job['id']} not found"}
    listed = alice.http.get(f"/api/jobs/{trained_job['id']}/generations").json()
    assert listed["items"][0]["id"] == generation["id"]


def test_a_job_still_training_refuses_generations(stack, alice):
    job = alice.submit({**FAST_SETTINGS, "max_train_steps": 20_000})
    response = alice.http.post(f"/api/jobs/{job['id']}/generations", json=QUICK)
    assert response.status_code == 409
    assert response.json()["error"]["message"].endswith("images can be generated once it has succeeded")
    alice.wait_for(job["id"], {"running"}, stack, timeout=60)
    response = alice.http.post(f"/api/jobs/{job['id']}/generations", json=QUICK)
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "conflict",
        "message": "the job is running; images can be generated once it has succeeded",
    }
    assert alice.http.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
    alice.wait_for(job["id"], {"cancelled", "failed", "succeeded"}, stack, timeout=60)


def test_a_real_kept_step_renders_differently_from_the_final_weights(stack, alice, trained_job):
    # note: 8 steps validate at 2, 4, 6 and 8; every one of them is kept
    assert trained_job["kept_steps"] == [2, 4, 6, 8]
    early = finished(alice, generate(alice, trained_job["id"], step=2), stack)
    final = finished(alice, generate(alice, trained_job["id"], step=8), stack)
    assert image_bytes(alice, early) != image_bytes(alice, final)


def test_a_lora_job_downloads_its_adapters_and_generates_at_a_kept_step(stack, alice, tmp_path: Path):
    from safetensors import safe_open

    job = alice.submit({**TRAINING, "training_method": "lora", "lora_rank": 4, "validation_steps": 4})
    job = alice.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, stack)
    assert job["status"] == "succeeded", stack.logs()
    assert job["kept_steps"] == [4, 8]
    formats = {(a["format"], a["step"]) for a in job["artifacts"] if a["kind"] in ("checkpoint", "weights")}
    assert formats == {("single", 8), ("lora", 8), ("lora_kohya", 8), ("lora", 4)}
    for name, step, prefix in (("lora", 4, "unet."), ("lora_kohya", 8, "lora_unet_"), ("lora_kohya", 4, "lora_unet_")):
        response = alice.http.get(f"/api/jobs/{job['id']}/checkpoint", params={"format": name, "step": step})
        assert response.status_code == 200, response.text
        path = tmp_path / f"{name}-{step}.safetensors"
        path.write_bytes(response.content)
        with safe_open(str(path), "np") as file:
            assert file.keys() and all(key.startswith((prefix, "text_encoder.", "lora_te_")) for key in file.keys())
            assert file.metadata()["step"] == str(step)
    response = alice.http.get(f"/api/jobs/{job['id']}/checkpoint", params={"format": "single", "step": 4})
    assert response.status_code == 404 and "format=lora" in response.json()["error"]["message"]
    # note: the final weights are also a whole model with the adapters merged in
    assert alice.http.get(f"/api/jobs/{job['id']}/checkpoint", params={"format": "single"}).status_code == 200
    early = finished(alice, generate(alice, job["id"], step=4), stack)
    final = finished(alice, generate(alice, job["id"]), stack)
    assert len(early["images"]) == 1 and image_bytes(alice, early) != image_bytes(alice, final)

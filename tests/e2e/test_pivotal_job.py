"""A pivotal-tuning job on the whole stack (API + Postgres + Redis + a Celery worker + builtin:tiny): both phases
reported, samples and kept steps across both, the embedding download loads in diffusers at a phase-one step and
at the end, and a generation from a phase-one step."""

import time
from pathlib import Path

import pytest
import torch

from tests.e2e.stack import FAST_SETTINGS, Client, Stack, running_stack
from tests.e2e.test_whole_stack import create_user

pytestmark = pytest.mark.e2e

PIVOTAL = {
    **FAST_SETTINGS,
    "instance_prompt": "a photo of <rufus> toy",
    "training_method": "pivotal",
    "placeholder_token": "<rufus>",
    "textual_inversion_steps": 20,
    "textual_inversion_lr": 1e-2,
    "max_train_steps": 20,
    "validation_steps": 10,
    "validation_prompts": ["a photo of <rufus> toy"],
}


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("pivotal")) as running:
        yield running


def test_a_pivotal_job_reports_both_phases_and_its_embedding_loads(stack: Stack, tmp_path: Path):
    from diffusers import StableDiffusionPipeline

    client = Client(stack.url, create_user(stack, "pivotal-user"))
    job = client.submit(PIVOTAL)
    phases, deadline = set(), time.monotonic() + 400
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)
        job = client.job(job["id"])
        phases.add(job["phase"])
    assert job["status"] == "succeeded", (job, stack.logs())
    assert "inversion" in phases
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 40
    assert sorted({a["step"] for a in job["artifacts"] if a["kind"] == "sample"}) == [10, 20, 30, 40]
    assert job["kept_steps"] == [10, 20, 30, 40]

    base = Path(stack.env["DATA_DIR"]) / "models" / "builtin-tiny"
    for step in (10, 40):
        response = client.http.get(f"/api/jobs/{job['id']}/checkpoint", params={"format": "embedding", "step": step})
        assert response.status_code == 200, response.text
        path = tmp_path / f"embedding-{step}.safetensors"
        path.write_bytes(response.content)
        pipeline = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
        pipeline.load_textual_inversion(str(path), token="<rufus>")
        row = pipeline.text_encoder.get_input_embeddings().weight[pipeline.tokenizer.convert_tokens_to_ids("<rufus>")]
        assert torch.isfinite(row).all()
    single = client.http.get(f"/api/jobs/{job['id']}/checkpoint", params={"format": "single", "step": 10})
    assert single.status_code == 404 and "embedding" in single.text
    # the worker's final file and the API's streamed one of a phase-two step both load on the base model's configs
    for step in (30, 40):
        response = client.http.get(
            f"/api/jobs/{job['id']}/checkpoint", params={"format": "single", "dtype": "fp32", "step": step}
        )
        assert response.status_code == 200, response.text
        path = tmp_path / f"single-{step}.safetensors"
        path.write_bytes(response.content)
        pipeline = StableDiffusionPipeline.from_single_file(str(path), config=str(base), local_files_only=True)
        pipeline.load_textual_inversion(str(tmp_path / "embedding-40.safetensors"), token="<rufus>")

    response = client.http.post(
        f"/api/jobs/{job['id']}/generations",
        json={"prompt": "a photo of <rufus> toy", "num_inference_steps": 2, "num_images": 1, "seed": 1, "step": 10},
    )
    assert response.status_code == 202, response.text
    generation, deadline = response.json(), time.monotonic() + 120
    while generation["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.3)
        generation = client.http.get(f"/api/generations/{generation['id']}").json()
    assert generation["status"] == "succeeded", (generation, stack.logs())

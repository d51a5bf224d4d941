"""/api/jobs/{id}/generations and /api/generations: validation, job state and step checks, ownership, the cap."""

import ast
import json
import uuid

import pytest
from PIL import Image
from sqlalchemy import func, select

from backend import generations, jobs, storage
from backend.generations import MAX_ACTIVE_GENERATIONS_PER_USER
from backend.models import Artifact, Generation, JobStatus
from backend.queue import GENERATE_TASK, GPU_QUEUE

FINAL_STEP = 30
PROMPT = {"prompt": "a photo of rufus the dog on the beach"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def queued_tasks(broker) -> list[tuple[str, str]]:
    """(task name, first argument) of each Celery message waiting for the GPU workers."""
    messages = [json.loads(raw) for raw in broker.lrange(GPU_QUEUE, 0, -1)]
    return [(m["headers"]["task"], ast.literal_eval(m["headers"]["argsrepr"])[0]) for m in messages]


def generation_count(db) -> int:
    return db.scalar(select(func.count()).select_from(Generation))


@pytest.fixture
def alice(user_factory):
    return user_factory("alice")


@pytest.fixture
def finish_job(db):
    """Ends a queued job as succeeded, with a final pipeline and diffusers weights at `kept` steps."""

    def finish(job, kept=(10, 20)):
        artifacts = [
            Artifact(kind="pipeline", path=f"jobs/{job.id.hex}/output/pipeline", size_bytes=1, step=FINAL_STEP,
                     format="diffusers", dtype="fp32"),
            *(Artifact(kind="weights", path=f"jobs/{job.id.hex}/output/weights/step-{step}", size_bytes=1, step=step,
                       format="diffusers") for step in kept),
        ]  # fmt: skip
        jobs.finish_job(db, jobs.claim_job(db, job.id), JobStatus.succeeded, artifacts=artifacts)
        return job

    return finish


@pytest.fixture
def finished_job(alice, make_job, finish_job):
    return finish_job(make_job(alice[0]))


def post(client, job_id, token, body=PROMPT):
    return client.post(f"/api/jobs/{job_id}/generations", json=body, headers=bearer(token))


# ── create ───────────────────────────────────────────────────────────────────────────────────


def test_create_fills_the_defaults_and_queues_the_generation(client, db, alice, finished_job, broker):
    response = post(client, finished_job.id, alice[1])
    assert response.status_code == 202, response.text
    generation = response.json()
    assert response.headers["location"] == f"/api/generations/{generation['id']}"
    assert (generation["job_id"], generation["status"], generation["images"]) == (str(finished_job.id), "queued", [])
    assert generation["error"] is None and generation["started_at"] is None
    params = generation["params"]
    seed = params.pop("seed")
    assert 0 <= seed < 2**32
    assert params == {
        "prompt": PROMPT["prompt"], "negative_prompt": None, "scheduler": "ddim", "num_inference_steps": 100,
        "guidance_scale": 7.5, "num_images": 4, "step": FINAL_STEP,
    }  # fmt: skip
    assert db.get(Generation, uuid.UUID(generation["id"])).params["seed"] == seed
    assert queued_tasks(broker) == [(GENERATE_TASK, generation["id"])]


def test_create_keeps_what_was_asked(client, alice, finished_job, broker):
    body = {
        "prompt": "  rufus in space  ", "negative_prompt": "", "scheduler": "euler_a", "num_inference_steps": 3,
        "guidance_scale": 0, "seed": 2**32 - 1, "num_images": 8, "step": 10,
    }  # fmt: skip
    response = post(client, finished_job.id, alice[1], body)
    assert response.status_code == 202, response.text
    assert response.json()["params"] == {**body, "prompt": "rufus in space", "negative_prompt": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 501}, "prompt"),
        ({**PROMPT, "negative_prompt": "x" * 501}, "negative_prompt"),
        ({**PROMPT, "scheduler": "dpm_sde"}, "scheduler"),
        ({**PROMPT, "num_inference_steps": 0}, "num_inference_steps"),
        ({**PROMPT, "num_inference_steps": 501}, "num_inference_steps"),
        ({**PROMPT, "guidance_scale": -1}, "guidance_scale"),
        ({**PROMPT, "guidance_scale": 31}, "guidance_scale"),
        ({**PROMPT, "seed": -1}, "seed"),
        ({**PROMPT, "seed": 2**32}, "seed"),
        ({**PROMPT, "num_images": 0}, "num_images"),
        ({**PROMPT, "num_images": 9}, "num_images"),
        ({**PROMPT, "step": -1}, "step"),
        ({**PROMPT, "step": "last"}, "step"),
        ({**PROMPT, "width": 512}, "width"),
    ],
)
def test_invalid_fields_are_named_and_change_nothing(client, db, alice, finished_job, broker, body, field):
    response = post(client, finished_job.id, alice[1], body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", field)
    assert error["message"].startswith(f"{field}: ")
    assert generation_count(db) == 0 and queued_tasks(broker) == []


def test_a_body_that_is_not_a_json_object_is_refused(client, db, alice, finished_job, broker):
    headers = {**bearer(alice[1]), "Content-Type": "application/json"}
    response = client.post(f"/api/jobs/{finished_job.id}/generations", content=b"[1]", headers=headers)
    assert response.status_code == 422
    assert generation_count(db) == 0 and queued_tasks(broker) == []


def test_another_users_job_is_as_missing_as_none(client, db, finished_job, user_factory, broker):
    _mallory, token = user_factory("mallory")
    for job_id in (finished_job.id, uuid.uuid4()):
        for body in (PROMPT, {"num_images": 99}):
            response = post(client, job_id, token, body)
            assert response.status_code == 404, response.text
            assert response.json()["error"] == {"code": "not_found", "message": f"job {job_id} not found"}
    assert client.get(f"/api/jobs/{finished_job.id}/generations", headers=bearer(token)).status_code == 404
    assert generation_count(db) == 0 and queued_tasks(broker) == []


def test_an_unknown_step_is_a_404_listing_the_kept_steps(client, db, alice, finished_job, broker):
    response = post(client, finished_job.id, alice[1], {**PROMPT, "step": 15})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "not_found",
        "message": f"job {finished_job.id} kept no weights at step 15; kept steps: 10, 20, 30",
        "field": "step",
    }
    assert generation_count(db) == 0 and queued_tasks(broker) == []


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("queued", "the job is queued; images can be generated once it has succeeded"),
        ("running", "the job is running; images can be generated once it has succeeded"),
        ("failed", "the job failed, so it has no trained weights to generate from; train it again"),
        ("cancelled", "the job was cancelled, so it has no trained weights to generate from; train it again"),
    ],
)
def test_a_job_that_has_not_succeeded_is_a_conflict(client, db, alice, make_job, broker, status, message):
    job = make_job(alice[0])
    if status != "queued":
        lease = jobs.claim_job(db, job.id)
        if status != "running":
            jobs.finish_job(db, lease, JobStatus(status), "training_error" if status == "failed" else None)
    response = post(client, job.id, alice[1])
    assert response.status_code == 409
    assert response.json()["error"] == {"code": "conflict", "message": message}
    assert generation_count(db) == 0 and queued_tasks(broker) == []


def test_each_user_may_have_a_few_generations_waiting(client, db, alice, finished_job, broker):
    for _ in range(MAX_ACTIVE_GENERATIONS_PER_USER):
        assert post(client, finished_job.id, alice[1]).status_code == 202
    response = post(client, finished_job.id, alice[1])
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "limit_exceeded"
    assert f"the limit is {MAX_ACTIVE_GENERATIONS_PER_USER}" in response.json()["error"]["message"]
    # a finished one makes room again
    lease = generations.claim_generation(db, db.scalars(select(Generation.id)).first())
    generations.finish_generation(db, lease, "failed", error_code="generation_error", error_message="x")
    assert post(client, finished_job.id, alice[1]).status_code == 202


def test_a_generation_is_kept_queued_when_the_broker_is_down(client, db, alice, finished_job, monkeypatch, caplog):
    from backend import queue
    from backend.queue import make_celery
    from backend.settings import Settings

    monkeypatch.setattr(queue, "client", lambda: make_celery(Settings(broker_url="redis://127.0.0.1:1/0")))
    response = post(client, finished_job.id, alice[1])
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert generation_count(db) == 1
    assert "could not reach the broker" in caplog.text


# ── read ─────────────────────────────────────────────────────────────────────────────────────


def png(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "orange").save(path, format="PNG")


def test_the_owner_reads_a_finished_generation_and_its_images(client, db, alice, finished_job, user_factory, broker):
    generation_id = post(client, finished_job.id, alice[1], {**PROMPT, "num_images": 2, "seed": 40}).json()["id"]
    image_url = f"/api/generations/{generation_id}/images/0"
    assert client.get(image_url, headers=bearer(alice[1])).status_code == 404  # not rendered yet

    lease = generations.claim_generation(db, uuid.UUID(generation_id))
    folder = generations.generation_dir(finished_job.id, uuid.UUID(generation_id))
    images = []
    for index in range(2):
        png(folder / f"{index}.png")
        images.append({"path": storage.relative(folder / f"{index}.png"), "seed": 40 + index})
    generations.finish_generation(db, lease, "succeeded", images=images)

    generation = client.get(f"/api/generations/{generation_id}", headers=bearer(alice[1])).json()
    assert generation["status"] == "succeeded" and generation["error"] is None
    assert generation["started_at"] and generation["finished_at"]
    assert generation["images"] == [
        {"url": f"/api/generations/{generation_id}/images/{index}", "seed": 40 + index} for index in range(2)
    ]
    response = client.get(image_url, headers=bearer(alice[1]))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (folder / "0.png").read_bytes()
    assert client.get(f"/api/generations/{generation_id}/images/2", headers=bearer(alice[1])).status_code == 404

    _mallory, token = user_factory("mallory")
    for url in (f"/api/generations/{generation_id}", image_url, f"/api/generations/{uuid.uuid4()}"):
        response = client.get(url, headers=bearer(token))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_a_failed_generation_says_why(client, db, alice, finished_job, broker):
    generation_id = post(client, finished_job.id, alice[1]).json()["id"]
    lease = generations.claim_generation(db, uuid.UUID(generation_id))
    generations.finish_generation(db, lease, "failed", error_code="out_of_memory", error_message="The GPU ran out")
    generation = client.get(f"/api/generations/{generation_id}", headers=bearer(alice[1])).json()
    assert generation["status"] == "failed"
    assert generation["error"] == {"code": "out_of_memory", "message": "The GPU ran out"}
    assert generation["images"] == []


def test_the_jobs_generations_are_listed_newest_first(client, alice, make_job, finish_job, broker):
    job, other_job = finish_job(make_job(alice[0])), finish_job(make_job(alice[0]))
    ids = [post(client, job.id, alice[1], {**PROMPT, "seed": seed}).json()["id"] for seed in range(3)]
    post(client, other_job.id, alice[1])
    page = client.get(f"/api/jobs/{job.id}/generations", headers=bearer(alice[1])).json()
    assert [item["id"] for item in page["items"]] == ids[::-1]
    assert (page["total"], page["limit"], page["offset"]) == (3, 20, 0)
    page = client.get(f"/api/jobs/{job.id}/generations?limit=1&offset=1", headers=bearer(alice[1])).json()
    assert [item["id"] for item in page["items"]] == [ids[1]] and page["total"] == 3


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/generations/not-a-uuid", "generation_id"),
        (f"/api/generations/{uuid.UUID(int=1)}/images/-1", "index"),
        ("/api/jobs/not-a-uuid/generations?limit=5", "job_id"),
        (f"/api/jobs/{uuid.UUID(int=1)}/generations?limit=0", "limit"),
    ],
)
def test_malformed_ids_and_pages_are_named(client, alice, path, field):
    response = client.get(path, headers=bearer(alice[1]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_generations_go_with_their_job(client, db, alice, finished_job, broker):
    generation_id = post(client, finished_job.id, alice[1]).json()["id"]
    assert client.delete(f"/api/jobs/{finished_job.id}", headers=bearer(alice[1])).status_code == 204
    assert client.get(f"/api/generations/{generation_id}", headers=bearer(alice[1])).status_code == 404
    assert generation_count(db) == 0

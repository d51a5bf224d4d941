"""Every route that takes an id, called as its owner, as another user, with no token, and with a
revoked token: only the owner gets through, and the others change nothing."""

import uuid

import pytest
from sqlalchemy import func, select

from backend import generations, jobs, storage
from backend.auth import create_token, issue_token, revoke_token
from backend.generation_schemas import GenerationCreate
from backend.images import ingest_photo
from backend.models import ApiToken, Artifact, Generation, Job, JobStatus
from backend.training_settings import TrainingSettings

# (method, path template, the owner's status)
ID_ROUTES = [
    ("GET", "/api/jobs/{job_id}", 200),
    ("GET", "/api/jobs/{job_id}/events", 200),
    ("GET", "/api/jobs/{job_id}/checkpoint", 200),
    ("GET", "/api/jobs/{job_id}/samples/{sample_id}", 200),
    ("GET", "/api/jobs/{job_id}/photos/{position}", 200),
    ("POST", "/api/jobs/{job_id}/cancel", 202),
    ("DELETE", "/api/jobs/{job_id}", 204),
    ("DELETE", "/api/tokens/{token_id}", 204),
    ("POST", "/api/jobs/{job_id}/generations", 202),
    ("GET", "/api/jobs/{job_id}/generations", 200),
    ("GET", "/api/generations/{generation_id}", 200),
    ("GET", "/api/generations/{generation_id}/images/{index}", 200),
]
BODIES = {"/api/jobs/{job_id}/generations": {"prompt": "rufus on the moon"}}
CALLERS = ["owner", "other user", "no token", "revoked token"]


@pytest.fixture
def world(db, user_factory, photo_bytes):
    """A finished job of alice's with a sample, a checkpoint and a generation, and a token of hers to revoke."""
    alice, alice_token = user_factory("alice")
    _mallory, mallory_token = user_factory("mallory")
    settings = TrainingSettings(instance_prompt="a photo of rufus dog").model_dump(mode="json")
    job = jobs.create_job(db, alice, settings, [ingest_photo(photo_bytes(), "photos", "photo")])
    artifacts = []
    for name, fields in (
        ("sample.png", {"kind": "sample"}),
        ("model.safetensors", {"kind": "checkpoint", "format": "single", "dtype": "fp16"}),
        ("pipeline", {"kind": "pipeline", "format": "diffusers", "dtype": "fp32"}),
    ):
        path = storage.job_dir(job.id) / "output" / name
        storage.write_atomic(path, b"data")
        artifacts.append(Artifact(path=storage.relative(path), size_bytes=4, step=1, **fields))
    jobs.finish_job(db, jobs.claim_job(db, job.id), JobStatus.succeeded, artifacts=artifacts)
    generation = generations.create_generation(db, alice, job.id, GenerationCreate(prompt="rufus").model_dump())
    image = generations.generation_dir(job.id, generation.id) / "0.png"
    storage.write_atomic(image, photo_bytes())
    lease = generations.claim_generation(db, generation.id)
    generations.finish_generation(db, lease, "succeeded", images=[{"path": storage.relative(image), "seed": 1}])
    spare, _ = create_token(db, alice)
    revoked = issue_token(db, alice)
    revoke_token(db, alice, db.scalar(select(ApiToken.id).order_by(ApiToken.id.desc())))
    ids = {
        "job_id": job.id,
        "sample_id": artifacts[0].id,
        "token_id": spare.id,
        "generation_id": generation.id,
        "index": 0,
        "position": 0,
    }
    tokens = {"owner": alice_token, "other user": mallory_token, "no token": None, "revoked token": revoked}
    return ids, tokens


def test_the_matrix_covers_every_route_that_takes_an_id():
    from backend.main import create_app

    routes = {
        (method.upper(), path)
        for path, operations in create_app().openapi()["paths"].items()
        if "{" in path
        for method in operations
    }
    assert routes == {(method, path) for method, path, _ in ID_ROUTES}, "add new {id} routes to ID_ROUTES"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "template", "owner_status"), ID_ROUTES, ids=[f"{m} {p}" for m, p, _ in ID_ROUTES])
def test_only_the_owner_gets_through(client, db, world, method, template, owner_status, caller):
    ids, tokens = world
    headers = {"Authorization": f"Bearer {tokens[caller]}"} if tokens[caller] else {}
    response = client.request(method, template.format(**ids), headers=headers, json=BODIES.get(template))
    expected = {"owner": owner_status, "other user": 404}.get(caller, 401)
    assert response.status_code == expected, response.text
    if caller == "owner":
        return
    assert response.json()["error"]["code"] == ("not_found" if expected == 404 else "unauthorized")
    db.expire_all()
    job = db.get(Job, ids["job_id"])
    assert job is not None and (job.status, job.cancel_requested) == ("succeeded", False)
    assert storage.job_dir(ids["job_id"]).exists()
    assert db.get(ApiToken, ids["token_id"]).revoked_at is None
    assert db.scalar(select(func.count()).select_from(Generation)) == 1


@pytest.mark.parametrize(("method", "template", "_owner_status"), ID_ROUTES)
def test_an_id_that_never_existed_is_a_404(client, world, method, template, _owner_status):
    ids, tokens = world
    missing = {
        "job_id": uuid.uuid4(),
        "sample_id": 10**6,
        "token_id": 10**6,
        "generation_id": uuid.uuid4(),
        "index": 0,
        "position": 0,
    }
    if "job_id" in template and "sample_id" in template:
        missing["job_id"] = ids["job_id"]
    if "job_id" in template and "position" in template:
        missing.update(job_id=ids["job_id"], position=7)
    if "generation_id" in template and "index" in template:
        missing.update(generation_id=ids["generation_id"], index=7)
    response = client.request(
        method, template.format(**missing), headers={"Authorization": f"Bearer {tokens['owner']}"}
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"

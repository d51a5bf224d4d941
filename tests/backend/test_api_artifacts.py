"""Downloads: checkpoints of a finished job, and its sample images."""

import pytest

from backend import jobs, storage
from backend.models import Artifact, Job, JobStatus

SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
PNG = b"\x89PNG\r\n\x1a\n fake sample"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def artifact_file(job: Job, name: str, data: bytes, **fields) -> Artifact:
    """An artifact whose file was written under the job's folder, as a worker does."""
    path = storage.job_dir(job.id) / "outputs" / name
    storage.write_atomic(path, data)
    return Artifact(path=storage.relative(path), size_bytes=len(data), **fields)


def checkpoint(job: Job, step: int, dtype: str = "fp16") -> Artifact:
    return artifact_file(
        job,
        f"step{step}-{dtype}.safetensors",
        SAFETENSORS + dtype.encode(),
        kind="checkpoint",
        format="single",
        dtype=dtype,
        step=step,
    )


def sample(job: Job, step: int) -> Artifact:
    return artifact_file(job, f"sample-{step}.png", PNG, kind="sample", step=step, prompt="rufus", seed=1)


@pytest.fixture
def owner(user_factory):
    """A user and the headers that act as them."""
    user, token = user_factory("alice")
    return user, bearer(token)


def succeed(db, job: Job, artifacts: list[Artifact]) -> None:
    lease = jobs.claim_job(db, job.id)
    jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=artifacts)


def test_every_artifact_url_of_a_finished_job_downloads(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    succeed(
        db, job, [sample(job, 200), checkpoint(job, 200), checkpoint(job, 400), checkpoint(job, 400, "fp32")]
    )
    artifacts = client.get(f"/api/jobs/{job.id}", headers=headers).json()["artifacts"]
    assert [(a["kind"], a["step"], a["dtype"]) for a in artifacts] == [
        ("sample", 200, None),
        ("checkpoint", 200, "fp16"),
        ("checkpoint", 400, "fp16"),
        ("checkpoint", 400, "fp32"),
    ]
    for artifact in artifacts:
        response = client.get(artifact["url"], headers=headers)
        assert response.status_code == 200, artifact["url"]
        assert len(response.content) == artifact["size_bytes"]


def test_checkpoint_defaults_to_the_last_fp16_single_file(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 200), checkpoint(job, 400), checkpoint(job, 400, "fp32")])
    response = client.get(f"/api/jobs/{job.id}/checkpoint", headers=headers)
    assert response.status_code == 200
    assert response.content == SAFETENSORS + b"fp16"
    assert response.headers["content-type"] == "application/octet-stream"
    filename = f"dreambooth-{job.id.hex[:8]}-step400-fp16.safetensors"
    assert response.headers["content-disposition"] == f'attachment; filename="{filename}"'

    response = client.get(f"/api/jobs/{job.id}/checkpoint", params={"dtype": "fp32"}, headers=headers)
    assert response.content == SAFETENSORS + b"fp32"
    response = client.get(f"/api/jobs/{job.id}/checkpoint", params={"step": 200}, headers=headers)
    assert "-step200-fp16" in response.headers["content-disposition"]


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"dtype": "fp32"}, 404, None),
        ({"format": "lora"}, 404, None),
        ({"format": "diffusers"}, 404, None),
        ({"step": 300}, 404, None),
        ({"format": "ckpt"}, 422, "format"),
        ({"dtype": "bf16"}, 422, "dtype"),
        ({"step": -1}, 422, "step"),
    ],
)
def test_checkpoint_that_does_not_exist(client, db, make_job, owner, params, status, field):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400)])
    response = client.get(f"/api/jobs/{job.id}/checkpoint", params=params, headers=headers)
    assert response.status_code == status
    assert response.json()["error"].get("field") == field


def test_checkpoint_of_an_unfinished_job_is_a_conflict(client, make_job, owner):
    user, headers = owner
    job = make_job(user)
    response = client.get(f"/api/jobs/{job.id}/checkpoint", headers=headers)
    assert response.status_code == 409
    assert "queued" in response.json()["error"]["message"]


def test_sample_is_served_as_png(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [sample(job, 100), checkpoint(job, 100)])
    sample_id, checkpoint_id = (a.id for a in jobs.get_job(db, user, job.id).artifacts)
    response = client.get(f"/api/jobs/{job.id}/samples/{sample_id}", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png" and response.content == PNG
    other = make_job(user)
    for path in (
        f"{job.id}/samples/{checkpoint_id}",
        f"{job.id}/samples/9999",
        f"{other.id}/samples/{sample_id}",
    ):
        assert client.get(f"/api/jobs/{path}", headers=headers).status_code == 404

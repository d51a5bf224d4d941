"""Downloads: checkpoints of a finished job (single files and diffusers zips), and its sample images."""

import json
import logging
import shutil
import threading
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from backend import exports, jobs, storage
from backend.models import Artifact, Job, JobStatus

SAFETENSORS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
PNG = b"\x89PNG\r\n\x1a\n fake sample"
# note: every byte differs from its neighbours, so a wrong range shows
BIG = bytes(i % 251 for i in range(1000))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def artifact_file(job: Job, name: str, data: bytes, **fields) -> Artifact:
    """An artifact whose file was written under the job's folder, as a worker does."""
    path = storage.job_dir(job.id) / "outputs" / name
    storage.write_atomic(path, data)
    return Artifact(path=storage.relative(path), size_bytes=len(data), **fields)


def checkpoint(job: Job, step: int, dtype: str = "fp16", data: bytes | None = None) -> Artifact:
    return artifact_file(
        job,
        f"step{step}-{dtype}.safetensors",
        data or SAFETENSORS + dtype.encode(),
        kind="checkpoint",
        format="single",
        dtype=dtype,
        step=step,
    )


def pipeline(job: Job, step: int, source: Path) -> Artifact:
    """A trained pipeline folder (a copy of `source`) under the job's folder, as the worker records it."""
    folder = storage.job_dir(job.id) / "output" / "pipeline"
    shutil.copytree(source, folder)
    size = sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
    return Artifact(
        kind="pipeline", path=storage.relative(folder), size_bytes=size, step=step, format="diffusers", dtype="fp32"
    )


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers pipeline folder of the builtin tiny model (PNDM scheduler, fp32 safetensors weights)."""
    from worker.dreambooth.tiny import make_model

    return make_model(tmp_path_factory.mktemp("tiny") / "pipeline")


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


def test_every_artifact_url_of_a_finished_job_downloads(client, db, make_job, owner, tiny_pipeline):
    user, headers = owner
    job = make_job(user)
    succeed(
        db,
        job,
        [
            sample(job, 200),
            checkpoint(job, 200),
            checkpoint(job, 400),
            checkpoint(job, 400, "fp32"),
            pipeline(job, 400, tiny_pipeline),
        ],
    )
    artifacts = client.get(f"/api/jobs/{job.id}", headers=headers).json()["artifacts"]
    assert [(a["kind"], a["step"], a["dtype"]) for a in artifacts] == [
        ("sample", 200, None),
        ("checkpoint", 200, "fp16"),
        ("checkpoint", 400, "fp16"),
        ("checkpoint", 400, "fp32"),
        ("pipeline", 400, "fp32"),
    ]
    for artifact in artifacts:
        response = client.get(artifact["url"], headers=headers)
        assert response.status_code == 200, artifact["url"]
        if artifact["kind"] != "pipeline":  # note: a pipeline's size is its folder's; its download is a zip
            assert len(response.content) == artifact["size_bytes"]


def test_checkpoint_defaults_to_the_last_fp16_single_file(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 200), checkpoint(job, 400), checkpoint(job, 400, "fp32")])
    response = client.get(f"/api/jobs/{job.id}/checkpoint", headers=headers)
    assert response.status_code == 200
    assert response.content == SAFETENSORS + b"fp16"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="rufus-dog-step400-fp16.safetensors"'
    assert response.headers["content-length"] == str(len(SAFETENSORS) + 4)

    response = client.get(f"/api/jobs/{job.id}/checkpoint", params={"dtype": "fp32"}, headers=headers)
    assert response.content == SAFETENSORS + b"fp32"
    response = client.get(f"/api/jobs/{job.id}/checkpoint", params={"step": 200}, headers=headers)
    assert 'filename="rufus-dog-step200-fp16.safetensors"' in response.headers["content-disposition"]


@pytest.mark.parametrize(
    ("params", "status", "field", "message"),
    [
        ({"dtype": "fp32"}, 404, None, "no fp32 single-file checkpoint at step 400"),
        ({"format": "lora"}, 404, None, "this job was trained without LoRA"),
        ({"format": "lora_kohya", "step": 200}, 404, None, "this job was trained without LoRA"),
        ({"format": "diffusers"}, 404, None, "this job kept no diffusers pipeline"),
        ({"step": 300}, 404, None, "no checkpoint at step 300; kept steps: 200, 400"),
        ({"format": "ckpt"}, 422, "format", "format"),
        ({"dtype": "bf16"}, 422, "dtype", "dtype"),
        ({"step": -1}, 422, "step", "step"),
    ],
)
def test_checkpoint_that_does_not_exist(client, db, make_job, owner, params, status, field, message):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 200), checkpoint(job, 400)])
    response = client.get(f"/api/jobs/{job.id}/checkpoint", params=params, headers=headers)
    assert response.status_code == status
    assert response.json()["error"].get("field") == field
    assert message in response.json()["error"]["message"]


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


def test_interrupted_download_resumes_with_a_range(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400, data=BIG)])
    url = f"/api/jobs/{job.id}/checkpoint"
    full = client.get(url, headers=headers)
    assert full.headers["accept-ranges"] == "bytes" and full.content == BIG

    part = client.get(url, headers={**headers, "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == BIG[100:200]
    assert part.headers["content-range"] == "bytes 100-199/1000"
    assert part.headers["content-length"] == "100"

    rest = client.get(url, headers={**headers, "Range": "bytes=900-", "If-Range": full.headers["etag"]})
    assert rest.status_code == 206 and rest.content == BIG[900:]
    # note: a file that changed since (another ETag) comes whole, never as a piece of the new one
    changed = client.get(url, headers={**headers, "Range": "bytes=900-", "If-Range": '"stale"'})
    assert changed.status_code == 200 and changed.content == BIG

    beyond = client.get(url, headers={**headers, "Range": "bytes=1000-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == "bytes */1000"


def test_etag_is_stable_and_if_none_match_answers_304(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400, data=BIG)])
    url = f"/api/jobs/{job.id}/checkpoint"
    etag = client.get(url, headers=headers).headers["etag"]
    assert client.get(url, headers=headers).headers["etag"] == etag
    for tags in (etag, f'"other", W/{etag}', "*"):
        response = client.get(url, headers={**headers, "If-None-Match": tags})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    assert client.get(url, headers={**headers, "If-None-Match": '"other"'}).status_code == 200


def test_diffusers_zip_of_the_pipeline_with_ddim_and_fp16_weights(client, db, make_job, owner, tiny_pipeline):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400), pipeline(job, 400, tiny_pipeline)])
    url = f"/api/jobs/{job.id}/checkpoint?format=diffusers"
    response = client.get(url, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    disposition = 'attachment; filename="rufus-dog-step400-fp16-diffusers.zip"'
    assert response.headers["content-disposition"] == disposition
    assert response.headers["content-length"] == str(len(response.content))

    folder = "rufus-dog-step400-fp16-diffusers"
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        scheduler = json.loads(archive.read(f"{folder}/scheduler/scheduler_config.json"))
        index = json.loads(archive.read(f"{folder}/model_index.json"))
        unet = archive.read(f"{folder}/unet/diffusion_pytorch_model.safetensors")
    assert scheduler["_class_name"] == "DDIMScheduler" and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    header = json.loads(unet[8 : 8 + int.from_bytes(unet[:8], "little")])
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F16"}

    part = client.get(url, headers={**headers, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == response.content[100:200]
    fp32 = client.get(url + "&dtype=fp32&step=400", headers=headers)
    assert fp32.status_code == 200 and len(fp32.content) > len(response.content)
    assert 'filename="rufus-dog-step400-fp32-diffusers.zip"' in fp32.headers["content-disposition"]
    exported = storage.job_dir(job.id) / "exports"
    assert sorted(path.name for path in exported.iterdir() if not path.name.startswith(".")) == [
        "step400-diffusers-fp16.zip",
        "step400-diffusers-fp32.zip",
    ]


def test_simultaneous_requests_build_an_export_once(client, db, make_job, owner, tiny_pipeline, monkeypatch, caplog):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400), pipeline(job, 400, tiny_pipeline)])
    builds = []

    def slow_build(*args, **kwargs):
        builds.append(threading.current_thread().name)
        time.sleep(0.5)  # note: long enough that the other request arrives while this one builds
        build_diffusers_zip(*args, **kwargs)

    build_diffusers_zip = exports.build_diffusers_zip
    monkeypatch.setattr(exports, "build_diffusers_zip", slow_build)
    caplog.set_level(logging.INFO, logger="backend.exports")
    responses = []

    def download():
        responses.append(client.get(f"/api/jobs/{job.id}/checkpoint?format=diffusers", headers=headers))

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in responses] == [200, 200]
    assert responses[0].content == responses[1].content
    assert responses[0].headers["etag"] == responses[1].headers["etag"]
    assert len(builds) == 1
    assert len([record for record in caplog.records if record.getMessage().startswith("built ")]) == 1


def test_another_users_checkpoint_is_not_found(client, db, make_job, owner, user_factory, tiny_pipeline):
    user, _headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400), pipeline(job, 400, tiny_pipeline)])
    _other, token = user_factory("mallory")
    for params in ({}, {"format": "diffusers"}, {"format": "lora"}):
        response = client.get(f"/api/jobs/{job.id}/checkpoint", params=params, headers=bearer(token))
        assert response.status_code == 404
        assert "LoRA" not in response.json()["error"]["message"]
    assert not (storage.job_dir(job.id) / "exports").exists()


def test_checkpoint_whose_file_is_gone_is_not_found(client, db, make_job, owner, tiny_pipeline):
    user, headers = owner
    job = make_job(user)
    succeed(db, job, [checkpoint(job, 400), pipeline(job, 400, tiny_pipeline)])
    for folder in ("output", "outputs"):
        shutil.rmtree(storage.job_dir(job.id) / folder)
    for params in ({}, {"format": "diffusers"}):
        response = client.get(f"/api/jobs/{job.id}/checkpoint", params=params, headers=headers)
        assert response.status_code == 404, params
        assert "no longer on the server" in response.json()["error"]["message"]

"""Bad or excessive requests get a clear 4xx and change nothing: body size, quotas, idempotency,
mass assignment, user file names, prompt lengths, a failing disk."""

import errno
import json
import uuid

import pytest
from sqlalchemy import func, select

from backend import storage
from backend.models import Artifact, Job, Photo
from backend.settings import get_settings
from tests.conftest import waiting_messages

DOG = {"instance_prompt": "a photo of rufus the dog"}


def count(db, table) -> int:
    return db.scalar(select(func.count()).select_from(table))


def stored_files(data_dir) -> list:
    return [path for path in (data_dir / "jobs").rglob("*") if path.is_file()]


def assert_nothing_changed(db, data_dir, broker) -> None:
    assert count(db, Job) == 0 and count(db, Photo) == 0
    assert stored_files(data_dir) == []
    assert waiting_messages(broker) == 0


# ── request body size ────────────────────────────────────────────────────────────────────────


@pytest.fixture
def small_body_client(monkeypatch):
    """A client of an app that accepts request bodies of at most 64 KiB."""
    from fastapi.testclient import TestClient

    from backend.main import create_app

    monkeypatch.setattr(get_settings(), "max_request_bytes", 64 * 1024)
    with TestClient(create_app()) as client:
        yield client


def test_a_body_over_the_limit_is_refused_even_without_content_length(
    small_body_client, auth_headers, db, data_dir, broker
):
    def multipart_stream():
        yield b'--b\r\nContent-Disposition: form-data; name="photos"; filename="a.jpg"\r\n\r\n'
        for _ in range(1024):  # 1 MiB of photo, announced by no Content-Length
            yield b"x" * 1024

    headers = {**auth_headers, "Content-Type": "multipart/form-data; boundary=b"}
    response = small_body_client.post("/api/jobs", content=multipart_stream(), headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert_nothing_changed(db, data_dir, broker)


def test_a_body_announced_over_the_limit_is_refused_before_reading(small_body_client, auth_headers):
    headers = {**auth_headers, "Content-Type": "text/plain"}
    response = small_body_client.post("/api/jobs", content=b"x" * 100_000, headers=headers)
    assert response.status_code == 413 and "MiB" in response.json()["error"]["message"]


def test_a_body_under_the_limit_passes(small_body_client, auth_headers, photo_bytes):
    files = [("photos", ("a.png", photo_bytes(), "image/png"))]
    response = small_body_client.post(
        "/api/jobs", data={"settings": json.dumps(DOG)}, files=files, headers=auth_headers
    )
    assert response.status_code == 202


# ── quotas ───────────────────────────────────────────────────────────────────────────────────


def test_too_many_active_jobs_is_a_429_until_one_ends(client, post_job, auth_headers, db, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_active_jobs_per_user", 2)
    first, _second = post_job().json(), post_job().json()
    refused = post_job()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "limit_exceeded" and "cancel one" in refused.json()["error"]["message"]
    assert count(db, Job) == 2
    client.post(f"/api/jobs/{first['id']}/cancel", headers=auth_headers)
    assert post_job().status_code == 202


def test_the_active_job_limit_is_per_user(post_job, user_factory, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_active_jobs_per_user", 1)
    assert post_job().status_code == 202
    _bob, token = user_factory("bob")
    assert post_job(headers={"Authorization": f"Bearer {token}"}).status_code == 202


def test_storage_over_the_quota_is_a_429(post_job, db, monkeypatch):
    job_id = post_job().json()["id"]
    used = db.scalar(select(func.sum(Photo.size_bytes)))
    assert used > 0
    db.add(Artifact(job_id=uuid.UUID(job_id), kind="checkpoint", path="x", size_bytes=10_000, step=1))
    db.commit()
    monkeypatch.setattr(get_settings(), "max_storage_bytes_per_user", used + 10_000 + 100)
    refused = post_job()
    assert refused.status_code == 429 and "delete jobs" in refused.json()["error"]["message"]
    assert count(db, Job) == 1


# ── idempotency ──────────────────────────────────────────────────────────────────────────────


def test_a_retried_post_with_the_same_idempotency_key_returns_the_same_job(post_job, auth_headers, db, broker):
    headers = {**auth_headers, "Idempotency-Key": "upload-7f3a"}
    first = post_job(headers=headers)
    again = post_job(headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert count(db, Job) == 1 and count(db, Photo) == 3
    assert waiting_messages(broker) == 1
    assert post_job(headers={**auth_headers, "Idempotency-Key": "another"}).json()["id"] != first.json()["id"]


def test_idempotency_keys_are_per_user(post_job, auth_headers, user_factory):
    _bob, token = user_factory("bob")
    mine = post_job(headers={**auth_headers, "Idempotency-Key": "k"}).json()
    theirs = post_job(headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k"}).json()
    assert mine["id"] != theirs["id"]


def test_an_overlong_idempotency_key_is_named(post_job, auth_headers, db):
    response = post_job(headers={**auth_headers, "Idempotency-Key": "k" * 201})
    assert response.status_code == 422 and response.json()["error"]["field"] == "idempotency-key"
    assert count(db, Job) == 0


# ── what a client may not set ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("field", ["status", "owner_id", "attempts", "lease_token", "id"])
def test_job_state_cannot_be_set_through_the_settings(post_job, db, data_dir, broker, field):
    response = post_job({**DOG, field: "succeeded"})
    assert response.status_code == 422 and response.json()["error"]["field"] == f"settings.{field}"
    assert_nothing_changed(db, data_dir, broker)


def test_extra_form_fields_change_nothing(client, auth_headers, photo_bytes, user_factory, db):
    bob, _token = user_factory("bob")
    files = [("photos", ("a.png", photo_bytes(), "image/png"))]
    form = {"settings": json.dumps(DOG), "status": "succeeded", "owner_id": str(bob.id), "attempts": "9"}
    job = client.post("/api/jobs", data=form, files=files, headers=auth_headers).json()
    assert (job["status"], job["attempts"]) == ("queued", 0)
    assert db.scalar(select(Job.owner_id)) != bob.id


@pytest.mark.parametrize("name", ["../../x.jpg", "/etc/passwd", "..\\..\\x.jpg", "a\x00b.jpg", "ç" * 300 + ".jpg"])
def test_user_file_names_never_become_paths(client, auth_headers, photo_bytes, db, data_dir, name):
    files = [("photos", (name, photo_bytes("JPEG"), "image/jpeg"))]
    response = client.post("/api/jobs", data={"settings": json.dumps(DOG)}, files=files, headers=auth_headers)
    assert response.status_code == 202, response.text
    [photo] = db.scalars(select(Photo)).all()
    job_dir = storage.job_dir(uuid.UUID(response.json()["id"]))
    assert photo.path == storage.relative(job_dir / "instance-photos" / "0000.jpg")
    assert [path.relative_to(data_dir / "jobs").parts[1:] for path in stored_files(data_dir)] == [
        ("instance-photos", "0000.jpg")
    ]


@pytest.mark.parametrize("field", ["instance_prompt", "class_prompt"])
def test_overlong_prompts_are_named(post_job, db, field):
    response = post_job({**DOG, "with_prior_preservation": True, "class_prompt": "a dog", field: "x" * 501})
    assert response.status_code == 422 and response.json()["error"]["field"] == f"settings.{field}"
    assert count(db, Job) == 0


# ── a failing disk ───────────────────────────────────────────────────────────────────────────


def test_a_full_disk_at_upload_is_a_507_and_keeps_nothing(post_job, db, data_dir, broker, monkeypatch):
    write = storage.write_atomic
    calls = []

    def fail_on_second_photo(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(storage, "write_atomic", fail_on_second_photo)
    response = post_job()
    assert response.status_code == 507
    assert response.json()["error"]["code"] == "storage_error"
    assert_nothing_changed(db, data_dir, broker)

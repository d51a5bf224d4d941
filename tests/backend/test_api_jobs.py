"""/api/jobs: create, list, read, cancel and delete; validation, authentication and ownership."""

import io
import json
import logging
import uuid
from datetime import timedelta

import pytest
from PIL import ExifTags, Image
from sqlalchemy import func, select, update

from backend import jobs, queue, routing, storage
from backend.models import ApiToken, Job, Photo, utcnow
from backend.queue import TRAIN_TASK, make_celery
from backend.settings import TINY_MODEL, Settings, get_settings

DOG = {"instance_prompt": "a photo of rufus the dog"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def queued_messages(broker) -> list[dict]:
    """The Celery messages waiting in Redis for the GPU workers, in every queue (backend/routing.py)."""
    return [json.loads(raw) for name in routing.all_queues() for raw in broker.lrange(name, 0, -1)]


def stored_files(data_dir) -> list:
    return [path for path in (data_dir / "jobs").rglob("*") if path.is_file()]


def count(db, table) -> int:
    return db.scalar(select(func.count()).select_from(table))


def jpeg_with_exif() -> bytes:
    """A 120x80 JPEG, left half red, that EXIF says to show turned a quarter clockwise; with GPS data."""
    image = Image.new("RGB", (120, 80), "blue")
    image.paste((255, 0, 0), (0, 0, 60, 80))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


# ── create ───────────────────────────────────────────────────────────────────────────────────


def test_create_stores_the_photos_and_queues_the_job(post_job, db, data_dir, broker):
    response = post_job({**DOG, "preset": "face"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/api/jobs/{job['id']}"
    assert (job["status"], job["phase"], job["photo_count"], job["artifacts"]) == ("queued", None, 3, [])
    total = job["settings"]["max_train_steps"]
    assert job["progress"] == {"step": 0, "total_steps": total, "loss": None, "eta_seconds": None}
    settings = job["settings"]
    assert (settings["learning_rate"], settings["max_train_steps"], settings["train_batch_size"]) == (
        1e-6,
        1200,
        2,
    )
    assert settings["with_prior_preservation"] and settings["class_prompt"] == "a photo of a person"
    assert settings["base_model"] == TINY_MODEL
    assert count(db, Job) == 1 and count(db, Photo) == 3
    assert len(stored_files(data_dir)) == 3
    [message] = queued_messages(broker)
    assert message["headers"]["task"] == TRAIN_TASK and job["id"] in message["headers"]["argsrepr"]


def test_request_values_override_the_preset(post_job):
    settings = post_job({**DOG, "preset": "face", "learning_rate": 2e-6, "base_model": TINY_MODEL}).json()["settings"]
    assert (settings["learning_rate"], settings["max_train_steps"]) == (2e-6, 1200)


def test_photos_are_stored_upright_and_without_metadata(post_job, db):
    original = Image.open(io.BytesIO(jpeg_with_exif()))
    assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the test photo does carry a position
    post_job(photos=[jpeg_with_exif()])
    photo = db.scalars(select(Photo)).one()
    stored = Image.open(storage.resolve(photo.path))
    assert stored.format == "JPEG" and stored.size == (80, 120) == (photo.width, photo.height)
    assert dict(stored.getexif()) == {} and "exif" not in stored.info
    red, blue = stored.getpixel((40, 10)), stored.getpixel((40, 110))
    assert red[0] > 200 and red[2] < 50 and blue[2] > 200 and blue[0] < 50


def test_class_photos_are_stored_apart(post_job, db, photo_bytes):
    post_job(class_photos=[photo_bytes("JPEG"), photo_bytes("WEBP")])
    kinds = db.scalars(select(Photo.kind).order_by(Photo.id)).all()
    assert kinds == ["instance"] * 3 + ["class"] * 2


def test_a_job_is_kept_queued_when_the_broker_is_down(post_job, db, monkeypatch, caplog):
    dead = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))
    monkeypatch.setattr(queue, "client", lambda: dead)
    with caplog.at_level(logging.ERROR):
        response = post_job()
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert count(db, Job) == 1
    assert "could not reach the broker" in caplog.text


TEXT_FILE = b"this is not a photo"


@pytest.mark.parametrize(
    ("settings", "photos", "field"),
    [
        ("{not json", None, "settings"),
        ('["a list"]', None, "settings"),
        ({**DOG, "sks": 1}, None, "settings.sks"),
        ({"preset": "object"}, None, "settings.instance_prompt"),
        ({**DOG, "learning_rate": 1.0}, None, "settings.learning_rate"),
        ({**DOG, "resolution": 500}, None, "settings.resolution"),
        ({**DOG, "with_prior_preservation": True}, None, "settings.class_prompt"),
        ({**DOG, "preset": "face", "class_prompt": None}, None, "settings.class_prompt"),
        ({**DOG, "preset": "dog"}, None, "settings.preset"),
        ({**DOG, "base_model": "someone/unknown-model"}, None, "settings.base_model"),
        (DOG, "text", "photos"),
        (DOG, "none", "photos"),
        (DOG, "too many", "photos"),
    ],
)
def test_invalid_requests_name_the_field_and_store_nothing(
    post_job, photo_bytes, db, data_dir, broker, settings, photos, field
):
    files = {
        None: None,
        "text": [photo_bytes(), TEXT_FILE],
        "none": [],
        "too many": [photo_bytes()] * (get_settings().max_photos + 1),
    }[photos]
    response = post_job(settings, photos=files)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", field)
    assert error["message"]
    assert count(db, Job) == 0 and count(db, Photo) == 0
    assert stored_files(data_dir) == []
    assert queued_messages(broker) == []


def test_a_missing_settings_field_is_named(client, auth_headers, photo_bytes, db):
    response = client.post("/api/jobs", files=[("photos", ("a.png", photo_bytes(), "image/png"))], headers=auth_headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "settings"
    assert count(db, Job) == 0


# ── read, list ───────────────────────────────────────────────────────────────────────────────


def test_get_returns_the_job(client, post_job, auth_headers):
    created = post_job().json()
    response = client.get(f"/api/jobs/{created['id']}", headers=auth_headers)
    assert response.status_code == 200
    assert response.json() == created


def test_list_is_newest_first_paginated_and_only_the_callers(client, post_job, auth_headers, user_factory):
    ids = [post_job().json()["id"] for _ in range(3)]
    _bob, token = user_factory("bob")
    post_job(headers=bearer(token))

    page = client.get("/api/jobs", headers=auth_headers).json()
    assert [job["id"] for job in page["items"]] == ids[::-1]
    assert (page["total"], page["limit"], page["offset"]) == (3, 20, 0)

    page = client.get("/api/jobs", params={"limit": 2, "offset": 1}, headers=auth_headers).json()
    assert [job["id"] for job in page["items"]] == ids[1::-1]
    assert page["total"] == 3


@pytest.mark.parametrize(
    ("params", "field"), [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"offset": -1}, "offset")]
)
def test_list_refuses_bad_pages(client, auth_headers, params, field):
    response = client.get("/api/jobs", params=params, headers=auth_headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_a_malformed_job_id_is_named(client, auth_headers):
    response = client.get("/api/jobs/not-a-uuid", headers=auth_headers)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "job_id"


# ── cancel, delete ───────────────────────────────────────────────────────────────────────────


def test_a_poller_with_the_etag_gets_304_until_the_job_changes(client, post_job, auth_headers):
    job_id = post_job().json()["id"]
    first = client.get(f"/api/jobs/{job_id}", headers=auth_headers)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"')
    same = client.get(f"/api/jobs/{job_id}", headers={**auth_headers, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["ETag"] == etag
    listed = client.get(f"/api/jobs/{job_id}", headers={**auth_headers, "If-None-Match": f'"other", W/{etag}'})
    assert listed.status_code == 304
    client.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers)
    changed = client.get(f"/api/jobs/{job_id}", headers={**auth_headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["ETag"] != etag
    # note: someone else's job is as missing as ever, whatever ETag the request guesses
    stranger = client.get(f"/api/jobs/{uuid.uuid4()}", headers={**auth_headers, "If-None-Match": "*"})
    assert stranger.status_code == 404


def test_cancel_ends_a_queued_job_at_once_and_is_idempotent(client, post_job, auth_headers):
    job_id = post_job().json()["id"]
    first = client.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers)
    assert first.status_code == 202
    assert first.json()["status"] == "cancelled" and first.json()["finished_at"]
    second = client.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers)
    assert second.status_code == 202 and second.json() == first.json()


def test_cancel_flags_a_running_job(client, post_job, auth_headers, db):
    job_id = post_job().json()["id"]
    jobs.claim_job(db, uuid.UUID(job_id))
    job = client.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers).json()
    assert (job["status"], job["cancel_requested"]) == ("running", True)


def test_delete_removes_the_job_and_its_files(client, post_job, auth_headers, db, data_dir):
    job_id = post_job().json()["id"]
    assert stored_files(data_dir)
    response = client.delete(f"/api/jobs/{job_id}", headers=auth_headers)
    assert response.status_code == 204 and response.content == b""
    assert stored_files(data_dir) == [] and not storage.job_dir(uuid.UUID(job_id)).exists()
    assert count(db, Job) == 0 and count(db, Photo) == 0
    assert client.get(f"/api/jobs/{job_id}", headers=auth_headers).status_code == 404
    assert client.delete(f"/api/jobs/{job_id}", headers=auth_headers).status_code == 404


# ── authentication and ownership ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize("case", ["missing", "unknown", "not bearer", "revoked", "expired"])
def test_requests_without_a_valid_token_are_refused(client, user_factory, db, case):
    _user, token = user_factory()
    headers = {
        "missing": {},
        "unknown": bearer("dbs_" + "x" * 43),
        "not bearer": {"Authorization": f"Basic {token}"},
        "revoked": bearer(token),
        "expired": bearer(token),
    }[case]
    if case in ("revoked", "expired"):
        column = "revoked_at" if case == "revoked" else "expires_at"
        db.execute(update(ApiToken).values({column: utcnow() - timedelta(seconds=1)}))
        db.commit()
    response = client.get("/api/jobs", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_token_with_a_future_expiry_works(client, user_factory, db):
    _user, token = user_factory()
    db.execute(update(ApiToken).values(expires_at=utcnow() + timedelta(hours=1)))
    db.commit()
    assert client.get("/api/jobs", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("POST", "/cancel"),
        ("DELETE", ""),
        ("GET", "/checkpoint"),
        ("GET", "/samples/1"),
        ("GET", "/events"),
    ],
)
def test_another_users_job_is_as_missing_as_a_job_that_never_was(
    client, post_job, user_factory, auth_headers, method, suffix
):
    job_id = post_job().json()["id"]
    _mallory, token = user_factory("mallory")
    for some_id in (job_id, str(uuid.uuid4())):
        response = client.request(method, f"/api/jobs/{some_id}{suffix}", headers=bearer(token))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/jobs/{job_id}", headers=auth_headers).json()["status"] == "queued"

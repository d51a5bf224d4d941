"""A job's stored instance photos over HTTP (GET /api/jobs/{id}/photos/{position}) and their URLs in the job."""

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend import jobs, storage
from backend.models import Job, JobStatus, utcnow
from backend.settings import get_settings


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def job(client, broker, user_factory, photo_bytes) -> tuple[dict, dict[str, str]]:
    """Alice's queued job of three photos, the second captioned and trained with its caption, and her headers."""
    _alice, token = user_factory("alice")
    colours = ("steelblue", "orange", "seagreen")
    files = [("photos", (f"p{i}.png", photo_bytes(size=(96, 64), color=c), "image/png")) for i, c in enumerate(colours)]
    settings = {"instance_prompt": "a photo of rufus dog", "caption_mode": "instance_plus_caption"}
    form = {"settings": json.dumps(settings), "captions": json.dumps({"p1.png": "on a sofa"})}
    response = client.post("/api/jobs", data=form, files=files, headers=bearer(token))
    assert response.status_code == 202, response.text
    return response.json(), bearer(token)


def test_the_owner_gets_each_stored_photo_inline(client, db, job):
    created, headers = job
    stored = db.get(Job, created["id"]).photos
    for photo in created["photos"]:
        assert photo["url"] == f"/api/jobs/{created['id']}/photos/{photo['position']}"
        response = client.get(photo["url"], headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert response.headers["content-disposition"].startswith("inline;")
        assert response.content == storage.resolve(stored[photo["position"]].path).read_bytes()
    assert [photo["prompt"] for photo in created["photos"]] == [
        "a photo of rufus dog",
        "a photo of rufus dog, on a sofa",
        "a photo of rufus dog",
    ]


def test_another_users_job_and_an_unknown_position_are_not_found(client, job, user_factory):
    created, headers = job
    _mallory, mallory_token = user_factory("mallory")
    url = f"/api/jobs/{created['id']}/photos/0"
    other = client.get(url, headers=bearer(mallory_token))
    assert other.status_code == 404 and other.json()["error"]["message"] == f"job {created['id']} not found"
    missing = client.get(f"/api/jobs/{created['id']}/photos/3", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["message"] == f"job {created['id']} has no photo 3"


def test_purged_photos_are_a_404_that_says_so_and_lose_their_url(client, db, job, monkeypatch):
    created, headers = job
    monkeypatch.setattr(get_settings(), "photo_retention_days", 1)
    jobs.finish_job(db, jobs.claim_job(db, created["id"]), JobStatus.succeeded, artifacts=[])
    db.execute(update(Job).where(Job.id == created["id"]).values(finished_at=utcnow() - timedelta(days=2)))
    db.commit()
    assert [str(job_id) for job_id in jobs.purge_expired_photos(db)] == [created["id"]]

    response = client.get(created["photos"][0]["url"], headers=headers)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert "deleted on" in response.json()["error"]["message"]
    assert "photo retention rule" in response.json()["error"]["message"]
    job = client.get(f"/api/jobs/{created['id']}", headers=headers).json()
    assert [photo["url"] for photo in job["photos"]] == [None, None, None]
    assert job["photos"][1]["caption"] == "on a sofa"  # what the job trained on stays


def test_if_none_match_answers_304_with_the_etag(client, job):
    created, headers = job
    url = created["photos"][0]["url"]
    etag = client.get(url, headers=headers).headers["etag"]
    response = client.get(url, headers={**headers, "If-None-Match": etag})
    assert response.status_code == 304 and response.content == b"" and response.headers["etag"] == etag
    assert client.get(url, headers={**headers, "If-None-Match": '"other"'}).status_code == 200

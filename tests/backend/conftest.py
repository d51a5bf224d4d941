"""Helpers for the backend tests: jobs made over HTTP or straight through the job service."""

import json
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.orm import Session

from backend import jobs
from backend.images import ingest_photo
from backend.models import Job, User
from backend.training_settings import TrainingSettings

DOG = {"instance_prompt": "a photo of rufus the dog"}


@pytest.fixture
def post_job(client, auth_headers, photo_bytes, broker) -> Callable[..., httpx.Response]:
    """POSTs /api/jobs: `post_job(settings=..., photos=[bytes, ...], headers=...)`; three PNGs by default."""

    def post(
        settings: dict | str = DOG,
        photos: list[bytes] | None = None,
        class_photos: list[bytes] = (),
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        photos = [photo_bytes() for _ in range(3)] if photos is None else photos
        files = [("photos", (f"photo{i}.png", data, "image/png")) for i, data in enumerate(photos)]
        files += [("class_photos", (f"class{i}.png", data, "image/png")) for i, data in enumerate(class_photos)]
        form = {"settings": settings if isinstance(settings, str) else json.dumps(settings)}
        return client.post("/api/jobs", data=form, files=files, headers=headers or auth_headers)

    return post


@pytest.fixture
def make_job(db: Session, user_factory, photo_bytes) -> Callable[..., Job]:
    """Creates a queued job through the job service: `make_job(owner=None)`."""

    def make(owner: User | None = None) -> Job:
        owner = owner or user_factory()[0]
        photo = ingest_photo(photo_bytes(), "photos", "photo")
        settings = TrainingSettings.model_validate(DOG).model_dump(mode="json")
        return jobs.create_job(db, owner, settings, [photo])

    return make

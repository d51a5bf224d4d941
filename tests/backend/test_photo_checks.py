"""Photo checks, face-aware crop boxes and captions, at upload: on real photos that ship inside scikit-image."""

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data as samples
from sqlalchemy import func, select

from backend.faces import detect_faces, face_crop
from backend.models import Job, Photo
from backend.photo_checks import BLUR_THRESHOLD, analyse
from backend.settings import get_settings
from formats.captions import TOKEN_LIMIT, estimate_tokens
from tests.conftest import waiting_messages

SETTINGS = {"instance_prompt": "a photo of rufus person", "resolution": 256}


def sample(name: str) -> Image.Image:
    return Image.fromarray(np.asarray(getattr(samples, name)())).convert("RGB")


def encoded(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def as_files(photos: dict[str, bytes]) -> list:
    return [
        ("photos", (name, data, "image/jpeg" if name.endswith(".jpg") else "image/png"))
        for name, data in photos.items()
    ]


# A hand-made set: three good photos, a blurred one, a near-duplicate (a smaller, recompressed astronaut) and a
# photo smaller than the 256 px resolution.
@pytest.fixture(scope="module")
def photo_set() -> dict[str, bytes]:
    astronaut = sample("astronaut")
    return {
        "astronaut.png": encoded(astronaut),
        "coffee.jpg": encoded(sample("coffee"), "JPEG", quality=95),
        "rocket.jpg": encoded(sample("rocket"), "JPEG", quality=95),
        "blurred.png": encoded(sample("camera").filter(ImageFilter.GaussianBlur(3))),
        "copy.jpg": encoded(astronaut.resize((400, 400)), "JPEG", quality=70),
        "small.png": encoded(sample("chelsea").resize((200, 133))),
    }


@pytest.fixture
def three_usable(monkeypatch):
    """The server's rule as shipped: a job needs 3 usable photos (the suite's other tests turn it off)."""
    monkeypatch.setenv("MIN_USABLE_PHOTOS", "3")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def post(client, headers, photos: dict[str, bytes], settings: dict = SETTINGS, captions: dict | None = None):
    form = {"settings": json.dumps(settings)}
    if captions is not None:
        form["captions"] = json.dumps(captions)
    return client.post("/api/jobs", data=form, files=as_files(photos), headers=headers)


def warnings_by_name(job: dict) -> dict[str, set[str]]:
    return {photo["name"]: {w["code"] for w in photo["checks"]["warnings"]} for photo in job["photos"]}


# ── the detector ─────────────────────────────────────────────────────────────────────────────


def test_the_face_in_astronaut_is_found_and_inside_its_crop():
    rgb = np.asarray(sample("astronaut"))
    [face] = detect_faces(rgb)
    left, top, right, bottom = face
    # note: her face, not the flag or the helmet: the upper middle of the photo, about a fifth of its width
    assert 150 < left < right < 300 and 40 < top < bottom < 200 and 70 < right - left < 130
    crop = face_crop(face, 512, 512, resolution=256)
    assert crop[2] - crop[0] == crop[3] - crop[1] == 256
    assert crop[0] <= left and crop[1] <= top and right <= crop[2] and bottom <= crop[3]


def test_photos_without_faces_have_none():
    for name in ("coffee", "rocket", "chelsea"):
        assert detect_faces(np.asarray(sample(name))) == [], name


def test_sharpness_tells_a_photo_from_its_blurred_copy():
    sharp = sample("astronaut")
    assert analyse(sharp).sharpness > 4 * BLUR_THRESHOLD
    assert analyse(sharp.filter(ImageFilter.GaussianBlur(2))).sharpness < BLUR_THRESHOLD


def test_token_estimate_is_cautious_about_long_prompts():
    assert estimate_tokens("a photo of rufus person") == 6  # CLIP: 5; six-letter "person" counts twice
    assert estimate_tokens("a photo of rufus person, " + "smiling " * 80) > TOKEN_LIMIT


# ── checks through the API ───────────────────────────────────────────────────────────────────


def test_the_checks_flag_the_blurred_the_duplicate_and_the_small_photo(
    client, auth_headers, broker, three_usable, photo_set
):
    response = post(client, auth_headers, photo_set)
    assert response.status_code == 202, response.text
    job = response.json()
    assert warnings_by_name(job) == {
        "astronaut.png": set(),
        "coffee.jpg": set(),
        "rocket.jpg": set(),
        "blurred.png": {"blurred"},
        "copy.jpg": {"duplicate"},
        "small.png": {"too_small"},
    }
    photos = {photo["name"]: photo for photo in job["photos"]}
    assert "astronaut.png" in photos["copy.jpg"]["checks"]["warnings"][0]["message"]
    assert [name for name, photo in photos.items() if photo["checks"]["usable"]] == [
        "astronaut.png", "coffee.jpg", "rocket.jpg", "blurred.png",
    ]  # fmt: skip
    # note: crop=auto without center_crop is random crops: no fixed box
    assert all(photo["crop_box"] is None for photo in job["photos"])
    assert client.get(f"/api/jobs/{job['id']}", headers=auth_headers).json()["photos"] == job["photos"]


def test_too_few_usable_photos_are_refused_naming_them_and_nothing_is_stored(
    client, auth_headers, broker, db, data_dir, three_usable, photo_set
):
    chosen = {name: photo_set[name] for name in ("astronaut.png", "blurred.png", "copy.jpg", "small.png")}
    response = post(client, auth_headers, chosen)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "photos" and "2 of 4 photos are usable" in error["message"]
    assert "copy.jpg: is a near-duplicate of astronaut.png" in error["message"]
    assert "small.png: 200x133 is smaller than the 256 px resolution" in error["message"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0 == db.scalar(select(func.count()).select_from(Photo))
    assert not [path for path in (data_dir / "jobs").rglob("*") if path.is_file()]
    assert waiting_messages(broker) == 0


def test_face_crops_box_the_face_and_report_photos_without_one(client, auth_headers, broker, photo_set):
    photos = {name: photo_set[name] for name in ("astronaut.png", "coffee.jpg")}
    job = post(client, auth_headers, photos, {**SETTINGS, "crop": "face"}).json()
    astronaut, coffee = job["photos"]
    [face] = astronaut["checks"]["faces"]
    box = astronaut["crop_box"]
    assert box[2] - box[0] == box[3] - box[1] >= 256
    assert box[0] <= face[0] and box[1] <= face[1] and face[2] <= box[2] and face[3] <= box[3]
    assert astronaut["checks"]["usable"] and astronaut["checks"]["warnings"] == []
    [warning] = coffee["checks"]["warnings"]
    assert warning["code"] == "no_face" and "centre-cropped" in warning["message"]
    assert not coffee["checks"]["usable"]
    assert coffee["crop_box"] == [100, 0, 500, 400]  # the centre square of 600x400


def test_the_face_presets_crop_to_faces(client, auth_headers, broker, photo_set):
    job = post(client, auth_headers, {"astronaut.png": photo_set["astronaut.png"]}, {**SETTINGS, "preset": "face"})
    assert job.json()["settings"]["crop"] == "face" and job.json()["photos"][0]["crop_box"] is not None


def test_the_preview_answers_what_the_job_stores_and_stores_nothing(client, auth_headers, broker, db, photo_set):
    settings = {**SETTINGS, "crop": "face", "caption_mode": "instance_plus_caption"}
    form = {"settings": json.dumps(settings), "captions": json.dumps({"astronaut.png": "in a space suit"})}
    files = as_files({name: photo_set[name] for name in ("astronaut.png", "coffee.jpg", "small.png")})
    preview = client.post("/api/photos/preview", data=form, files=files, headers=auth_headers)
    assert preview.status_code == 200, preview.text
    assert db.scalar(select(func.count()).select_from(Photo)) == 0
    body = preview.json()
    assert (body["usable"], body["needed"]) == (1, 0)
    assert body["photos"][0]["prompt"] == "a photo of rufus person, in a space suit"
    job = client.post("/api/jobs", data=form, files=files, headers=auth_headers).json()
    for shown, stored in zip(body["photos"], job["photos"], strict=True):
        assert {**shown, "url": f"/api/jobs/{job['id']}/photos/{shown['position']}"} == stored


def test_the_preview_needs_no_instance_prompt_yet(client, auth_headers, photo_set):
    files = as_files({"astronaut.png": photo_set["astronaut.png"]})
    preview = client.post("/api/photos/preview", data={"settings": "{}"}, files=files, headers=auth_headers)
    assert preview.status_code == 200, preview.text


# ── captions ─────────────────────────────────────────────────────────────────────────────────


def test_captions_are_stored_per_photo(client, auth_headers, broker, db, photo_set):
    photos = {name: photo_set[name] for name in ("astronaut.png", "coffee.jpg")}
    captions = {"astronaut.png": "  in a white space suit ", "coffee.jpg": ""}
    job = post(client, auth_headers, photos, {**SETTINGS, "caption_mode": "instance_plus_caption"}, captions)
    assert job.status_code == 202, job.text
    assert [photo["caption"] for photo in job.json()["photos"]] == ["in a white space suit", None]
    assert job.json()["settings"]["caption_mode"] == "instance_plus_caption"
    assert db.scalars(select(Photo.caption).order_by(Photo.position)).all() == ["in a white space suit", None]


@pytest.mark.parametrize(
    ("captions", "message"),
    [
        ({"astronaut.png": "fine", "dog.jpg": "x", "cat.jpg": "y"}, "no uploaded photo is named 'cat.jpg', 'dog.jpg'"),
        (["a list"], "must be a JSON object"),
        ({"astronaut.png": 3}, "must be a JSON object"),
        ({"astronaut.png": "x" * 1001}, "over 1000 characters for astronaut.png"),
    ],
)
def test_bad_captions_are_refused_naming_them(client, auth_headers, broker, db, photo_set, captions, message):
    response = post(client, auth_headers, {"astronaut.png": photo_set["astronaut.png"]}, captions=captions)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "captions" and message in response.json()["error"]["message"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0


def test_a_prompt_over_the_token_limit_is_reported(client, auth_headers, broker, photo_set):
    captions = {"astronaut.png": "smiling, " * 60}
    settings = {**SETTINGS, "caption_mode": "instance_plus_caption"}
    job = post(client, auth_headers, {"astronaut.png": photo_set["astronaut.png"]}, settings, captions).json()
    [warning] = job["photos"][0]["checks"]["warnings"]
    assert warning["code"] == "prompt_too_long" and f"reads the first {TOKEN_LIMIT}" in warning["message"]
    assert job["photos"][0]["checks"]["usable"]

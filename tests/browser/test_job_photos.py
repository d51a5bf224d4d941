"""The job page's photos as the trainer uses them: thumbnails with the server's crop box drawn over them, captions,
prompts and warnings, drawn once. The job is made through the API and never trains (no worker)."""

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageFilter
from playwright.sync_api import expect
from skimage import data as samples
from sqlalchemy import update

from backend.models import Job, utcnow
from tests.browser.conftest import screenshot
from tests.e2e.stack import FAST_SETTINGS, Client, Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory) -> Iterator[Stack]:
    """The API alone: the job stays queued, and its photos are all the page needs."""
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("job-photos"), workers=()) as running:
        yield running


def jpeg(image: np.ndarray, blur: float = 0) -> bytes:
    picture = Image.fromarray(image)
    if blur:
        picture = picture.filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def make_job(client: Client) -> dict:
    """A face-cropped, captioned job of a face (square), a coffee cup (landscape, no face) and a blurred cup on
    its side (portrait, no face)."""
    photos = {
        "astronaut.jpg": jpeg(samples.astronaut()),
        "coffee.jpg": jpeg(samples.coffee()),
        "sideways.jpg": jpeg(np.ascontiguousarray(np.rot90(samples.coffee())), blur=4),
    }
    settings = {**FAST_SETTINGS, "instance_prompt": "a photo of rufus person", "crop": "face"}
    form = {
        "settings": json.dumps({**settings, "caption_mode": "instance_plus_caption"}),
        "captions": json.dumps({"astronaut.jpg": "smiling, in a spacesuit"}),
    }
    files = [("photos", (name, data, "image/jpeg")) for name, data in photos.items()]
    response = client.http.post("/api/jobs", data=form, files=files)
    assert response.status_code == 202, response.text
    return response.json()


def test_the_job_page_shows_each_photo_with_its_crop_caption_and_warnings(open_page, stack, user_factory):
    _user, token = user_factory("alice")
    client = Client(stack.url, token)
    job = make_job(client)
    photos = job["photos"]
    assert photos[0]["crop_box"] and photos[1]["crop_box"] and photos[2]["crop_box"]  # no face: centre-cropped
    page = open_page(token)
    fetched = []
    page.on("request", lambda request: fetched.append(request.url) if "/photos/" in request.url else None)
    page.goto(f"{stack.url}/#/jobs/{job['id']}")

    section = page.get_by_role("region", name="Photos")
    tiles = section.locator(".job-photo")
    expect(tiles).to_have_count(3)
    expect(section.locator(".help")).to_have_text(
        "1 of 3 photos usable · each trains on the instance prompt and its caption."
    )
    page.wait_for_function("[...document.querySelectorAll('.job-photo img')].every(i => i.naturalWidth > 0)")
    for tile, photo in zip(tiles.all(), photos, strict=True):
        box = tile.locator(".crop-box")
        expect(box).to_have_attribute("data-crop-box", ",".join(map(str, photo["crop_box"])))
        shown, drawn = tile.locator("img").bounding_box(), box.bounding_box()
        scale = shown["width"] / photo["width"]
        assert shown["height"] == pytest.approx(photo["height"] * scale, abs=1)  # the whole photo, not a crop
        left, top, right, bottom = (value * scale for value in photo["crop_box"])
        assert drawn["x"] - shown["x"] == pytest.approx(left, abs=1)
        assert drawn["y"] - shown["y"] == pytest.approx(top, abs=1)
        assert drawn["width"] == pytest.approx(right - left, abs=1)
        assert drawn["height"] == pytest.approx(bottom - top, abs=1)

    astronaut, coffee, sideways = tiles.all()
    expect(astronaut.locator(".job-photo-caption")).to_have_text("Caption: smiling, in a spacesuit")
    expect(astronaut.locator(".job-photo-prompt")).to_have_text(
        "Trains on: “a photo of rufus person, smiling, in a spacesuit”"
    )
    expect(astronaut.locator(".flag")).to_have_count(0)
    expect(coffee.locator(".job-photo-caption")).to_be_hidden()
    expect(coffee.locator(".job-photo-prompt")).to_have_text("Trains on: “a photo of rufus person”")
    no_face = coffee.locator('[data-code="no_face"]')
    expect(no_face).to_have_text("no face")
    expect(no_face).to_have_attribute("title", "no face found; it will be centre-cropped")
    expect(sideways.locator(".flag")).to_have_text(["not usable", "no face", "blurred"])
    expect(sideways.locator('[data-code="blurred"]')).to_have_attribute(
        "title", photos[2]["checks"]["warnings"][1]["message"]
    )
    screenshot(page, "job-photos")

    # an update redraws the job, never the photos: the same tiles, each photo fetched once
    page.evaluate("document.querySelector('.job-photo').dataset.marker = 'first draw'")
    client.http.post(f"/api/jobs/{job['id']}/cancel")
    expect(page.locator("[data-slot=status]")).to_have_text("cancelled", timeout=10_000)
    expect(astronaut).to_have_attribute("data-marker", "first draw")
    assert sorted(fetched) == sorted(f"{stack.url}{photo['url']}" for photo in photos)


def test_purged_photos_keep_their_crops_captions_and_warnings(open_page, stack, user_factory, db):
    _user, token = user_factory("alice")
    job = make_job(Client(stack.url, token))
    db.execute(update(Job).where(Job.id == job["id"]).values(photos_purged_at=utcnow()))
    db.commit()
    page = open_page(token)
    fetched = []
    page.on("request", lambda request: fetched.append(request.url) if "/photos/" in request.url else None)
    page.goto(f"{stack.url}/#/jobs/{job['id']}")

    section = page.get_by_role("region", name="Photos")
    expect(section.locator(".help")).to_contain_text("the photo files were deleted")
    expect(section.locator(".job-photo-gone")).to_have_text(["deleted"] * 3)
    expect(section.locator(".job-photo img")).to_have_count(0)
    expect(section.locator(".crop-box").first).to_have_attribute(
        "data-crop-box", ",".join(map(str, job["photos"][0]["crop_box"]))
    )
    expect(section.locator('[data-code="no_face"]')).to_have_count(2)
    assert fetched == []

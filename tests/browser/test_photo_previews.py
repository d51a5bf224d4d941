"""The new-job page's photo previews: crop boxes drawn from the server's, its warnings, editable captions."""

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect
from skimage import data as samples

pytestmark = pytest.mark.e2e


def upload(name: str, image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return {"name": name, "mimeType": "image/png", "buffer": buffer.getvalue()}


def test_crop_previews_come_from_the_server_and_captions_are_editable(open_page, stack, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    page.get_by_text("Advanced settings").click()
    page.locator("#f-crop").select_option("face")
    page.locator("#f-caption_mode").select_option("instance_plus_caption")
    page.locator("#f-instance_prompt").fill("a photo of rufus person")
    files = [upload("astronaut.png", samples.astronaut()), upload("coffee.png", samples.coffee())]
    page.locator("#photo-input").set_input_files(files)
    astronaut, coffee = page.locator(".thumb canvas").all()
    expect(astronaut).not_to_have_attribute("data-crop-box", "")
    resolution = page.locator("#f-resolution").input_value()
    settings = f'{{"crop": "face", "resolution": {resolution}}}'
    answer = httpx.post(
        f"{stack.url}/api/photos/preview", headers={"Authorization": f"Bearer {token}"}, data={"settings": settings},
        files=[("photos", (f["name"], f["buffer"], "image/png")) for f in files],
    ).json()  # fmt: skip
    boxes = [",".join(map(str, photo["crop_box"])) for photo in answer["photos"]]
    expect(astronaut).to_have_attribute("data-crop-box", boxes[0])
    expect(coffee).to_have_attribute("data-crop-box", boxes[1])
    expect(page.locator(".thumb").nth(1).locator('[data-code="no_face"]')).to_be_visible()

    caption = page.get_by_label("Caption of astronaut.png")
    caption.fill("smiling, " * 60)
    caption.press("Tab")  # the change event: the server previews again, with the caption
    expect(page.locator(".thumb").first.locator('[data-code="prompt_too_long"]')).to_be_visible()

"""The page as a person uses it: sign in by link, upload photos, watch the job, see samples, download."""

import io
import json
import re

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.browser.conftest import PHONE, screenshot
from tests.e2e.stack import FAST_SETTINGS, Client, photo_files

pytestmark = pytest.mark.e2e

TOKEN_KEY = "dreambooth-studio.token"
FINISHED_TIMEOUT_MS = 240_000


def as_upload(files: list) -> list[dict]:
    """photo_files()'s multipart tuples as Playwright file payloads."""
    return [{"name": name, "mimeType": mime, "buffer": data} for _field, (name, data, mime) in files]


def fill_setting(page, name: str, value) -> None:
    page.locator(f"#f-{name}").fill(str(value))


def test_face_job_from_photos_to_checkpoint(open_page, stack, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)

    expect(page.get_by_role("heading", name="Your jobs")).to_be_focused()
    assert "token" not in page.url
    assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") == token
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    expect(page.get_by_role("heading", name="New job")).to_be_focused()
    expect(page.locator("#demo-banner")).to_contain_text("images will be noise")

    page.locator("#photo-input").set_input_files(as_upload(photo_files(4)))
    expect(page.locator(".thumb")).to_have_count(4)
    expect(page.locator(".thumb").first).to_contain_text("96×80 → 64×64")
    page.get_by_role("radio", name=re.compile("^Face")).check()
    expect(page.get_by_label("Class prompt")).to_have_value("a photo of a person")
    page.get_by_label("Instance prompt").fill("a photo of maria person")
    page.get_by_text("Advanced settings").click()
    expect(page.locator("#f-resolution")).to_have_value("64")  # demo mode prefills it
    for name, value in {"max_train_steps": 30, "validation_inference_steps": 4, "num_class_images": 2, "seed": 7}.items():
        fill_setting(page, name, value)
    page.get_by_label("I may use these photos").check()
    screenshot(page, "new-job")

    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[-1]
    status = page.locator(".page-head .badge")
    expect(page.get_by_role("heading", name="a photo of maria person")).to_be_focused()
    expect(status).to_have_text("running", timeout=60_000)
    # note: the loss curve needs two reports; a fast job may finish first, which is fine too.
    page.wait_for_function(
        "document.querySelector('.loss-chart') || document.querySelector('.page-head .badge').textContent !== 'running'",
        timeout=FINISHED_TIMEOUT_MS,
    )
    screenshot(page, "job-running")

    expect(status).to_have_text("succeeded", timeout=FINISHED_TIMEOUT_MS)
    expect(page.locator(".phase")).to_have_text("Finished")
    sample = page.get_by_role("img", name="Sample at step 30: a photo of maria person (seed 7)")
    expect(sample).to_be_visible()
    page.wait_for_function("[...document.querySelectorAll('.sample-grid img')].every(i => i.naturalWidth > 0)")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    screenshot(page, "job-succeeded")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download fp16").click()
    data = download_info.value.path().read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and json.loads(data[8 : 8 + header_length])
    fp16 = next(a for a in Client(stack.url, token).job(job_id)["artifacts"] if a.get("dtype") == "fp16")
    assert len(data) == fp16["size_bytes"]
    assert download_info.value.suggested_filename.endswith("-fp16.safetensors")

    page.get_by_role("navigation").get_by_role("link", name="Jobs").click()
    row = page.locator(".job-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("a photo of maria person")
    expect(row.locator(".badge")).to_have_text("succeeded")
    page.wait_for_function("document.querySelector('.job-row img')?.naturalWidth > 0")
    screenshot(page, "jobs-list")

    phone = open_page(token, viewport=PHONE, color_scheme="dark")
    phone.goto(f"{stack.url}/#/jobs/{job_id}")
    expect(phone.get_by_role("button", name="Download fp32")).to_be_visible()
    phone.wait_for_function("document.querySelector('.sample-grid img')?.naturalWidth > 0")
    screenshot(phone, "job-succeeded-phone-dark")


def test_another_users_job_is_not_found(open_page, stack, user_factory):
    _alice, alice_token = user_factory("alice")
    _mallory, mallory_token = user_factory("mallory")
    alice = Client(stack.url, alice_token)
    job = alice.submit(FAST_SETTINGS)
    alice.http.post(f"/api/jobs/{job['id']}/cancel")

    page = open_page(mallory_token)
    expect(page.get_by_role("heading", name="Your jobs")).to_be_visible()
    page.goto(f"{stack.url}/#/jobs/{job['id']}")
    expect(page.get_by_role("heading", name="Job not found")).to_be_focused()
    expect(page.locator("main")).not_to_contain_text(FAST_SETTINGS["instance_prompt"])
    screenshot(page, "not-found")


def test_cancel_and_delete_from_the_job_page(open_page, stack, user_factory):
    _user, token = user_factory("bob")
    job = Client(stack.url, token).submit({**FAST_SETTINGS, "max_train_steps": 20_000})
    page = open_page(token)
    page.goto(f"{stack.url}/#/jobs/{job['id']}")
    status = page.locator(".page-head .badge")
    expect(page.locator(".progress-text")).to_contain_text("step", timeout=60_000)

    page.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel this job?")
    dialog.get_by_role("button", name="Cancel job").click()
    expect(status).to_have_text("cancelled", timeout=30_000)
    expect(page.get_by_role("alert")).to_contain_text("This job was cancelled.")

    page.get_by_role("button", name="Delete job").click()
    dialog.get_by_role("button", name="Keep it").click()
    expect(status).to_have_text("cancelled")
    page.get_by_role("button", name="Delete job").click()
    dialog.get_by_role("button", name="Delete job").click()
    expect(page.get_by_role("heading", name="Your jobs")).to_be_focused()
    expect(page.get_by_text("No jobs yet.")).to_be_visible()


def test_photo_warnings_appear_before_upload(open_page, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    first = as_upload(photo_files(1))
    page.locator("#photo-input").set_input_files(first)
    page.locator("#photo-input").set_input_files(first)  # the same photo again
    warnings = page.locator("#photos-warnings")
    expect(warnings).to_contain_text("Only 2 photos")
    expect(warnings).to_contain_text("1 duplicate photo")
    page.get_by_text("Advanced settings").click()
    fill_setting(page, "resolution", 512)
    expect(warnings).to_contain_text("smaller than 512 px")

    page.get_by_role("button", name="Remove photo0.jpg").last.click()
    expect(page.locator(".thumb")).to_have_count(1)
    expect(warnings).not_to_contain_text("duplicate")


def test_non_image_upload_shows_the_api_error_beside_the_photos(open_page, stack, user_factory):
    _user, token = user_factory("alice")
    not_an_image = ("photos", ("notes.jpg", b"these are words, not pixels", "image/jpeg"))
    photos = [*photo_files(3), not_an_image]
    settings = {"instance_prompt": "a photo of rufus dog"}
    refusal = Client(stack.url, token).http.post("/api/jobs", files=photos, data={"settings": json.dumps(settings)})
    assert refusal.status_code == 422 and refusal.json()["error"]["field"] == "photos"

    page = open_page(token)
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    page.locator("#photo-input").set_input_files(as_upload(photos))
    expect(page.locator("#photos-warnings")).to_contain_text("could not be read as an image")
    page.get_by_label("Instance prompt").fill("a photo of rufus dog")

    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#err-consent")).to_contain_text("Tick this box")
    page.get_by_label("I may use these photos").check()
    page.get_by_role("button", name="Start training").click()

    error = page.locator("#err-photos")
    expect(error).to_have_text(refusal.json()["error"]["message"])
    expect(error).to_contain_text("photos[3] (notes.jpg) is not a")
    photo_input = page.locator("#photo-input")
    expect(photo_input).to_have_attribute("aria-invalid", "true")
    expect(photo_input).to_have_attribute("aria-describedby", re.compile(r"\berr-photos\b"))
    expect(page.locator("#err-consent")).to_be_hidden()
    screenshot(page, "error")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_focused()
    assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None


def test_samples_grid_adds_a_column_per_step(open_page, stack, user_factory):
    """Today a job samples at its last step only; the grid already lays out more steps as columns."""
    _user, token = user_factory("alice")
    job = synthetic_job(steps=[100, 200, 300], prompts=["a photo of rufus dog", "rufus dog on a beach"])
    page = open_page(token)
    page.route(f"**/api/jobs/{job['id']}", lambda route: route.fulfill(json=job))
    page.route(f"**/api/jobs/{job['id']}/samples/*", lambda route: route.fulfill(body=png(), content_type="image/png"))
    page.goto(f"{stack.url}/#/jobs/{job['id']}")

    grid = page.locator(".sample-grid")
    expect(grid.locator("thead th")).to_have_text(["Prompt", "Step 100", "Step 200", "Step 300"])
    expect(grid.locator("tbody th")).to_have_text(["a photo of rufus dog", "rufus dog on a beach"])
    expect(grid.locator("img")).to_have_count(6)
    slider = page.get_by_label("Training step")
    expect(grid.locator("th.selected")).to_have_text("Step 300")
    slider.focus()
    page.keyboard.press("Home")
    expect(grid.locator("th.selected")).to_have_text("Step 100")
    expect(slider).to_have_attribute("aria-valuetext", "Step 100")
    page.wait_for_function("[...document.querySelectorAll('.sample-grid img')].every(i => i.naturalWidth > 0)")
    screenshot(page, "samples-by-step")


def synthetic_job(steps: list[int], prompts: list[str]) -> dict:
    """A succeeded job as GET /api/jobs/{id} shows it, with samples at several steps."""
    job_id = "5a3c1d52-0000-4000-8000-000000000001"
    samples = [
        {"id": 1 + len(prompts) * s + p, "kind": "sample", "step": step, "prompt": prompt, "seed": 7,
         "url": f"/api/jobs/{job_id}/samples/{1 + len(prompts) * s + p}", "size_bytes": 100, "format": None, "dtype": None}
        for s, step in enumerate(steps)
        for p, prompt in enumerate(prompts)
    ]
    checkpoint = {"id": 99, "kind": "checkpoint", "step": steps[-1], "prompt": None, "seed": None, "format": "single",
                  "dtype": "fp16", "size_bytes": 2_000_000, "url": f"/api/jobs/{job_id}/checkpoint?format=single&dtype=fp16"}
    return {
        "id": job_id, "status": "succeeded", "phase": None, "cancel_requested": False, "attempts": 1, "photo_count": 4,
        "progress": {"step": steps[-1], "total_steps": steps[-1], "loss": 0.1, "eta_seconds": None},
        "settings": {"preset": "object", "instance_prompt": prompts[0], "base_model": "builtin:tiny"},
        "error": None, "artifacts": [*samples, checkpoint],
        "created_at": "2026-01-01T10:00:00Z", "started_at": "2026-01-01T10:00:01Z", "finished_at": "2026-01-01T10:20:00Z",
    }


def png() -> bytes:
    image = Image.new("RGB", (64, 64), (90, 80, 220))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(250, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

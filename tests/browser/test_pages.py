"""The page as a person uses it: sign in by link, upload photos, watch the job, see samples across
steps, download a chosen step, generate images."""

import io
import json
import re
import secrets
import uuid

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from backend.auth import create_user
from backend.db import get_sessionmaker
from tests.browser.conftest import PHONE, as_upload, screenshot
from tests.e2e.stack import FAST_SETTINGS, Client, photo_files

pytestmark = pytest.mark.e2e

TOKEN_KEY = "dreambooth-studio.token"
FINISHED_TIMEOUT_MS = 240_000
GENERATED_TIMEOUT_MS = 120_000
# A 30-step job samples (and keeps its weights) at steps 10, 20 and 30, two sampler steps each.
VALIDATION = {"validation_steps": 10, "validation_inference_steps": 2}


def fill_setting(page, name: str, value) -> None:
    page.locator(f"#f-{name}").fill(str(value))


def read_safetensors(data: bytes) -> dict:
    """The JSON header of a whole .safetensors file, checking that the tensors' bytes are all there."""
    header_length = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{"
    header = json.loads(data[8 : 8 + header_length])
    end = max(tensor["data_offsets"][1] for name, tensor in header.items() if name != "__metadata__")
    assert len(data) == 8 + header_length + end
    return header


@pytest.fixture(scope="module")
def trained() -> dict:
    """The job the face flow trained, left for the tests after it: one trained job on two shared cores."""
    return {}


def test_face_job_from_photos_to_checkpoint(open_page, stack, user_factory, trained):
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
    page.get_by_role("radio", name=re.compile("^Face People")).check()
    expect(page.get_by_label("Class prompt")).to_have_value("a photo of a person")
    page.get_by_label("Instance prompt").fill("a photo of maria person")
    page.get_by_text("Advanced settings").click()
    expect(page.locator("#f-resolution")).to_have_value("64")  # demo mode prefills it
    expect(page.locator("#f-validation_scheduler")).to_have_value("ddim")
    expect(page.locator("#f-lora_rank")).to_be_hidden()
    page.locator("#f-training_method").select_option("lora")
    expect(page.get_by_label("lora_rank")).to_have_value("4")
    page.locator("#f-training_method").select_option("full")
    expect(page.locator("#f-lora_rank")).to_be_hidden()
    for name, value in {"max_train_steps": 30, "num_class_images": 2, "seed": 7, **VALIDATION}.items():
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
        "document.querySelector('.loss-chart')"
        " || document.querySelector('.page-head .badge').textContent !== 'running'",
        timeout=FINISHED_TIMEOUT_MS,
    )
    screenshot(page, "job-running")

    expect(status).to_have_text("succeeded", timeout=FINISHED_TIMEOUT_MS)
    expect(page.locator(".phase")).to_have_text("Finished")
    job = Client(stack.url, token).job(job_id)
    sample_steps = sorted({a["step"] for a in job["artifacts"] if a["kind"] == "sample"})
    assert len(sample_steps) > 1, f"samples only at steps {sample_steps}; validation_steps=10 should give 10, 20, 30"
    grid = page.locator(".sample-grid")
    expect(grid.locator("thead th[data-step]")).to_contain_text([f"Step {step}" for step in sample_steps])
    expect(
        page.get_by_role("img", name=re.compile(r"^Sample at step 30: a photo of maria person")).first
    ).to_be_visible()
    page.wait_for_function("[...document.querySelectorAll('.sample-grid img')].every(i => i.naturalWidth > 0)")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    screenshot(page, "job-succeeded")

    slider = page.get_by_label("Training step")
    slider.focus()
    page.keyboard.press("End")
    expect(grid.locator("th.selected")).to_contain_text("Step 30")
    expect(page.locator(".download-step")).to_contain_text("Weights at step 30")
    for name in ("single file fp16", "single file fp32", "diffusers zip fp16", "diffusers zip fp32"):
        expect(page.get_by_role("button", name=f"Download {name}")).to_be_enabled()
    expect(page.get_by_role("button", name=re.compile("LoRA"))).to_have_count(0)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download single file fp16").click()
    assert read_safetensors(download_info.value.path().read_bytes())
    assert download_info.value.suggested_filename.endswith("-step30-fp16.safetensors")

    page.get_by_role("navigation").get_by_role("link", name="Jobs").click()
    row = page.locator(".job-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("a photo of maria person")
    expect(row.locator(".badge")).to_have_text("succeeded")
    page.wait_for_function("document.querySelector('.job-row img')?.naturalWidth > 0")
    screenshot(page, "jobs-list")

    # note: a page opened on a finished job draws the loss curve from the server's history alone.
    assert len(job["loss_history"]) > 2
    phone = open_page(token, viewport=PHONE, color_scheme="dark")
    phone.goto(f"{stack.url}/#/jobs/{job_id}")
    expect(phone.get_by_role("button", name="Download single file fp32")).to_be_visible()
    points = phone.locator(".loss-line").get_attribute("points").split()
    assert len(points) >= len(job["loss_history"]) > 2  # the history, and any live loss after it
    phone.wait_for_function("[...document.querySelectorAll('.sample-grid img')].every(i => i.naturalWidth > 0)")
    assert phone.evaluate("document.documentElement.scrollWidth <= innerWidth"), "the page scrolls sideways on a phone"
    screenshot(phone, "job-succeeded-phone-dark")
    trained.update(token=token, job_id=job_id)


def generations_api_missing(url: str) -> bool:
    """Whether the server lacks POST /api/jobs/{id}/generations: a 404 or 405 whoever asks, where the
    route answers 401 or 422 to an anonymous empty request."""
    return httpx.post(f"{url}/api/jobs/{uuid.uuid4()}/generations", json={}).status_code in (404, 405)


def finished_job(stack, trained: dict) -> tuple[str, str]:
    """The token and id of a succeeded job: the face flow's if it ran, else one trained here."""
    if trained and Client(stack.url, trained["token"]).http.get(f"/api/jobs/{trained['job_id']}").status_code == 200:
        return trained["token"], trained["job_id"]
    with get_sessionmaker()() as session:
        _user, token = create_user(session, f"carol-{secrets.token_hex(3)}")
    client = Client(stack.url, token)
    job = client.submit({**FAST_SETTINGS, **VALIDATION})
    assert client.wait_for(job["id"], {"succeeded", "failed"}, stack)["status"] == "succeeded", stack.logs()
    return token, job["id"]


def test_generate_images_from_the_job_page(open_page, stack, trained):
    """Reuses the face flow's job; it must not truncate the database (no user_factory)."""
    if generations_api_missing(stack.url):
        pytest.skip("POST /api/jobs/{id}/generations is not on this server yet")
    token, job_id = finished_job(stack, trained)
    job = Client(stack.url, token).job(job_id)
    page = open_page(token)
    page.goto(f"{stack.url}/#/jobs/{job_id}")
    form = page.locator("[data-slot=generate-form]")
    expect(page.get_by_role("heading", name="Generate images")).to_be_visible()
    expect(form.get_by_label("Prompt", exact=True)).to_have_value(job["settings"]["instance_prompt"])
    expect(form.get_by_label("Scheduler")).to_have_value("ddim")
    expect(form.get_by_label("Inference steps")).to_have_value("100")
    expect(form.get_by_label("Images")).to_have_value("4")
    preselected = (job["evaluation"] or {}).get("recommended_step") or job["kept_steps"][-1]
    expect(form.get_by_label("Weights from step")).to_have_value(str(preselected))

    form.get_by_label("Prompt", exact=True).fill("")
    form.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-g-prompt")).to_have_text("Write a prompt first.")
    expect(form.get_by_label("Prompt", exact=True)).to_be_focused()
    form.get_by_label("Prompt", exact=True).fill("a photo of maria person on the moon")
    form.get_by_label("Guidance scale").fill("99")
    form.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-g-guidance_scale")).to_contain_text("guidance_scale")
    expect(form.get_by_label("Guidance scale")).to_have_attribute("aria-invalid", "true")

    form.get_by_label("Guidance scale").fill("7.5")
    form.get_by_label("Inference steps").fill("2")
    form.get_by_label("Images").fill("2")
    form.get_by_label("Seed").fill("11")
    form.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-g-guidance_scale")).to_be_hidden()
    generation = page.locator(".generation").first
    expect(generation.locator(".badge")).to_have_text("succeeded", timeout=GENERATED_TIMEOUT_MS)
    expect(generation.locator("img")).to_have_count(2)
    expect(generation.locator("figcaption").first).to_contain_text("seed")
    page.wait_for_function("[...document.querySelectorAll('.generation img')].every(i => i.naturalWidth > 0)")
    expect(page.locator("[data-slot=generate-status]")).to_contain_text("2 images ready")
    screenshot(page, "job-generated")

    if Client(stack.url, token).http.get(f"/api/jobs/{job_id}/generations").status_code == 200:
        page.reload()
        expect(page.locator(".generation")).to_have_count(1)
        expect(page.locator(".generation").first).to_contain_text("a photo of maria person on the moon")


def test_every_view_runs_without_console_errors_or_warnings(open_page, stack, trained):
    """Sign-in, the jobs list, the new job with every setting shown, a finished job, a missing one.
    open_page fails the test on script and console errors; this test on warnings too."""
    token, job_id = finished_job(stack, trained)
    page = open_page(token)
    warnings = []
    page.on("console", lambda message: warnings.append(message.text) if message.type == "warning" else None)
    page.reload()
    expect(page.get_by_role("heading", name="Your jobs")).to_be_focused()
    page.wait_for_function("document.querySelector('.job-row img')?.naturalWidth > 0")

    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    page.locator("#photo-input").set_input_files(as_upload(photo_files(2)))
    page.get_by_text("Advanced settings").click()
    page.get_by_text("Expert settings").click()
    page.get_by_label("training_method").select_option("lora")
    expect(page.get_by_label("lora_rank")).to_be_visible()
    expect(page.locator("#photos-warnings")).to_contain_text("Only 2 photos")

    page.goto(f"{stack.url}/#/jobs/{job_id}")
    expect(page.get_by_role("heading", name="Generate images")).to_be_visible()
    page.wait_for_function("[...document.querySelectorAll('.sample-grid img')].every(i => i.naturalWidth > 0)")
    page.goto(f"{stack.url}/#/jobs/{uuid.uuid4()}")
    expect(page.get_by_role("heading", name="Job not found")).to_be_focused()

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#token-error")).to_contain_text("not accepted")
    assert not warnings, f"console warnings: {warnings}"


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


def test_recommended_step_leads_samples_downloads_and_generating(open_page, stack, user_factory):
    """The evaluation, LoRA downloads and the generations API's answers, played by routes: no training."""
    _user, token = user_factory("alice")
    job = synthetic_job(steps=[100, 200, 300], prompts=["a photo of rufus dog", "rufus dog on a beach"])
    job["settings"]["training_method"] = "lora"
    job["kept_steps"] = [100, 200, 300]
    job["loss_history"] = [[step, 0.3 - step / 2000 + (step % 7) / 100] for step in range(10, 301, 10)]
    job["evaluation"] = {
        "scorer": "clip-tiny",
        "recommended_step": 200,
        "recommended_is_final": False,
        "reason": "Step 200 keeps the subject and follows new prompts; step 300 starts copying the photos.",
        "steps": [
            {"step": s, "subject_fidelity": f, "prompt_fidelity": q, "memorisation": m, "score": f + q - m}
            for s, f, q, m in [(100, 0.4, 0.7, 0.0), (200, 0.7, 0.6, 0.0), (300, 0.8, 0.3, 0.5)]
        ],
    }
    job_url = f"**/api/jobs/{job['id']}"
    downloads, posts = [], []
    generation = {
        "id": "9e3c1d52-0000-4000-8000-00000000000a",
        "job_id": job["id"],
        "status": "queued",
        "error": None,
        "params": {
            "prompt": "rufus dog in space",
            "scheduler": "ddim",
            "num_inference_steps": 100,
            "guidance_scale": 7.5,
            "num_images": 2,
            "step": 200,
        },
        "images": [],
        "created_at": "2026-01-01T11:00:00Z",
    }
    older = {
        **generation,
        "id": "9e3c1d52-0000-4000-8000-00000000000b",
        "status": "failed",
        "created_at": "2026-01-01T10:30:00Z",
        "params": {**generation["params"], "prompt": "rufus dog at sea"},
        "error": {"code": "out_of_memory", "message": "The GPU ran out of memory."},
    }
    refusals = [
        (422, {"error": {"code": "invalid_input", "message": "body.prompt: too long", "field": "body.prompt"}}),
        (409, {"error": {"code": "conflict", "message": "the job is running; generate once it has succeeded"}}),
    ]
    polls = iter(["running", "succeeded"])

    def generations(route):
        if route.request.method == "GET":
            return route.fulfill(json={"items": [older]})
        posts.append(route.request.post_data_json)
        if refusals:
            status, body = refusals.pop(0)
            return route.fulfill(status=status, json=body)
        route.fulfill(status=202, json=generation)

    def poll(route):
        status = next(polls)
        images = [{"url": f"/api/generations/{generation['id']}/images/{i}", "seed": 40 + i} for i in range(2)]
        route.fulfill(json={**generation, "status": status, "images": images if status == "succeeded" else []})

    def checkpoint(route):
        downloads.append((route.request.url, route.request.headers.get("authorization")))
        route.fulfill(
            body=b"safetensors bytes",
            headers={"Content-Disposition": 'attachment; filename="rufus-dog-step200-lora.safetensors"'},
        )

    page = open_page(token)
    page.route(job_url, lambda route: route.fulfill(json=job))
    page.route(f"{job_url}/samples/*", lambda route: route.fulfill(body=png(), content_type="image/png"))
    page.route(f"{job_url}/checkpoint?*", checkpoint)
    page.route(f"{job_url}/generations", generations)
    page.route("**/api/generations/*/images/*", lambda route: route.fulfill(body=png(), content_type="image/png"))
    page.route("**/api/generations/*", poll)
    page.goto(f"{stack.url}/#/jobs/{job['id']}")

    recommendation = page.get_by_role("region", name="Recommended: step 200")
    expect(recommendation).to_contain_text("step 300 starts copying the photos")
    expect(recommendation).to_contain_text("earlier than the last step (300)")
    expect(page.get_by_label("Training step")).to_have_attribute("aria-valuetext", "Step 200 (recommended)")
    grid = page.locator(".sample-grid")
    expect(grid.locator("th.selected")).to_contain_text("Step 200")
    expect(grid.locator("th.recommended")).to_contain_text("recommended")
    scores = page.locator(".scores-table")
    expect(scores.locator("tbody tr")).to_have_count(3)
    expect(scores.locator("tr.recommended th")).to_contain_text("Step 200")
    expect(scores.locator("tbody tr").last).to_contain_text("50 %")
    assert len(page.locator(".loss-line").get_attribute("points").split()) == len(job["loss_history"])

    expect(page.locator(".download-step")).to_contain_text("Weights at step 200 (recommended)")
    expect(page.get_by_role("button", name=re.compile("^Download "))).to_have_count(6)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download LoRA (kohya / A1111 / ComfyUI)").click()
    assert download_info.value.suggested_filename == "rufus-dog-step200-lora.safetensors"
    url, authorization = downloads[0]
    assert url.endswith(f"/api/jobs/{job['id']}/checkpoint?format=lora_kohya&dtype=fp16&step=200")
    assert authorization == f"Bearer {token}"

    form = page.locator("[data-slot=generate-form]")
    expect(form.get_by_label("Weights from step")).to_have_value("200")
    expect(page.locator(".generation")).to_have_count(1)
    expect(page.locator(".generation")).to_contain_text("The GPU ran out of memory.")
    form.get_by_label("Prompt", exact=True).fill("rufus dog in space")
    form.get_by_label("Images").fill("2")
    form.get_by_role("button", name="Generate").click()
    expect(page.locator("#err-g-prompt")).to_have_text("body.prompt: too long")
    expect(form.get_by_label("Prompt", exact=True)).to_be_focused()
    form.get_by_role("button", name="Generate").click()
    expect(form.get_by_role("alert")).to_contain_text("Not ready to generate: the job is running")
    expect(page.locator("#err-g-prompt")).to_be_hidden()
    form.get_by_role("button", name="Generate").click()
    newest = page.locator(".generation").first
    expect(newest.locator(".badge")).to_have_text("succeeded")
    expect(newest.get_by_role("img")).to_have_count(2)
    expect(newest.get_by_role("img").first).to_have_accessible_name("Generated: rufus dog in space (seed 40)")
    expect(page.locator("[data-slot=generate-status]")).to_have_text("2 images ready for “rufus dog in space”.")
    assert posts[-1] == {
        "prompt": "rufus dog in space",
        "scheduler": "ddim",
        "num_inference_steps": 100,
        "guidance_scale": 7.5,
        "num_images": 2,
        "step": 200,
    }
    page.wait_for_function("[...document.querySelectorAll('.generation img')].every(i => i.naturalWidth > 0)")
    screenshot(page, "job-recommended-step")


def synthetic_job(steps: list[int], prompts: list[str]) -> dict:
    """A succeeded job as GET /api/jobs/{id} shows it, with samples at several steps."""
    job_id = "5a3c1d52-0000-4000-8000-000000000001"
    samples = [
        {
            "id": 1 + len(prompts) * s + p,
            "kind": "sample",
            "step": step,
            "prompt": prompt,
            "seed": 7,
            "url": f"/api/jobs/{job_id}/samples/{1 + len(prompts) * s + p}",
            "size_bytes": 100,
            "format": None,
            "dtype": None,
        }
        for s, step in enumerate(steps)
        for p, prompt in enumerate(prompts)
    ]
    checkpoint = {
        "id": 99,
        "kind": "checkpoint",
        "step": steps[-1],
        "prompt": None,
        "seed": None,
        "format": "single",
        "dtype": "fp16",
        "size_bytes": 2_000_000,
        "url": f"/api/jobs/{job_id}/checkpoint?format=single&dtype=fp16",
    }
    return {
        "id": job_id,
        "status": "succeeded",
        "phase": None,
        "cancel_requested": False,
        "attempts": 1,
        "photo_count": 4,
        "progress": {"step": steps[-1], "total_steps": steps[-1], "loss": 0.1, "eta_seconds": None},
        "settings": {"preset": "object", "instance_prompt": prompts[0], "base_model": "builtin:tiny"},
        "error": None,
        "artifacts": [*samples, checkpoint],
        "created_at": "2026-01-01T10:00:00Z",
        "started_at": "2026-01-01T10:00:01Z",
        "finished_at": "2026-01-01T10:20:00Z",
    }


def png() -> bytes:
    image = Image.new("RGB", (64, 64), (90, 80, 220))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(250, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

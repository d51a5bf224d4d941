"""Pivotal tuning on the page (issue 17): its settings group, the two phases' progress, and the embedding download.
The jobs are played by routes, as GET /api/jobs/{id} shows them: no training."""

import json
import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.browser.test_pages import png, synthetic_job

pytestmark = pytest.mark.e2e

PIVOTAL = {
    "preset": "custom", "instance_prompt": "a photo of <sks> dog", "base_model": "builtin:tiny",
    "training_method": "pivotal", "pivotal_second_phase": "full", "placeholder_token": "<sks>",
    "textual_inversion_steps": 2000, "max_train_steps": 500,
}  # fmt: skip


def open_new_job(page) -> None:
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    expect(page.get_by_role("heading", name="New job")).to_be_focused()
    page.get_by_text("Advanced settings").click()


def test_choosing_pivotal_shows_its_settings_and_a_lora_second_phase_the_lora_ones(open_page, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)
    open_new_job(page)
    page.get_by_text("Expert settings").click()
    pivotal, lora = page.locator("fieldset[data-group='Pivotal tuning']"), page.locator("fieldset[data-group=LoRA]")

    expect(pivotal).to_be_hidden()
    expect(page.locator("#help-training_method")).to_contain_text("pivotal learns a new token first")
    page.get_by_label("training_method").select_option("pivotal")
    expect(pivotal).to_be_visible()
    expect(pivotal.locator("legend")).to_have_text("Pivotal tuning")
    expect(page.get_by_label("placeholder_token")).to_have_value("<sks>")
    expect(page.get_by_label("textual_inversion_steps")).to_have_value("2000")
    expect(page.get_by_label("pivotal_second_phase")).to_have_value("full")
    expect(lora).to_be_hidden()
    expect(page.get_by_label("use_ema")).to_be_visible()  # a full second phase may average
    screenshot(page, "new-job-pivotal")

    page.get_by_label("pivotal_second_phase").select_option("lora")
    expect(lora).to_be_visible()
    expect(page.get_by_label("use_ema")).to_be_hidden()  # the server refuses it with a LoRA second phase
    page.get_by_label("training_method").select_option("full")
    expect(pivotal).to_be_hidden()
    expect(lora).to_be_hidden()


def running_job(phase: str, step: int) -> dict:
    """A pivotal job running at `step` of its 2000 + 500."""
    job = synthetic_job(steps=[step], prompts=["a photo of <sks> dog"])
    job |= {"status": "running", "phase": phase, "finished_at": None, "settings": PIVOTAL, "artifacts": []}
    job["progress"] = {"step": step, "total_steps": 2500, "loss": 0.12, "eta_seconds": 600}
    return job


def test_the_progress_names_the_phase_and_counts_within_it(open_page, stack, user_factory):
    """The events stream sends the job in textual inversion; the poll after it, in Dreambooth."""
    _user, token = user_factory("alice")
    inversion, dreambooth = running_job("inversion", 120), running_job("training", 2040)
    page = open_page(token)
    job_url = f"**/api/jobs/{inversion['id']}"
    polls = iter([inversion, dreambooth])
    page.route(job_url, lambda route: route.fulfill(json=next(polls, dreambooth)))
    page.route(
        f"{job_url}/events",
        lambda route: route.fulfill(body=f"data: {json.dumps(inversion)}\n\n", content_type="text/event-stream"),
    )
    page.goto(f"{stack.url}/#/jobs/{inversion['id']}")

    expect(page.locator(".phase")).to_have_text("Textual inversion")
    expect(page.locator(".progress-text")).to_contain_text("Textual inversion: step 120 of 2000")
    expect(page.locator("[data-slot=progress]")).to_have_attribute(
        "aria-valuetext", "Textual inversion: step 120 of 2000"
    )
    screenshot(page, "job-pivotal-inversion")
    expect(page.locator(".progress-text")).to_contain_text("Dreambooth: step 40 of 500")
    expect(page.locator(".phase")).to_have_text("Training")


def finished_job() -> dict:
    """A succeeded pivotal job: samples and kept weights at 1000 (textual inversion) and 2500 (the final)."""
    job = synthetic_job(steps=[1000, 2500], prompts=["a photo of <sks> dog"])
    job["settings"] = PIVOTAL
    job["kept_steps"] = [1000, 2500]
    base = f"/api/jobs/{job['id']}/checkpoint"
    job["artifacts"] += [
        {
            "id": 90, "kind": "weights", "step": 1000, "prompt": None, "seed": None, "format": "embedding",
            "dtype": "fp32", "size_bytes": 400, "url": f"{base}?format=embedding&dtype=fp32&step=1000",
        },
        {
            "id": 91, "kind": "checkpoint", "step": 2500, "prompt": None, "seed": None, "format": "embedding",
            "dtype": "fp32", "size_bytes": 400, "url": f"{base}?format=embedding&dtype=fp32&step=2500",
        },
    ]  # fmt: skip
    return job


def test_the_embedding_downloads_with_a_line_on_loading_it(open_page, stack, user_factory):
    _user, token = user_factory("alice")
    job = finished_job()
    job_url = f"**/api/jobs/{job['id']}"
    downloads = []

    def checkpoint(route):
        downloads.append(route.request.url)
        name = "sks-dog-step1000-fp32-embedding.safetensors"
        route.fulfill(body=b"embedding bytes", headers={"Content-Disposition": f'attachment; filename="{name}"'})

    page = open_page(token)
    page.route(job_url, lambda route: route.fulfill(json=job))
    page.route(f"{job_url}/samples/*", lambda route: route.fulfill(body=png(), content_type="image/png"))
    page.route(f"{job_url}/checkpoint?*", checkpoint)
    page.goto(f"{stack.url}/#/jobs/{job['id']}")

    embedding = page.get_by_role("button", name="Download embedding")
    expect(page.get_by_role("button", name=re.compile("^Download "))).to_have_count(5)  # no LoRA: a full second phase
    expect(page.locator(".embedding-use")).to_contain_text("AUTOMATIC1111: put it in embeddings/")
    expect(page.locator(".embedding-use")).to_contain_text("embedding:NAME")
    expect(page.locator(".embedding-use")).to_contain_text('load_textual_inversion(path, token="<sks>")')
    expect(page.get_by_role("button", name="Download single file fp16")).to_be_enabled()

    page.get_by_label("Training step").focus()
    page.keyboard.press("Home")
    expect(page.locator(".download-step")).to_contain_text("Weights at step 1000")
    expect(page.get_by_text("Step 1000 was in the textual-inversion phase")).to_be_visible()
    expect(page.get_by_role("button", name="Download single file fp16")).to_be_disabled()
    expect(embedding).to_be_enabled()
    screenshot(page, "job-pivotal-downloads")
    with page.expect_download() as download_info:
        embedding.click()
    assert download_info.value.suggested_filename == "sks-dog-step1000-fp32-embedding.safetensors"
    assert downloads[0].endswith(f"/api/jobs/{job['id']}/checkpoint?format=embedding&dtype=fp32&step=1000")

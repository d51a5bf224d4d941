"""The new job's base model on the page: choosing one shows its family, switches the preset cards to those that
fit it (each with why), and sets the resolution to the model's own."""

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import as_upload, screenshot
from tests.e2e.stack import Client, Stack, photo_files, running_stack

pytestmark = pytest.mark.e2e

CLIP_TEXT = ["transformers", "CLIPTextModel"]


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An SDXL model as the API reads it: only its configs (two text encoders, a 1024 px UNet)."""
    folder = tmp_path_factory.mktemp("xl-model")
    (folder / "unet").mkdir()
    index = {"_class_name": "StableDiffusionXLPipeline", "text_encoder": CLIP_TEXT, "text_encoder_2": CLIP_TEXT}
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet" / "config.json").write_text(json.dumps({"sample_size": 128}))
    return str(folder)


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, sdxl_folder: str, tmp_path_factory) -> Iterator[Stack]:
    """The API alone (nothing here trains), in demo mode, also offering the SDXL folder."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EXTRA_BASE_MODELS", sdxl_folder)
        with running_stack(database_url, redis_url, tmp_path_factory.mktemp("families"), workers=()) as running:
            yield running


def open_new_job(page) -> None:
    page.get_by_role("navigation").get_by_role("link", name="New job").click()
    expect(page.get_by_role("heading", name="New job")).to_be_focused()
    page.get_by_text("Advanced settings").click()


def test_choosing_an_sdxl_model_switches_the_presets_the_resolution_and_shows_why(open_page, sdxl_folder, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)
    open_new_job(page)
    cards = page.get_by_role("radiogroup", name="Preset")

    expect(page.locator("#presets-for")).to_have_text("Presets for builtin:tiny: Stable Diffusion 1.x, 64 px.")
    expect(cards.locator(".preset-title")).to_have_text(["Object", "Face", "Face on 16 GB (pivotal)", "Custom"])
    expect(cards.get_by_role("radio", name="Object")).to_be_checked()
    expect(cards.locator(".preset-reason").first).to_contain_text("Dreambooth study")
    expect(page.locator("#family-base_model")).to_have_text("Stable Diffusion 1.x, 64 px")

    page.get_by_label("base_model").select_option("builtin:tiny-sdxl")
    expect(cards.locator(".preset-title")).to_have_text(["Object (SDXL, LoRA)", "Face (SDXL, LoRA)", "Custom"])
    expect(cards.get_by_role("radio", name="Object (SDXL, LoRA)")).to_be_checked()
    expect(cards.locator(".preset-reason").first).to_contain_text("SDXL Dreambooth LoRA guide (README_sdxl.md)")
    expect(page.locator("#family-base_model")).to_have_text("Stable Diffusion XL, 64 px")
    expect(page.get_by_label("training_method")).to_have_value("lora")
    expect(page.get_by_label("learning_rate")).to_have_value("1e-4")
    expect(page.get_by_label("gradient_accumulation_steps")).to_have_value("4")

    page.get_by_label("base_model").select_option(sdxl_folder)
    expect(page.locator("#presets-for")).to_contain_text("Stable Diffusion XL, 1024 px")
    expect(page.get_by_label("resolution")).to_have_value("1024")  # the model's own
    cards.get_by_role("radio", name="Face (SDXL, LoRA)").check()
    expect(page.get_by_label("with_prior_preservation")).to_be_checked()
    expect(page.get_by_label("Class prompt")).to_have_value("a photo of a person")
    expect(page.get_by_label("resolution")).to_have_value("1024")  # a preset keeps the model's resolution
    screenshot(page, "new-job-sdxl-presets")

    page.get_by_label("base_model").select_option("builtin:tiny")
    expect(cards.locator(".preset-title")).to_have_text(["Object", "Face", "Face on 16 GB (pivotal)", "Custom"])
    expect(cards.get_by_role("radio", name="Object")).to_be_checked()
    expect(page.get_by_label("resolution")).to_have_value("64")
    expect(page.get_by_label("learning_rate")).to_have_value("2e-6")
    expect(page.get_by_label("training_method")).to_have_value("full")


def test_custom_settings_survive_a_model_switch_but_the_resolution_follows(open_page, sdxl_folder, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)
    open_new_job(page)
    page.get_by_role("radiogroup", name="Preset").get_by_role("radio", name="Custom").check()
    page.get_by_label("max_train_steps").fill("7")

    page.get_by_label("base_model").select_option(sdxl_folder)
    expect(page.get_by_role("radiogroup", name="Preset").get_by_role("radio", name="Custom")).to_be_checked()
    expect(page.get_by_label("max_train_steps")).to_have_value("7")
    expect(page.get_by_label("resolution")).to_have_value("1024")


def test_an_sdxl_job_from_the_page_records_its_family(open_page, stack, user_factory):
    _user, token = user_factory("alice")
    page = open_page(token)
    open_new_job(page)
    page.locator("#photo-input").set_input_files(as_upload(photo_files(3)))
    page.get_by_label("Instance prompt").fill("a photo of rufus dog")
    page.get_by_label("base_model").select_option("builtin:tiny-sdxl")
    page.get_by_label("I may use these photos").check()
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))

    client = Client(stack.url, token)
    job = client.job(page.url.rsplit("/", 1)[-1])
    client.http.post(f"/api/jobs/{job['id']}/cancel")
    assert job["family"] == "sdxl"
    assert (job["settings"]["preset"], job["settings"]["training_method"]) == ("sdxl_object", "lora")

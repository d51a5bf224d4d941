// @ts-check
// A new job: photos, a preset, the subject's prompts, the settings the server describes, consent;
// then the upload, with its progress, and the job page.

import { uploadJob } from "../api.js";
import { cloneTemplate, focusHeading, mountView } from "../dom.js";
import { clearErrors, showFieldError } from "../form-errors.js";
import { go, isCurrent, markNav } from "../router.js";
import { session, settingNamed } from "../session.js";
import { PhotoSet } from "./photos.js";
import { applyPreset, buildSettingsFields, defaultPreset, readSettings } from "./settings-form.js";

/** @typedef {import("../router.js").View} View */

export function showNewJob(/** @type {View} */ current) {
  const slot = mountView("tpl-new-job");
  const form = /** @type {HTMLFormElement} */ (slot.form);
  markNav("new");
  buildPresetCards(slot.presets, form);
  buildSettingsFields(form, { advanced: slot.advancedFields, expert: slot.expert, expertFields: slot.expertFields });
  const resolution = () => Number(form.resolution.value) || settingNamed("resolution").default;
  const photos = new PhotoSet({ dropzone: slot.dropzone, thumbs: slot.thumbs, warnings: slot.warnings }, resolution, current.signal);
  applyPreset(form, defaultPreset());
  form.resolution.addEventListener("input", () => photos.render());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitJob(slot, photos, current);
  });
  focusHeading(slot.root);
}

function buildPresetCards(/** @type {HTMLElement} */ container, /** @type {HTMLFormElement} */ form) {
  for (const preset of session.presets) {
    const card = cloneTemplate("tpl-preset");
    card.input.value = preset.name;
    card.input.checked = preset.name === defaultPreset();
    card.title.textContent = preset.title;
    card.summary.textContent = preset.summary;
    card.input.addEventListener("change", () => {
      applyPreset(form, preset.name);
      form.resolution.dispatchEvent(new Event("input"));
    });
    container.append(card.element);
  }
}

async function submitJob(/** @type {Record<string, any>} */ slot, /** @type {PhotoSet} */ photos, /** @type {View} */ current) {
  const { form, formError } = slot;
  clearErrors(form, formError);
  if (!form.consent.checked) {
    return showFieldError(form, formError, "consent", "Tick this box to confirm you may train on these photos.");
  }
  if (!photos.items.length) return showFieldError(form, formError, "photos", "Add at least one photo.");
  setUploading(slot, true);
  try {
    const files = photos.items.map((item) => item.file);
    const job = await uploadJob(files, readSettings(form), (fraction) => showUploadProgress(slot, fraction));
    if (isCurrent(current)) go(`#/jobs/${job.id}`);
  } catch (error) {
    const { status, field, message } = /** @type {import("../api.js").ApiError} */ (error);
    if (status !== 401) showFieldError(form, formError, field, message);
  } finally {
    setUploading(slot, false);
  }
}

function setUploading(/** @type {Record<string, any>} */ slot, /** @type {boolean} */ uploading) {
  slot.submit.disabled = uploading;
  slot.upload.hidden = !uploading;
  if (uploading) showUploadProgress(slot, 0);
}

function showUploadProgress(/** @type {Record<string, any>} */ slot, /** @type {number} */ fraction) {
  slot.uploadBar.value = fraction;
  slot.uploadText.textContent = fraction < 1 ? `${Math.round(fraction * 100)} %` : "Checking the photos…";
}

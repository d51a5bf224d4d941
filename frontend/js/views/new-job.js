// @ts-check
// A new job: photos, a preset that fits the base model, the subject's prompts, the settings the server
// describes, consent; then the upload, with its progress, and the job page.

import { uploadJob } from "../api.js";
import { focusHeading, mountView } from "../dom.js";
import { clearErrors, showFieldError } from "../form-errors.js";
import { go, isCurrent, markNav } from "../router.js";
import { settingNamed } from "../session.js";
import { buildPresetCards, checkedPreset, chosenModel, showFamily } from "./model-choice.js";
import { PhotoSet } from "./photos.js";
import { applyPreset, buildSettingsFields, readSettings, setModelResolution } from "./settings-form.js";

/** @typedef {import("../router.js").View} View */

export function showNewJob(/** @type {View} */ current) {
  const slot = mountView("tpl-new-job");
  const form = /** @type {HTMLFormElement} */ (slot.form);
  markNav("new");
  const choosePreset = (/** @type {string} */ name) => {
    applyPreset(form, name, chosenModel(form));
    photos.render();
  };
  // note: the cards come before the fields, which would otherwise build a field of their own for the preset;
  // the base model's field does not exist yet, so this is the server's default model
  const model = chosenModel(form);
  buildPresetCards(slot.presets, model, model.presets[0], choosePreset);
  buildSettingsFields(form, { advanced: slot.advancedFields, expert: slot.expert, expertFields: slot.expertFields });
  const resolution = () => Number(form.resolution.value) || settingNamed("resolution").default;
  const slots = { dropzone: slot.dropzone, thumbs: slot.thumbs, warnings: slot.warnings };
  const photos = new PhotoSet(slots, resolution, current.signal, () => readSettings(form));
  applyPreset(form, model.presets[0], model);
  showFamily(form, slot.presetsFor, model);
  form.base_model?.addEventListener("change", () => switchModel(form, slot, choosePreset));
  form.resolution.addEventListener("input", () => photos.render());
  // note: the server's crop boxes and checks depend on these settings, so it previews again when they change
  form.addEventListener("change", (event) => {
    const name = /** @type {HTMLInputElement} */ (event.target).name;
    if (["resolution", "crop", "center_crop", "caption_mode", "instance_prompt", "preset"].includes(name)) photos.preview();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitJob(slot, photos, current);
  });
  focusHeading(slot.root);
}

/**
 * Another base model: the cards of the presets that fit it, and its resolution. A preset that still fits
 * stays checked with the user's edits; otherwise the model's default preset fills the form.
 * @param {HTMLFormElement} form
 * @param {Record<string, any>} slot
 * @param {(name: string) => void} choosePreset
 */
function switchModel(form, slot, choosePreset) {
  const model = chosenModel(form);
  const before = checkedPreset(form);
  const preset = before && model.presets.includes(before) ? before : model.presets[0];
  buildPresetCards(slot.presets, model, preset, choosePreset);
  showFamily(form, slot.presetsFor, model);
  if (preset === before) {
    setModelResolution(form, model);
    form.resolution.dispatchEvent(new Event("input"));
  } else {
    choosePreset(preset);
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
    const job = await uploadJob(files, readSettings(form), photos.captions(), (fraction) => showUploadProgress(slot, fraction));
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

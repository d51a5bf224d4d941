// @ts-check
// The new job's base model as the server describes it (GET /api/info's models): its family, the side it
// draws at, and the presets that fit it. The preset cards show only those, each with why it fits.

import { cloneTemplate } from "../dom.js";
import { session } from "../session.js";

/** @typedef {import("../session.js").BaseModel} BaseModel */
/** @typedef {import("../session.js").Preset} Preset */

/**
 * The server's facts about base model `name`; a server older than model families knows none, and every
 * preset is offered then.
 * @returns {BaseModel}
 */
export function modelFacts(/** @type {string} */ name) {
  const found = (session.info?.models || []).find((model) => model.name === name);
  if (found) return found;
  return { name, family: null, family_title: null, resolution: null, presets: session.presets.map((preset) => preset.name) };
}

/** The base model the form has chosen (its field sits under "Advanced settings"), else the server's default. */
export function chosenModel(/** @type {HTMLFormElement} */ form) {
  const control = /** @type {HTMLSelectElement | null} */ (form.elements.namedItem("base_model"));
  return modelFacts(control?.value || session.info?.default_base_model || "");
}

/** The model's family and size in words, e.g. "Stable Diffusion XL, 1024 px". */
export function familyText(/** @type {BaseModel} */ model) {
  if (!model.family) return "Family not known yet (a worker has not downloaded it): every preset is offered.";
  return `${model.family_title}, ${model.resolution} px`;
}

/** The name of the preset card that is checked; null before there are any. */
export function checkedPreset(/** @type {HTMLFormElement} */ form) {
  const checked = /** @type {HTMLInputElement | null} */ (form.querySelector('input[name="preset"]:checked'));
  return checked ? checked.value : null;
}

/**
 * Replace the preset cards with those that fit `model`, `checked` checked; `onChoose` runs when one is picked.
 * @param {HTMLElement} container
 * @param {BaseModel} model
 * @param {string} checked
 * @param {(name: string) => void} onChoose
 */
export function buildPresetCards(container, model, checked, onChoose) {
  const fitting = model.presets
    .map((name) => session.presets.find((preset) => preset.name === name))
    .filter((preset) => preset !== undefined);
  container.replaceChildren(...fitting.map((preset) => presetCard(/** @type {Preset} */ (preset), checked, onChoose)));
}

function presetCard(/** @type {Preset} */ preset, /** @type {string} */ checked, /** @type {(name: string) => void} */ onChoose) {
  const card = cloneTemplate("tpl-preset");
  card.input.value = preset.name;
  card.input.checked = preset.name === checked;
  card.title.textContent = preset.title;
  card.summary.textContent = preset.summary;
  card.reason.textContent = preset.reason || "";
  card.reason.hidden = !preset.reason;
  card.input.addEventListener("change", () => onChoose(preset.name));
  return card.element;
}

/** Show the model's family beside its field and above the preset cards. */
export function showFamily(/** @type {HTMLFormElement} */ form, /** @type {HTMLElement} */ presetsFor, /** @type {BaseModel} */ model) {
  presetsFor.textContent = `Presets for ${model.name}: ${familyText(model)}.`;
  const wrapper = form.querySelector('[data-field="settings.base_model"]');
  if (!wrapper) return;
  let line = /** @type {HTMLElement | null} */ (wrapper.querySelector(".model-family"));
  if (!line) {
    line = document.createElement("p");
    line.className = "help model-family";
    line.id = "family-base_model";
    wrapper.querySelector(".help")?.after(line);
    wrapper.querySelector("select")?.setAttribute("aria-describedby", "help-base_model family-base_model");
  }
  line.textContent = familyText(model);
}

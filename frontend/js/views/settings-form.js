// @ts-check
// The new job's settings as the server describes them (GET /api/training-settings). The Subject
// group's settings are the form's main fields (index.html); every other group is a fieldset under
// "Advanced settings", in the server's order, the expert ones in a disclosure of their own. A setting
// with `shown_when` shows (and is sent) only while the settings it names have those values (given a list
// of such conditions: while any of them holds).

import { element } from "../dom.js";
import { buildField, helpText, readField, writeField } from "../fields.js";
import { session, settingNamed } from "../session.js";

/** @typedef {import("../session.js").Setting} Setting */

const MAIN_GROUP = "Subject";
// The optimizer's details and the training state: rarely changed, so out of the way until asked for.
const EXPERT_GROUPS = new Set(["Optimizer", "State"]);
// note: demo mode trains the tiny built-in model; small and short keeps its jobs quick.
const DEMO_RESOLUTION = 64;
const DEMO_MAX_STEPS = 200;

/**
 * The page's view of a setting: the base models on offer are the server's facts (GET /api/info).
 * @returns {Setting}
 */
function pageSetting(/** @type {Setting} */ setting) {
  if (setting.name !== "base_model" || !session.info) return setting;
  return { ...setting, type: "choice", choices: session.info.base_models, default: session.info.default_base_model };
}

function formSettings() {
  return session.settings.map(pageSetting);
}

/** @returns {import("../fields.js").Control | null} */
function controlOf(/** @type {HTMLFormElement} */ form, /** @type {string} */ name) {
  return /** @type {any} */ (form.elements.namedItem(name));
}

/**
 * Build every setting's field into the form: the main group's into its fieldset (those index.html
 * lacks, so the preset cards must be there first), the others into `advanced` and `expert`; the
 * expert disclosure hides when it has nothing.
 * @param {HTMLFormElement} form
 * @param {{advanced: HTMLElement, expert: HTMLElement, expertFields: HTMLElement}} containers
 */
export function buildSettingsFields(form, { advanced, expert, expertFields }) {
  for (const group of session.groups) {
    const settings = formSettings().filter((setting) => setting.group === group);
    if (group === MAIN_GROUP) fillMainGroup(form, settings);
    else if (settings.length) (EXPERT_GROUPS.has(group) ? expertFields : advanced).append(groupFieldset(group, settings));
  }
  expert.hidden = !expertFields.children.length;
  form.addEventListener("change", () => showApplicable(form));
}

/** index.html has the main fields (the preset as cards); they take their help from the server. */
function fillMainGroup(/** @type {HTMLFormElement} */ form, /** @type {Setting[]} */ settings) {
  const fieldset = /** @type {HTMLElement} */ (form.querySelector(`[data-group="${MAIN_GROUP}"]`));
  for (const setting of settings) {
    const control = controlOf(form, setting.name);
    if (!control) {
      fieldset.append(buildField(setting));
      continue;
    }
    const help = document.getElementById(`help-${setting.name}`);
    if (help) help.textContent = helpText(setting);
    if (setting.max_length && control instanceof HTMLInputElement) control.maxLength = setting.max_length;
  }
}

function groupFieldset(/** @type {string} */ group, /** @type {Setting[]} */ settings) {
  const fieldset = element("fieldset", "", "field-group");
  fieldset.dataset.group = group;
  fieldset.append(element("legend", group), ...settings.map((setting) => buildField(setting)));
  return fieldset;
}

/**
 * Fill the form with a preset's values over the server's defaults, at the base model's resolution (demo mode:
 * small and short).
 * @param {HTMLFormElement} form
 * @param {string} name
 * @param {import("../session.js").BaseModel} model
 */
export function applyPreset(form, name, model) {
  const preset = session.presets.find((candidate) => candidate.name === name);
  const settings = formSettings();
  /** @type {Record<string, any>} */
  const values = Object.fromEntries(settings.map((setting) => [setting.name, setting.default]));
  Object.assign(values, preset ? preset.values : {});
  if (session.info?.demo_mode) {
    values.resolution = DEMO_RESOLUTION;
    values.max_train_steps = Math.min(values.max_train_steps, DEMO_MAX_STEPS);
  }
  // note: the base model stays as chosen; the preset does not choose itself; what is required is the user's.
  const kept = new Set(["base_model", "preset"]);
  for (const setting of settings.filter((candidate) => !kept.has(candidate.name) && !candidate.required)) {
    const control = controlOf(form, setting.name);
    if (control) writeField(control, setting, values[setting.name]);
  }
  setModelResolution(form, model);
  showApplicable(form);
}

/** Set the resolution to the one the base model draws at, when the server knows it. */
export function setModelResolution(/** @type {HTMLFormElement} */ form, /** @type {import("../session.js").BaseModel} */ model) {
  const control = controlOf(form, "resolution");
  if (control && model.resolution) writeField(control, settingNamed("resolution"), model.resolution);
}

/** The settings to send: every field shown (a hidden one is left to the server); empty optional ones left out. */
export function readSettings(/** @type {HTMLFormElement} */ form) {
  /** @type {Record<string, any>} */
  const settings = {};
  for (const setting of formSettings()) {
    const control = controlOf(form, setting.name);
    if (!control || !applies(form, setting)) continue;
    const value = readField(control, setting);
    if (value !== null) settings[setting.name] = value;
  }
  return settings;
}

/** Whether the settings `shown_when` names have the values it asks for (for a list: those of any one). */
function applies(/** @type {HTMLFormElement} */ form, /** @type {Setting} */ setting) {
  const conditions = Array.isArray(setting.shown_when) ? setting.shown_when : [setting.shown_when || {}];
  return conditions.some((condition) => Object.entries(condition).every(([name, wanted]) => {
    const control = controlOf(form, name);
    return Boolean(control) && readField(/** @type {any} */ (control), pageSetting(settingNamed(name))) === wanted;
  }));
}

/** Show the fields that apply, and the groups with any field shown. */
function showApplicable(/** @type {HTMLFormElement} */ form) {
  for (const setting of session.settings.filter((candidate) => candidate.shown_when)) {
    const wrapper = /** @type {HTMLElement | null} */ (form.querySelector(`[data-field="settings.${setting.name}"]`));
    if (wrapper) wrapper.hidden = !applies(form, setting);
  }
  for (const fieldset of /** @type {NodeListOf<HTMLElement>} */ (form.querySelectorAll("fieldset[data-group]"))) {
    const fields = /** @type {HTMLElement[]} */ ([...fieldset.querySelectorAll("[data-field]")]);
    fieldset.hidden = fields.length > 0 && fields.every((field) => field.hidden);
  }
}

// @ts-check
// Form fields built from a setting's description (the server's, or the generate form's own): a
// labelled control with its help line, range and error slot; values written to it and read back.

import { element } from "./dom.js";
import { formatValue } from "./format.js";

/** @typedef {import("./session.js").Setting} Setting */
/** @typedef {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement | RadioNodeList} Control */

/**
 * A labelled control with its help line and error slot. Ids: `f-<name>` for the new job's settings
 * (help `help-<name>`, error `err-<name>`), `g-<name>` for the generate form (`help-g-<name>`, ...).
 * @param {Setting} setting
 * @param {{prefix?: string, fieldPrefix?: string}} [options] `fieldPrefix`: how the API names the field's errors
 */
export function buildField(setting, { prefix = "f-", fieldPrefix = "settings." } = {}) {
  const wrapper = element("div", "", setting.type === "bool" ? "field check" : "field");
  wrapper.dataset.field = `${fieldPrefix}${setting.name}`;
  const control = buildControl(setting);
  control.id = `${prefix}${setting.name}`;
  control.name = setting.name;
  const key = control.id.replace(/^f-/, "");
  control.setAttribute("aria-describedby", `help-${key}`);
  const label = element("label", setting.label || setting.name, setting.label ? "" : "code-label");
  label.htmlFor = control.id;
  const help = element("p", helpText(setting), "help");
  help.id = `help-${key}`;
  const error = element("p", "", "field-error");
  error.id = `err-${key}`;
  error.hidden = true;
  wrapper.append(...(setting.type === "bool" ? [control, label] : [label, control]), help, error);
  return wrapper;
}

/** The setting's help, then its range in words: "Photos per step (1 to 64)". */
export function helpText(/** @type {Setting} */ setting) {
  const limits = setting.type === "list" ? listText(setting) : rangeText(setting);
  return limits ? `${setting.help} (${limits})` : setting.help;
}

function rangeText(/** @type {Setting} */ setting) {
  const { minimum: low = null, maximum: high = null, exclusive_minimum: aboveLow, exclusive_maximum: belowHigh } = setting;
  const lowText = low === null ? "" : `${aboveLow ? "above " : ""}${formatValue(low)}`;
  const highText = high === null ? "" : `${belowHigh ? "below " : ""}${formatValue(high)}`;
  let text = "";
  if (lowText && highText) text = aboveLow ? `${lowText}, ${belowHigh ? "" : "up to "}${highText}` : `${lowText} to ${highText}`;
  else if (lowText) text = aboveLow ? lowText : `at least ${lowText}`;
  else if (highText) text = belowHigh ? highText : `at most ${highText}`;
  if (setting.multiple_of) text += `${text ? ", " : ""}in steps of ${setting.multiple_of}`;
  return text;
}

function listText(/** @type {Setting} */ setting) {
  return setting.max_items ? `one per line, at most ${setting.max_items}` : "one per line";
}

/** @returns {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement} */
function buildControl(/** @type {Setting} */ setting) {
  if (setting.type === "choice") {
    const select = document.createElement("select");
    for (const choice of setting.choices || []) select.append(new Option(choice, choice));
    return select;
  }
  if (setting.type === "list") {
    const textarea = document.createElement("textarea");
    textarea.rows = 3;
    return textarea;
  }
  const input = document.createElement("input");
  input.type = { bool: "checkbox", int: "number", float: "text", string: "text" }[setting.type];
  // note: floats are text, so that 2e-6 reads as written and a typo reaches the API, which names the field.
  if (setting.type === "float") input.inputMode = "decimal";
  if (setting.type === "int") setIntegerRange(input, setting);
  if (setting.max_length) input.maxLength = setting.max_length;
  return input;
}

function setIntegerRange(/** @type {HTMLInputElement} */ input, /** @type {Setting} */ setting) {
  const { minimum: low = null, maximum: high = null } = setting;
  if (low !== null) input.min = String(setting.exclusive_minimum ? Math.floor(low) + 1 : low);
  if (high !== null) input.max = String(setting.exclusive_maximum ? Math.ceil(high) - 1 : high);
  input.step = String(setting.multiple_of || 1);
}

export function writeField(/** @type {Control} */ control, /** @type {Setting} */ setting, /** @type {any} */ value) {
  if (setting.type === "bool") /** @type {HTMLInputElement} */ (control).checked = Boolean(value);
  else if (setting.type === "list") control.value = (value || []).join("\n");
  else control.value = formatValue(value);
}

/**
 * The control's value as the API takes it. Empty is null for a nullable setting (the caller leaves it
 * out); otherwise it goes as typed, like a number with a typo, so that the API names the field.
 */
export function readField(/** @type {Control} */ control, /** @type {Setting} */ setting) {
  if (setting.type === "bool") return /** @type {HTMLInputElement} */ (control).checked;
  if (setting.type === "choice") return control.value;
  if (setting.type === "list") return control.value.split("\n").map((line) => line.trim()).filter(Boolean);
  const text = control.value.trim();
  if (text === "") return setting.nullable ? null : text;
  if (setting.type === "string") return text;
  const number = Number(text);
  return Number.isFinite(number) ? number : text;
}

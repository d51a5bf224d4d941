// @ts-check
// Errors beside the field they name: the API's `field` ("settings.learning_rate", "photos", "prompt")
// finds the [data-field] wrapper; the control is marked aria-invalid and described by the message.

/** @typedef {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement} Control */

/** Hide the form's error and every field's. */
export function clearErrors(/** @type {HTMLFormElement} */ form, /** @type {HTMLElement} */ formError) {
  formError.hidden = true;
  for (const control of form.querySelectorAll("[aria-invalid]")) {
    setFieldError(/** @type {Control} */ (control), errorOf(/** @type {Control} */ (control)), "");
  }
}

/** Show an error beside the field it names (opening what hides it), or above the form. */
export function showFieldError(
  /** @type {HTMLFormElement} */ form,
  /** @type {HTMLElement} */ formError,
  /** @type {string | null} */ field,
  /** @type {string} */ message,
) {
  const wrapper = fieldWrapper(form, field);
  if (!wrapper) {
    formError.textContent = message;
    formError.hidden = false;
    formError.scrollIntoView({ block: "center" });
    return;
  }
  for (let details = wrapper.closest("details"); details; details = details.parentElement?.closest("details") || null) {
    details.open = true;
  }
  const control = /** @type {Control} */ (wrapper.querySelector("input, select, textarea"));
  setFieldError(control, errorOf(control), message);
  formError.textContent = "The form has a problem: see the highlighted field.";
  formError.hidden = false;
  control.focus();
}

/** Show `message` (or no error, when empty) in `error`, and tie it to `control` for assistive technology. */
export function setFieldError(/** @type {Control} */ control, /** @type {HTMLElement} */ error, /** @type {string} */ message) {
  error.textContent = message;
  error.hidden = !message;
  const described = (control.getAttribute("aria-describedby") || "").split(" ").filter((id) => id && id !== error.id);
  if (message) {
    control.setAttribute("aria-invalid", "true");
    described.push(error.id);
  } else {
    control.removeAttribute("aria-invalid");
  }
  control.setAttribute("aria-describedby", described.join(" "));
}

function fieldWrapper(/** @type {HTMLFormElement} */ form, /** @type {string | null} */ field) {
  if (!field) return null;
  // note: a list item's error (settings.validation_prompts.2) belongs to the list's field.
  const name = field.split(".").filter((part) => !/^\d+$/.test(part)).join(".");
  const wrappers = /** @type {HTMLElement[]} */ ([...form.querySelectorAll("[data-field]")]);
  return wrappers.find((wrapper) => wrapper.dataset.field === name) || null;
}

/** The error slot of a control: err-photos for the photo input, err-<name> for `f-<name>`, err-g-<name> for `g-<name>`. */
function errorOf(/** @type {Control} */ control) {
  const id = control.id === "photo-input" ? "err-photos" : `err-${control.id.replace(/^f-/, "")}`;
  return /** @type {HTMLElement} */ (document.getElementById(id));
}

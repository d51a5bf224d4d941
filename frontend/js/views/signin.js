// @ts-check
// Sign in with an API token (`make run` prints a link that does it; `dreambooth create-user` prints one).

import { focusHeading, mountView } from "../dom.js";
import { setFieldError } from "../form-errors.js";

/** Show the sign-in form, with `message` as its error; `onToken` gets the token pasted. */
export function showSignIn(/** @type {string} */ message, /** @type {(token: string) => void} */ onToken) {
  /** @type {HTMLElement} */ (document.querySelector(".site-nav")).hidden = true;
  /** @type {HTMLElement} */ (document.getElementById("demo-banner")).hidden = true;
  const { root, form, error } = mountView("tpl-signin");
  setFieldError(form.token, error, message);
  form.addEventListener("submit", (/** @type {SubmitEvent} */ event) => {
    event.preventDefault();
    if (!form.token.value.trim()) return setFieldError(form.token, error, "Paste a token first.");
    onToken(form.token.value);
  });
  focusHeading(root);
}

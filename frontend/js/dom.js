// @ts-check
// Small helpers every view uses: views and parts cloned from index.html's templates, elements with
// text (API and user strings reach the page through textContent only), status badges, progress bars.

import { phaseText, stepsText } from "./format.js";

/**
 * A template's elements by their data-slot names, camel-cased ("upload-bar" -> uploadBar).
 * @typedef {Record<string, any>} Slots
 */

/** @returns {Slots} */
function slots(/** @type {ParentNode} */ root) {
  /** @type {Slots} */
  const found = {};
  for (const node of root.querySelectorAll("[data-slot]")) {
    const name = /** @type {HTMLElement} */ (node).dataset.slot || "";
    found[name.replace(/-(\w)/g, (_, letter) => letter.toUpperCase())] = node;
  }
  return found;
}

function template(/** @type {string} */ id) {
  return /** @type {HTMLTemplateElement} */ (document.getElementById(id)).content.cloneNode(true);
}

/**
 * Clone a template into <main>; returns <main> as `root` and the template's slots.
 * @returns {Slots & {root: HTMLElement}}
 */
export function mountView(/** @type {string} */ templateId) {
  const main = /** @type {HTMLElement} */ (document.getElementById("view"));
  main.replaceChildren(template(templateId));
  return { root: main, ...slots(main) };
}

/**
 * Clone a template for a part of a view; returns its first element and its slots.
 * @returns {Slots & {element: HTMLElement}}
 */
export function cloneTemplate(/** @type {string} */ templateId) {
  const fragment = /** @type {DocumentFragment} */ (template(templateId));
  return { element: /** @type {HTMLElement} */ (fragment.firstElementChild), ...slots(fragment) };
}

/** Name the tab after the view's heading and move the focus there, for screen readers and keyboards. */
export function focusHeading(/** @type {HTMLElement} */ root) {
  const heading = /** @type {HTMLElement} */ (root.querySelector("h1"));
  document.title = `${heading.textContent || "Job"} · Dreambooth Studio`;
  heading.focus();
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @returns {HTMLElementTagNameMap[K]}
 */
export function element(tag, text = "", className = "") {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

export function setBadge(/** @type {HTMLElement} */ badge, /** @type {string} */ status) {
  badge.textContent = status;
  badge.dataset.status = status;
}

/** A job's progress bar: indeterminate while it waits or prepares, else steps done of all. */
export function setProgress(/** @type {HTMLProgressElement} */ bar, /** @type {import("./job-data.js").Job} */ job) {
  const { step, total_steps: total } = job.progress;
  if (job.status === "queued" || (job.status === "running" && !total)) {
    bar.removeAttribute("value");
    bar.setAttribute("aria-valuetext", phaseText(job));
    return;
  }
  bar.max = total || 1;
  bar.value = job.status === "succeeded" ? bar.max : step;
  bar.setAttribute("aria-valuetext", total ? stepsText(job) : phaseText(job));
}

/** Wait `ms`, or reject with an AbortError as soon as `signal` aborts (the view was left). */
export function sleep(/** @type {number} */ ms, /** @type {AbortSignal} */ signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("left", "AbortError"));
    });
  });
}

/** Show an error message with role alert at the end of `container`. */
export function alertError(/** @type {HTMLElement} */ container, /** @type {Error} */ error) {
  const message = element("p", error.message, "field-error");
  message.setAttribute("role", "alert");
  container.append(message);
}

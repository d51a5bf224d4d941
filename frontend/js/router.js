// @ts-check
// One view at a time in <main>, chosen by the address's hash (#/, #/new, #/jobs/<id>). Before any
// view the session learns about the server: its facts, presets and training settings.

import { api } from "./api.js";
import { BlobCache } from "./blobs.js";
import { element, focusHeading } from "./dom.js";
import { onSignOut, session, signIn, signOut } from "./session.js";
import { showSignIn } from "./views/signin.js";

/**
 * What a view must stop and release when it is left: its requests and timers (`signal` aborts),
 * and the object URLs of its images.
 * @typedef {{controller: AbortController, signal: AbortSignal, blobs: BlobCache}} View
 */

/** @typedef {(view: View, ...params: string[]) => void | Promise<void>} ShowView */

/** @type {{pattern: RegExp, show: ShowView}[]} */
const routes = [];
/** @type {View | null} */
let view = null;

/** Show `show`'s view for addresses matching `pattern`, its groups as parameters; first match wins. */
export function addRoute(/** @type {RegExp} */ pattern, /** @type {ShowView} */ show) {
  routes.push({ pattern, show });
}

/** Whether `candidate` is still the view on screen (and not one the user has left). */
export function isCurrent(/** @type {View} */ candidate) {
  return candidate === view;
}

/** Show the view of `hash`, also when it is the one already in the address bar. */
export function go(/** @type {string} */ hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

/** Mark the navigation link of the view shown (`jobs` or `new`). */
export function markNav(/** @type {string} */ name) {
  /** @type {HTMLElement} */ (document.querySelector(".site-nav")).hidden = false;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (/** @type {HTMLElement} */ (link).dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

export function start() {
  /** @type {HTMLElement} */ (document.getElementById("sign-out")).addEventListener("click", () => signOut("You signed out."));
  onSignOut(showSignInView);
  window.addEventListener("hashchange", () => {
    takeTokenFromUrl();
    route();
  });
  takeTokenFromUrl();
  route();
}

function leaveView() {
  if (!view) return;
  view.controller.abort();
  view.blobs.clear();
  view = null;
}

function enterView() {
  leaveView();
  const controller = new AbortController();
  view = { controller, signal: controller.signal, blobs: new BlobCache() };
  return view;
}

async function route() {
  if (!session.token) return showSignInView();
  const current = enterView();
  try {
    await loadServer();
    if (!isCurrent(current)) return;
    for (const { pattern, show } of routes) {
      const match = location.hash.match(pattern);
      if (match) return await show(current, ...match.slice(1));
    }
  } catch (error) {
    const { status, name } = /** @type {{status?: number, name?: string}} */ (error);
    if (isCurrent(current) && status !== 401 && name !== "AbortError") showFailure(/** @type {Error} */ (error));
  }
}

/** What the server says about itself, once per sign-in; the views read it from the session. */
async function loadServer() {
  if (!session.info) {
    const [info, presets, described] = await Promise.all([api("/api/info"), api("/api/presets"), api("/api/training-settings")]);
    Object.assign(session, { info, presets, groups: described.groups, settings: described.settings });
  }
  /** @type {HTMLElement} */ (document.getElementById("demo-banner")).hidden = !session.info?.demo_mode;
}

/** A link from `make run` signs in: #token=<token>, then the token leaves the address bar. */
function takeTokenFromUrl() {
  const match = location.hash.match(/^#token=(.+)$/);
  if (!match) return;
  signIn(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
}

function showSignInView(message = "") {
  leaveView();
  showSignIn(message, (token) => {
    signIn(token);
    go("#/");
  });
}

function showFailure(/** @type {Error} */ error) {
  const main = /** @type {HTMLElement} */ (document.getElementById("view"));
  const heading = element("h1", "Something went wrong");
  heading.tabIndex = -1;
  main.replaceChildren(heading, element("p", error.message, "lead"));
  focusHeading(main);
}

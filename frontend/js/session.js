// @ts-check
// The state every view shares: the token, and what the server told us about itself. Nothing else
// is global; a view keeps its own state in the objects it builds.

const TOKEN_KEY = "dreambooth-studio.token";

/**
 * One training setting as GET /api/training-settings describes it (backend/training_settings.py).
 * The generate form describes its fields in the same shape, with a `label`.
 * @typedef {object} Setting
 * @property {string} name
 * @property {"int" | "float" | "bool" | "string" | "choice" | "list"} type
 * @property {any} [default]
 * @property {boolean} [required]
 * @property {boolean} [nullable] empty is allowed and sent as nothing
 * @property {string[] | null} [choices]
 * @property {number | null} [minimum]
 * @property {number | null} [maximum]
 * @property {boolean} [exclusive_minimum]
 * @property {boolean} [exclusive_maximum]
 * @property {number | null} [multiple_of]
 * @property {number | null} [max_items]
 * @property {number | null} [max_length]
 * @property {string} help
 * @property {string} [group]
 * @property {Record<string, any> | Record<string, any>[] | null} [shown_when] a list: any of its conditions
 * @property {string} [label] a plain-words label; without one the setting's name is the label
 */

/**
 * A base model the server offers, with its family as far as the server can tell (null: not known yet).
 * @typedef {object} BaseModel
 * @property {string} name
 * @property {string | null} family "sd1", "sd2", "sdxl"
 * @property {string | null} family_title
 * @property {number | null} resolution the side it draws at: its jobs' default resolution
 * @property {string[]} presets the names of the presets that fit it, its default first
 */

/**
 * @typedef {object} ServerInfo
 * @property {boolean} demo_mode
 * @property {string[]} base_models
 * @property {string} default_base_model
 * @property {BaseModel[]} [models] absent from servers older than model families
 * @property {{max_photos: number, max_photo_bytes: number, max_photo_pixels: number}} limits
 */

/**
 * A starting point for a job's settings (GET /api/presets).
 * @typedef {object} Preset
 * @property {string} name
 * @property {string} title
 * @property {string} summary
 * @property {string[]} [families] the model families it fits
 * @property {string} [reason] one line: why it fits them, and where its values come from
 * @property {Record<string, any>} values
 */

/**
 * The token (kept in localStorage), and what the server said about itself, loaded once per sign-in:
 * facts (GET /api/info), presets, and the training settings with their groups in the order the page
 * shows them (GET /api/training-settings).
 * @type {{
 *   token: string | null,
 *   info: ServerInfo | null,
 *   presets: Preset[],
 *   groups: string[],
 *   settings: Setting[],
 * }}
 */
export const session = { token: localStorage.getItem(TOKEN_KEY), info: null, presets: [], groups: [], settings: [] };

/** @type {((message: string) => void)[]} */
const signOutListeners = [];

export function signIn(/** @type {string} */ token) {
  session.token = token.trim();
  forgetServer();
  localStorage.setItem(TOKEN_KEY, session.token);
}

/** Forget the token (and tell the listeners, which show the sign-in view with `message`). */
export function signOut(message = "") {
  session.token = null;
  forgetServer();
  localStorage.removeItem(TOKEN_KEY);
  for (const listener of signOutListeners) listener(message);
}

export function onSignOut(/** @type {(message: string) => void} */ listener) {
  signOutListeners.push(listener);
}

function forgetServer() {
  session.info = null;
  session.presets = [];
  session.groups = [];
  session.settings = [];
}

/** The server's description of one training setting. */
export function settingNamed(/** @type {string} */ name) {
  const found = session.settings.find((setting) => setting.name === name);
  if (!found) throw new Error(`the server describes no training setting ${name}`);
  return found;
}

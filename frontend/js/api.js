// @ts-check
// The API client: JSON requests with the bearer token, errors as ApiError, server-sent events over
// fetch, and the job upload (XMLHttpRequest, for its upload progress).

import { session, signOut } from "./session.js";

const UNAUTHORIZED = "Your token was not accepted: it is unknown, revoked or expired.";

/** An error the API answered with (`{"error": {code, message, field}}`), or a network failure. */
export class ApiError extends Error {
  /**
   * @param {number} status the HTTP status; 0 when the server could not be reached
   * @param {string} code
   * @param {string} message
   * @param {string | null} field the input it names, e.g. "settings.learning_rate" or "photos"
   */
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** @returns {ApiError} */
function apiError(/** @type {number} */ status, /** @type {any} */ body) {
  const error = body && body.error;
  if (error) return new ApiError(status, error.code, error.message, error.field || null);
  return new ApiError(status, "http_error", `The server answered ${status || "nothing"}.`);
}

async function errorFrom(/** @type {Response} */ response) {
  const body = await response.json().catch(() => null);
  return apiError(response.status, body);
}

/** Fetch with the token; a 401 signs out, any other error status throws an ApiError. */
export async function request(/** @type {string} */ path, /** @type {RequestInit} */ options = {}) {
  const headers = { ...options.headers, Authorization: `Bearer ${session.token}` };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    signOut(UNAUTHORIZED);
    throw await errorFrom(response);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** A request whose answer is JSON (or nothing, for 204). */
export async function api(/** @type {string} */ path, /** @type {RequestInit} */ options = {}) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** POST JSON and read the JSON answer. */
export function postJson(/** @type {string} */ path, /** @type {any} */ body, /** @type {AbortSignal} */ signal) {
  return api(path, { method: "POST", signal, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

/** Server-sent events over fetch, since EventSource cannot send the Authorization header. */
export async function readEvents(
  /** @type {string} */ url, /** @type {AbortSignal} */ signal, /** @type {(data: any) => void} */ onData,
) {
  const response = await request(url, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.body) return;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    const events = buffer.split("\n\n");
    buffer = events.pop() || "";
    for (const event of events) {
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart());
      if (data.length) onData(JSON.parse(data.join("\n")));
    }
  }
}

/**
 * The photos, settings and captions (file name → caption) as the create-job form.
 * @param {File[]} files
 * @param {Record<string, any>} settings
 * @param {Record<string, string>} captions
 */
function photoForm(files, settings, captions) {
  const body = new FormData();
  for (const file of files) body.append("photos", file, file.name);
  body.append("settings", JSON.stringify(settings));
  if (Object.keys(captions).length) body.append("captions", JSON.stringify(captions));
  return body;
}

/**
 * POST /api/photos/preview: each photo's crop box, prompt and warnings as the trainer will use them.
 * @param {File[]} files
 * @param {Record<string, any>} settings
 * @param {Record<string, string>} captions
 * @param {AbortSignal} signal
 */
export function previewPhotos(files, settings, captions, signal) {
  return api("/api/photos/preview", { method: "POST", body: photoForm(files, settings, captions), signal });
}

/**
 * POST /api/jobs with the photos, settings and captions; XMLHttpRequest, whose upload progress events fetch lacks.
 * @param {File[]} files
 * @param {Record<string, any>} settings
 * @param {Record<string, string>} captions
 * @param {(fraction: number) => void} onProgress
 * @returns {Promise<any>} the new job
 */
export function uploadJob(files, settings, captions, onProgress) {
  return new Promise((resolve, reject) => {
    const body = photoForm(files, settings, captions);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs");
    xhr.setRequestHeader("Authorization", `Bearer ${session.token}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) return resolve(xhr.response);
      if (xhr.status === 401) signOut(UNAUTHORIZED);
      reject(apiError(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "The upload failed: the server could not be reached.")));
    xhr.send(body);
  });
}

// @ts-check
// The new job's photos: thumbnails showing the square the trainer keeps, and warnings (too few,
// duplicates, small, over the server's limits, unreadable) before anything is uploaded. Once the server has
// previewed them (POST /api/photos/preview), each thumbnail shows the crop box the server chose (the one training
// uses, faces included), the server's warnings, and an editable caption.

import { previewPhotos } from "../api.js";
import { cloneTemplate, element } from "../dom.js";
import { formatBytes, plural } from "../format.js";
import { session } from "../session.js";

const MIN_PHOTOS = 3;

/**
 * @typedef {object} Photo
 * @property {number} id
 * @property {File} file
 * @property {number} width
 * @property {number} height
 * @property {string | null} hash SHA-256 of the file, to find duplicates
 * @property {boolean} unreadable
 * @property {ImageBitmap | null} bitmap
 * @property {string} caption the user's caption (sent as the `captions` form field)
 * @property {any | null} server the server's preview of it: crop_box, width, height, checks, prompt
 */

// note: a preview decodes every photo on the server; wait for the user to pause before asking
const PREVIEW_DELAY_MS = 400;

/** The chosen photos, drawn into `thumbs` with their `warnings`; `resolution()` is the training size. */
export class PhotoSet {
  /**
   * @param {{dropzone: HTMLElement, thumbs: HTMLElement, warnings: HTMLElement}} slots
   * @param {() => number} resolution
   * @param {AbortSignal} signal aborts when the view is left
   * @param {() => Record<string, any>} settings the form's settings, for the server's preview
   */
  constructor({ dropzone, thumbs, warnings }, resolution, signal, settings) {
    this.dropzone = dropzone;
    this.thumbs = thumbs;
    this.warnings = warnings;
    this.resolution = resolution;
    this.settings = settings;
    this.signal = signal;
    /** @type {number | undefined} */
    this.previewTimer = undefined;
    /** @type {AbortController | null} */
    this.previewing = null;
    /** @type {Photo[]} */
    this.items = [];
    this.nextId = 1;
    this.input = /** @type {HTMLInputElement} */ (dropzone.querySelector("input"));
    this.input.addEventListener("change", () => {
      this.add([...(this.input.files || [])]);
      this.input.value = "";
    });
    this.listenForDrops(signal);
  }

  listenForDrops(/** @type {AbortSignal} */ signal) {
    const zone = this.dropzone;
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      this.add([...(event.dataTransfer?.files || [])]);
    });
    // note: a file dropped beside the zone must not make the browser navigate away from the form.
    window.addEventListener("dragover", (event) => event.preventDefault(), { signal });
    window.addEventListener("drop", (event) => event.preventDefault(), { signal });
  }

  add(/** @type {File[]} */ files) {
    for (const file of files) {
      /** @type {Photo} */
      const item = { id: this.nextId++, file, width: 0, height: 0, hash: null, unreadable: false, bitmap: null, caption: "", server: null };
      this.items.push(item);
      inspectPhoto(item).then(() => this.render());
    }
    this.render();
    this.preview();
  }

  /** Captions by file name, as the server takes them (empty ones left out). */
  captions() {
    return Object.fromEntries(this.items.filter((item) => item.caption.trim()).map((item) => [item.file.name, item.caption.trim()]));
  }

  /** Ask the server, a moment from now, how it will crop and judge the photos under the form's settings. */
  preview() {
    clearTimeout(this.previewTimer);
    this.previewTimer = window.setTimeout(() => this.fetchPreview(), PREVIEW_DELAY_MS);
  }

  async fetchPreview() {
    this.previewing?.abort();
    const items = [...this.items];
    if (!items.length || this.signal.aborted) return;
    const controller = (this.previewing = new AbortController());
    try {
      const answer = await previewPhotos(items.map((item) => item.file), this.settings(), this.captions(), controller.signal);
      if (controller.signal.aborted) return;
      items.forEach((item, index) => (item.server = answer.photos[index]));
      this.render();
    } catch {
      // note: an unreadable file or a half-filled form: the thumbnails keep the page's own guesses until submit
    }
  }

  remove(/** @type {number} */ id) {
    const item = this.items.find((candidate) => candidate.id === id);
    if (item && item.bitmap) item.bitmap.close();
    this.items = this.items.filter((candidate) => candidate.id !== id);
    this.render();
    this.preview();
    this.input.focus();
  }

  render() {
    const resolution = this.resolution();
    const duplicates = duplicateIds(this.items);
    this.thumbs.replaceChildren(...this.items.map((item) => this.thumb(item, resolution, duplicates)));
    const warnings = photoWarnings(this.items, resolution, duplicates);
    this.warnings.replaceChildren(...warnings.map((text) => element("li", text)));
  }

  thumb(/** @type {Photo} */ item, /** @type {number} */ resolution, /** @type {Set<number>} */ duplicates) {
    const tile = cloneTemplate("tpl-thumb");
    tile.name.textContent = item.file.name;
    tile.name.title = item.file.name;
    tile.remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    tile.remove.addEventListener("click", () => this.remove(item.id));
    const box = item.server?.crop_box ?? null;
    const bucket = item.server?.checks?.bucket ?? null;
    if (item.bitmap) {
      drawCrop(tile.canvas, item.bitmap, item.server);
      const random = item.server && !box && !bucket ? ", random crops" : "";
      const size = bucket ? `${bucket[0]}×${bucket[1]} (its aspect bucket)` : `${resolution}×${resolution}${random}`;
      tile.size.textContent = `${item.width}×${item.height} → ${size}`;
    } else {
      tile.size.textContent = item.unreadable ? "not readable as an image" : "reading…";
    }
    tile.canvas.dataset.cropBox = box ? box.join(",") : "";
    const flags = [];
    if (item.unreadable) flags.push("unreadable");
    if (duplicates.has(item.id)) flags.push("duplicate");
    // note: with aspect buckets the server alone can tell (a photo must cover its bucket, not the square)
    if (!bucket && isSmall(item, resolution)) flags.push("small");
    if (isTooLarge(item)) flags.push("too large");
    const shown = flags.map((flag) => element("span", flag, "flag"));
    for (const warning of item.server?.checks?.warnings ?? []) {
      const flag = element("span", warning.code.replaceAll("_", " "), "flag");
      flag.title = warning.message;
      flag.dataset.code = warning.code;
      shown.push(flag);
    }
    tile.flags.replaceChildren(...shown);
    tile.element.classList.toggle("has-warning", shown.length > 0);
    tile.element.append(this.captionInput(item));
    return tile.element;
  }

  captionInput(/** @type {Photo} */ item) {
    const input = document.createElement("input");
    input.type = "text";
    input.className = "thumb-caption";
    input.placeholder = "caption (optional)";
    input.maxLength = 1000;
    input.value = item.caption;
    input.setAttribute("aria-label", `Caption of ${item.file.name}`);
    input.addEventListener("input", () => (item.caption = input.value));
    // note: on change, not on every key: a preview re-draws the thumbnails, which would take the focus away
    input.addEventListener("change", () => this.preview());
    return input;
  }
}

async function inspectPhoto(/** @type {Photo} */ item) {
  const [bitmap, hash] = await Promise.all([
    createImageBitmap(item.file).catch(() => null),
    sha256(item.file).catch(() => null),
  ]);
  item.hash = hash;
  item.unreadable = bitmap === null;
  if (bitmap) Object.assign(item, { bitmap, width: bitmap.width, height: bitmap.height });
}

async function sha256(/** @type {File} */ file) {
  // note: crypto.subtle exists on secure origins only (https, localhost); elsewhere no duplicate check.
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * The square the trainer keeps, scaled to the canvas: the server's crop box (in its stored photo's pixels, which
 * may be smaller than the file's), else the photo's centre; with an aspect bucket, the whole photo (the trainer
 * cuts only its bucket's rounding).
 * @param {HTMLCanvasElement} canvas
 * @param {ImageBitmap} bitmap
 * @param {any | null} server
 */
function drawCrop(canvas, bitmap, server) {
  const context = canvas.getContext("2d");
  if (server?.checks?.bucket) {
    const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
    const [width, height] = [bitmap.width * scale, bitmap.height * scale];
    context?.clearRect(0, 0, canvas.width, canvas.height);
    context?.drawImage(bitmap, (canvas.width - width) / 2, (canvas.height - height) / 2, width, height);
    return;
  }
  let side = Math.min(bitmap.width, bitmap.height);
  let left = (bitmap.width - side) / 2;
  let top = (bitmap.height - side) / 2;
  if (server?.crop_box) {
    const scale = bitmap.width / server.width;
    [left, top] = [server.crop_box[0] * scale, server.crop_box[1] * scale];
    side = (server.crop_box[2] - server.crop_box[0]) * scale;
  }
  context?.drawImage(bitmap, left, top, side, side, 0, 0, canvas.width, canvas.height);
}

function isSmall(/** @type {Photo} */ item, /** @type {number} */ resolution) {
  return Boolean(item.bitmap) && Math.min(item.width, item.height) < resolution;
}

function limits() {
  if (!session.info) throw new Error("the server's limits are not loaded");
  return session.info.limits;
}

function isTooLarge(/** @type {Photo} */ item) {
  const { max_photo_bytes: maxBytes, max_photo_pixels: maxPixels } = limits();
  return item.file.size > maxBytes || item.width * item.height > maxPixels;
}

/** The photos whose file is the same as an earlier one's. */
function duplicateIds(/** @type {Photo[]} */ items) {
  const seen = new Set();
  const duplicates = new Set();
  for (const item of items) {
    if (!item.hash) continue;
    if (seen.has(item.hash)) duplicates.add(item.id);
    else seen.add(item.hash);
  }
  return duplicates;
}

function photoWarnings(/** @type {Photo[]} */ items, /** @type {number} */ resolution, /** @type {Set<number>} */ duplicates) {
  const warnings = [];
  const { max_photos: limit, max_photo_bytes: maxBytes, max_photo_pixels: maxPixels } = limits();
  const isAre = (/** @type {number} */ count) => (count === 1 ? "photo is" : "photos are");
  if (items.length && items.length < MIN_PHOTOS) {
    warnings.push(`Only ${plural(items.length, "photo")}: Dreambooth needs at least ${MIN_PHOTOS}, and 5 to 20 work best.`);
  }
  if (items.length > limit) warnings.push(`${items.length} photos: this server takes at most ${limit}. Remove ${items.length - limit}.`);
  if (duplicates.size) {
    warnings.push(`${plural(duplicates.size, "duplicate photo")} (the same file twice): remove the copies marked “duplicate”.`);
  }
  const small = items.filter((item) => isSmall(item, resolution));
  if (small.length) {
    warnings.push(`${small.length} ${isAre(small.length)} smaller than ${resolution} px on the short side and will be upscaled (marked “small”).`);
  }
  const large = items.filter(isTooLarge);
  if (large.length) {
    const sizeLimit = `${formatBytes(maxBytes)} or ${Math.round(maxPixels / 1e6)} megapixels`;
    warnings.push(`${large.length} ${isAre(large.length)} over this server's limit of ${sizeLimit} (marked “too large”).`);
  }
  const unreadable = items.filter((item) => item.unreadable);
  if (unreadable.length) warnings.push(`${plural(unreadable.length, "file")} could not be read as an image here; the server will check.`);
  return warnings;
}

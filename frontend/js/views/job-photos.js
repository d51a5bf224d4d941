// @ts-check
// The job page's photos as the trainer uses them: each stored photo whole, with the square the trainer
// keeps drawn over it (the server's crop box, the one training reads), its caption and prompt, and its
// warnings. A job's photos change once at most (the worker adds automatic captions before training), so they are
// drawn again only then, not on every update.

import { showImage } from "../blobs.js";
import { cloneTemplate, element } from "../dom.js";
import { formatTime, plural } from "../format.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {import("./job.js").JobPage} JobPage */

/**
 * An instance photo as the job object lists it (backend/schemas.py PhotoOut).
 * @typedef {object} JobPhoto
 * @property {number} position
 * @property {string | null} name
 * @property {number} width of the stored photo: the crop box is in these pixels
 * @property {number} height
 * @property {number[] | null} crop_box [left, top, right, bottom]; null: random crops
 * @property {string | null} caption
 * @property {string | null} [auto_caption] the captioning model's, for a photo given none
 * @property {string | null} prompt
 * @property {{usable: boolean, warnings: {code: string, message: string}[]} | null} checks
 * @property {string | null} url null once the retention rule deleted the photos
 */

/** Short labels of the server's warning codes (backend/photo_checks.py); the message is the tile's title. */
const WARNING_LABELS = {
  too_small: "too small",
  blurred: "blurred",
  duplicate: "duplicate",
  no_face: "no face",
  several_faces: "several faces",
  prompt_too_long: "prompt too long",
  low_jpeg_quality: "heavy JPEG",
};

export function renderJobPhotos(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  /** @type {JobPhoto[] | undefined} */
  const photos = /** @type {any} */ (job).photos;
  if (!photos || !photos.length) return;
  const shown = photos.map((photo) => photo.auto_caption ?? "").join("\n");
  if (page.photosShown === shown) return;
  page.photosShown = /** @type {any} */ (shown);
  page.photoList.replaceChildren(...photos.map((photo) => photoTile(page, photo, job.settings)));
  page.photosSummary.textContent = photosSummary(job, photos);
  page.photosSection.hidden = false;
}

/** "4 of 5 photos usable · captions on · …", and what the retention rule deleted. */
function photosSummary(/** @type {Job} */ job, /** @type {JobPhoto[]} */ photos) {
  const usable = photos.filter((photo) => photo.checks?.usable !== false).length;
  const parts = [`${usable} of ${plural(photos.length, "photo")} usable`];
  const mode = job.settings.caption_mode;
  if (mode === "instance_plus_auto_caption") parts.push("each trains on the instance prompt and its caption, automatic where none was given");
  else parts.push(mode === "instance_plus_caption" ? "each trains on the instance prompt and its caption" : "each trains on the instance prompt alone");
  const purged = /** @type {any} */ (job).photos_purged_at;
  if (purged) parts.push(`the photo files were deleted ${formatTime(purged)} (retention); their crops, captions and checks are kept`);
  return `${parts.join(" · ")}.`;
}

function photoTile(/** @type {JobPage} */ page, /** @type {JobPhoto} */ photo, /** @type {Record<string, any>} */ settings) {
  const captionsOn = ["instance_plus_caption", "instance_plus_auto_caption"].includes(settings.caption_mode);
  const tile = cloneTemplate("tpl-job-photo");
  const name = photo.name || `Photo ${photo.position + 1}`;
  tile.name.textContent = name;
  tile.name.title = name;
  fitPicture(tile.picture, photo);
  if (photo.url) {
    tile.img.alt = `${name}, with the square the trainer keeps marked`;
    showImage(tile.img, photo.url, page.current);
  } else {
    tile.img.remove();
    tile.picture.append(element("span", "deleted", "job-photo-gone"));
  }
  drawCropBox(tile.crop, photo);
  tile.size.textContent = cropText(photo, settings);
  if (photo.caption) tile.caption.textContent = `Caption: ${photo.caption}`;
  else if (photo.auto_caption) tile.caption.textContent = `Automatic caption: ${photo.auto_caption}`;
  tile.caption.hidden = !(photo.caption || photo.auto_caption);
  if (captionsOn && photo.prompt) tile.prompt.textContent = `Trains on: “${photo.prompt}”`;
  tile.prompt.hidden = !(captionsOn && photo.prompt);
  const flags = (photo.checks?.warnings ?? []).map((warning) => {
    const flag = element("span", WARNING_LABELS[/** @type {keyof WARNING_LABELS} */ (warning.code)] || warning.code.replaceAll("_", " "), "flag");
    flag.title = warning.message;
    flag.dataset.code = warning.code;
    return flag;
  });
  if (photo.checks?.usable === false) flags.unshift(element("span", "not usable", "flag flag-strong"));
  tile.flags.replaceChildren(...flags);
  tile.element.classList.toggle("has-warning", flags.length > 0);
  return tile.element;
}

/** Give the picture the photo's shape, as large as the square frame allows, so the crop box can be placed in %. */
function fitPicture(/** @type {HTMLElement} */ picture, /** @type {JobPhoto} */ photo) {
  picture.style.aspectRatio = `${photo.width} / ${photo.height}`;
  picture.style[photo.width >= photo.height ? "width" : "height"] = "100%";
}

/** The server's crop box over the photo, in percent of its stored size (the thumbnail's scale does not matter). */
function drawCropBox(/** @type {HTMLElement} */ box, /** @type {JobPhoto} */ photo) {
  box.dataset.cropBox = photo.crop_box ? photo.crop_box.join(",") : "";
  if (!photo.crop_box) {
    box.hidden = true;
    return;
  }
  const [left, top, right, bottom] = photo.crop_box;
  const percent = (/** @type {number} */ value, /** @type {number} */ of) => `${(100 * value) / of}%`;
  Object.assign(box.style, {
    left: percent(left, photo.width),
    top: percent(top, photo.height),
    width: percent(right - left, photo.width),
    height: percent(bottom - top, photo.height),
  });
}

/** How the trainer crops the photo; without a box, as the worker decides (worker/dreambooth/data.py). */
function cropText(/** @type {JobPhoto} */ photo, /** @type {Record<string, any>} */ settings) {
  const size = `${photo.width}×${photo.height}`;
  if (!photo.crop_box) {
    if (settings.crop === "bucket") return `${size}, trained whole at its aspect-ratio bucket`;
    return settings.center_crop ? `${size}, trains on the centre square` : `${size}, random crops: a different square each step`;
  }
  const side = photo.crop_box[2] - photo.crop_box[0];
  return `${size}, trains on the marked ${side}×${side} square`;
}

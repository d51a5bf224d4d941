// @ts-check
// The job page's generate form: new images from the job's weights at the chosen step, made by the
// worker; each generation is listed, newest first, and polled until it has succeeded or failed.

import { api, postJson } from "../api.js";
import { cloneTemplate, element, setBadge, sleep } from "../dom.js";
import { buildField, readField, writeField } from "../fields.js";
import { clearErrors, showFieldError } from "../form-errors.js";
import { formatTime, plural } from "../format.js";
import { keptSteps, recommendedStep } from "../job-data.js";
import { settingNamed } from "../session.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {import("./job.js").JobPage} JobPage */
/** @typedef {import("../session.js").Setting} Setting */
/**
 * @typedef {{id: string, status: string, params: Record<string, any>, images?: {url: string, seed?: number | null}[],
 *   error?: {code: string, message: string} | null, created_at?: string}} Generation
 */

const POLL_MS = 1000;
const DONE = new Set(["succeeded", "failed"]);

/**
 * The form's fields (POST /api/jobs/{id}/generations); the samplers are those the server offers for
 * samples, DDIM first: the study found it rescues overfit Dreambooth models.
 * @returns {Setting[]}
 */
function generateFields() {
  const choices = settingNamed("validation_scheduler").choices || [];
  const samplers = [...choices].sort((a, b) => Number(b === "ddim") - Number(a === "ddim"));
  return [
    { name: "prompt", label: "Prompt", type: "string", help: "Name the subject as the instance prompt does, then put it anywhere" },
    {
      name: "negative_prompt", label: "Negative prompt", type: "string", nullable: true,
      help: "What the images should not show; may stay empty",
    },
    {
      name: "scheduler", label: "Scheduler", type: "choice", choices: samplers, default: samplers[0],
      help: "DDIM at about 100 steps suits Dreambooth models: the study found it rescues overfit ones",
    },
    {
      name: "num_inference_steps", label: "Inference steps", type: "int", minimum: 1, maximum: 500, default: 100,
      help: "More steps turn noise into detail",
    },
    {
      name: "guidance_scale", label: "Guidance scale", type: "float", minimum: 0, maximum: 30, default: 7.5,
      help: "How closely the images follow the prompt",
    },
    {
      name: "seed", label: "Seed", type: "int", minimum: 0, maximum: 2 ** 32 - 1, nullable: true,
      help: "Repeats an image; empty: a random one",
    },
    { name: "num_images", label: "Images", type: "int", minimum: 1, maximum: 8, default: 4, help: "How many" },
    { name: "step", label: "Weights from step", type: "choice", choices: [], help: "The chosen training step" },
  ];
}

/** Build the form once the job has succeeded, and list its earlier generations. */
export function renderGenerate(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  page.generate.hidden = job.status !== "succeeded";
  const form = /** @type {HTMLFormElement} */ (page.generateForm);
  if (job.status !== "succeeded" || form.dataset.built) return;
  form.dataset.built = "true";
  page.generateFieldList = generateFields();
  page.generateFields.append(...page.generateFieldList.map((/** @type {Setting} */ field) => buildField(field, { prefix: "g-", fieldPrefix: "" })));
  /** @type {Record<string, any>} */
  const values = { prompt: job.settings.instance_prompt };
  for (const field of page.generateFieldList) writeField(control(form, field.name), field, values[field.name] ?? field.default);
  control(form, "step").addEventListener("change", () => page.chooseStep(Number(control(form, "step").value)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitGeneration(page);
  });
  loadGenerations(page);
}

/** The step select offers the kept steps and follows the chosen one. */
export function showGenerateStep(/** @type {JobPage} */ page) {
  if (!page.generateForm.dataset.built) return;
  const select = /** @type {HTMLSelectElement} */ (control(page.generateForm, "step"));
  const kept = keptSteps(page.job);
  const recommended = recommendedStep(page.job);
  const wanted = `${kept.join(",")}:${recommended}`;
  if (select.dataset.options !== wanted) {
    select.dataset.options = wanted;
    select.replaceChildren(...kept.map((step) => new Option(`${step}${step === recommended ? " (recommended)" : ""}`, String(step))));
  }
  if (page.step !== null && kept.includes(page.step)) select.value = String(page.step);
}

/** @returns {HTMLInputElement | HTMLSelectElement} */
function control(/** @type {HTMLFormElement} */ form, /** @type {string} */ name) {
  return /** @type {any} */ (form.elements.namedItem(name));
}

function readGeneration(/** @type {JobPage} */ page) {
  /** @type {Record<string, any>} */
  const params = {};
  for (const field of page.generateFieldList) {
    const value = readField(control(page.generateForm, field.name), field);
    if (value !== null && value !== "") params[field.name] = value;
  }
  if (params.step !== undefined) params.step = Number(params.step);
  return params;
}

async function submitGeneration(/** @type {JobPage} */ page) {
  const form = page.generateForm;
  const { signal } = page.current;
  clearErrors(form, page.generateError);
  const params = readGeneration(page);
  if (!params.prompt) return showFieldError(form, page.generateError, "prompt", "Write a prompt first.");
  page.generateSubmit.disabled = true;
  try {
    const generation = await postJson(`/api/jobs/${page.job.id}/generations`, params, signal);
    page.generateStatus.textContent = `Queued ${plural(params.num_images || 1, "image")} for “${params.prompt}”.`;
    trackGeneration(page, generation, { announce: true });
  } catch (error) {
    const { status, field, message } = /** @type {import("../api.js").ApiError} */ (error);
    if (signal.aborted || status === 401) return;
    if (status === 409) return showFieldError(form, page.generateError, null, `Not ready to generate: ${message}`);
    // note: the API names body fields as "prompt"; other servers as "body.prompt".
    showFieldError(form, page.generateError, field && field.replace(/^body\./, ""), message);
  } finally {
    page.generateSubmit.disabled = false;
  }
}

/** Earlier generations of this job, newest first (a list, or a page with items). */
async function loadGenerations(/** @type {JobPage} */ page) {
  let body;
  try {
    body = await api(`/api/jobs/${page.job.id}/generations`, { signal: page.current.signal });
  } catch {
    return; // note: an older server has no such list; the form works without it
  }
  /** @type {Generation[]} */
  const items = Array.isArray(body) ? body : body && Array.isArray(body.items) ? body.items : [];
  items.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  for (const generation of items.reverse()) trackGeneration(page, generation);
}

/** Show a generation at the top of the list (once) and poll it until it has succeeded or failed. */
function trackGeneration(/** @type {JobPage} */ page, /** @type {Generation} */ generation, { announce = false } = {}) {
  let entry = page.generations.get(generation.id);
  if (!entry) {
    entry = cloneTemplate("tpl-generation");
    page.generations.set(generation.id, entry);
    page.generationList.prepend(entry.element);
    page.generationsEmpty.hidden = true;
  }
  renderGeneration(page, entry, generation);
  if (!DONE.has(generation.status) && !entry.polled) {
    entry.polled = true;
    pollGeneration(page, entry, generation, announce);
  }
}

async function pollGeneration(
  /** @type {JobPage} */ page, /** @type {Record<string, any>} */ entry, /** @type {Generation} */ generation, /** @type {boolean} */ announce,
) {
  const { signal } = page.current;
  let current = generation;
  while (!DONE.has(current.status)) {
    try {
      await sleep(POLL_MS, signal);
      current = await api(`/api/generations/${current.id}`, { signal });
    } catch (error) {
      const { status } = /** @type {{status?: number}} */ (error);
      if (signal.aborted || status === 401) return;
      if (status === 404) current = { ...current, status: "failed", error: { code: "not_found", message: "This generation is gone." } };
      continue;
    }
    renderGeneration(page, entry, current);
  }
  if (!announce) return;
  page.generateStatus.textContent = current.status === "succeeded"
    ? `${plural((current.images || []).length, "image")} ready for “${current.params.prompt}”.`
    : `Generating failed: ${current.error ? current.error.message : "no reason given"}`;
}

function renderGeneration(/** @type {JobPage} */ page, /** @type {Record<string, any>} */ entry, /** @type {Generation} */ generation) {
  const params = generation.params || {};
  entry.prompt.textContent = params.prompt || "";
  setBadge(entry.status, generation.status);
  const details = [
    params.scheduler,
    params.num_inference_steps && `${params.num_inference_steps} steps`,
    params.guidance_scale !== undefined && `guidance ${params.guidance_scale}`,
    params.step !== undefined && params.step !== null && `step ${params.step}`,
    params.negative_prompt && `not: ${params.negative_prompt}`,
    generation.created_at && formatTime(generation.created_at),
  ];
  entry.details.textContent = details.filter(Boolean).join(" · ");
  const failed = generation.status === "failed";
  entry.error.hidden = !failed;
  entry.error.textContent = failed ? (generation.error ? generation.error.message : "Generating failed.") : "";
  const images = generation.images || [];
  const key = images.map((image) => image.url).join(",");
  if (entry.images.dataset.key === key) return;
  entry.images.dataset.key = key;
  entry.images.replaceChildren(...images.map((image, index) => generatedImage(page, image, index, params.prompt || "")));
}

function generatedImage(
  /** @type {JobPage} */ page, /** @type {{url: string, seed?: number | null}} */ image, /** @type {number} */ index, /** @type {string} */ prompt,
) {
  const item = document.createElement("li");
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  const seed = image.seed !== undefined && image.seed !== null ? `seed ${image.seed}` : `image ${index + 1}`;
  img.alt = `Generated: ${prompt} (${seed})`;
  img.width = 256;
  img.height = 256;
  const save = element("a", "Save");
  save.hidden = true;
  save.download = `generated-${image.seed ?? index + 1}.png`;
  save.setAttribute("aria-label", `Save image, ${seed}`);
  page.current.blobs.get(image.url, page.current.signal).then(
    (objectUrl) => {
      img.src = objectUrl;
      save.href = objectUrl;
      save.hidden = false;
    },
    () => {
      img.alt = `${img.alt} (could not be loaded)`;
    },
  );
  const caption = document.createElement("figcaption");
  caption.append(element("span", seed), save);
  figure.append(img, caption);
  item.append(figure);
  return item;
}

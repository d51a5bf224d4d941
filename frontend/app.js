// Dreambooth Studio in the browser: sign in, start a job from photos, follow it, pick a step,
// download the model and generate images from it.
// Plain DOM and fetch. API and user strings only ever reach the page through textContent.

const TOKEN_KEY = "dreambooth-studio.token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const MIN_PHOTOS = 3;
const POLL_MS = 2000;
const GENERATION_POLL_MS = 1000;
const GENERATION_DONE = new Set(["succeeded", "failed"]);
const LIST_POLL_MS = 3000;
const DEMO_RESOLUTION = 64;
const DEMO_MAX_STEPS = 200;

const PHASES = {
  preparing: "Preparing",
  generating_class_images: "Generating class images",
  training: "Training",
  sampling: "Making samples",
  exporting: "Exporting the checkpoint",
};

// The defaults of the API's TrainingSettings; a preset's values are laid over them.
const DEFAULTS = {
  with_prior_preservation: false, num_class_images: 200, prior_loss_weight: 1, train_text_encoder: false,
  max_train_steps: 400, learning_rate: 2e-6, train_batch_size: 4, gradient_accumulation_steps: 1,
  lr_scheduler: "constant", lr_warmup_steps: 0, resolution: 512, center_crop: false, random_flip: false,
  mixed_precision: "fp16", gradient_checkpointing: false, use_8bit_adam: false, seed: null,
  training_method: "full", lora_rank: 4, lora_alpha: null, lora_dropout: 0,
  validation_prompts: [], num_validation_images: 1, validation_steps: null, validation_scheduler: "ddim",
  validation_inference_steps: 100, guidance_scale: 7.5,
};

const SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"];
// Samplers for samples and generations, DDIM first: the study found it rescues overfit Dreambooth models.
const SAMPLERS = ["ddim", "dpmpp_2m", "euler_a", "euler", "pndm", "lms"];

// The advanced settings, in groups; `help` is the one line shown under each.
const ADVANCED = [
  { legend: "Training", fields: [
    { name: "base_model", type: "select", help: "The Stable Diffusion model to fine-tune, from those this server offers." },
    { name: "training_method", type: "select", options: ["full", "lora"], help: "full fine-tunes every weight; lora trains small adapters: far less GPU memory, small files." },
    { name: "max_train_steps", type: "int", min: 1, max: 20000, help: "Optimizer steps. Dreambooth overfits fast: start low, add steps until samples satisfy." },
    { name: "learning_rate", type: "float", help: "Lower won in every case of the study: 2e-6 for objects, 1e-6 for faces." },
    { name: "lr_scheduler", type: "select", options: SCHEDULERS, help: "How the learning rate changes during training." },
    { name: "lr_warmup_steps", type: "int", min: 0, max: 20000, help: "Steps over which the learning rate ramps up from zero." },
    { name: "train_text_encoder", type: "bool", help: "Fine-tune the text encoder too: the biggest quality gain, needs more memory." },
    { name: "seed", type: "int", min: 0, max: 4294967295, optional: true, help: "Makes training and samples repeatable; leave empty for a random one." },
  ] },
  { legend: "LoRA", when: (form) => form.training_method.value === "lora", fields: [
    { name: "lora_rank", type: "int", min: 1, max: 256, help: "Adapter rank: larger learns more detail, and the file grows." },
    { name: "lora_alpha", type: "float", optional: true, help: "Scales the adapters' update by alpha / rank; empty: the rank." },
    { name: "lora_dropout", type: "float", help: "Dropout on the adapters' input (0 to below 1); 0 turns it off." },
  ] },
  { legend: "Photos", fields: [
    { name: "resolution", type: "int", min: 64, max: 1024, step: 64, help: "Square training size in pixels, a multiple of 64." },
    { name: "center_crop", type: "bool", help: "Crop the centre of each photo instead of a random square." },
    { name: "random_flip", type: "bool", help: "Mirror photos at random, for more variety." },
  ] },
  { legend: "Memory", fields: [
    { name: "train_batch_size", type: "int", min: 1, max: 64, help: "Photos per step." },
    { name: "gradient_accumulation_steps", type: "int", min: 1, max: 64, help: "Micro-batches per optimizer step: a larger batch in less memory." },
    { name: "mixed_precision", type: "select", options: ["no", "fp16", "bf16"], help: "Half-precision training where the device supports it." },
    { name: "gradient_checkpointing", type: "bool", help: "Recompute activations to save memory, at some speed." },
    { name: "use_8bit_adam", type: "bool", help: "8-bit AdamW from bitsandbytes: fits 16 GB GPUs." },
  ] },
  { legend: "Prior preservation", fields: [
    { name: "with_prior_preservation", type: "bool", help: "Also train on generated images of the class prompt; matters for faces." },
    { name: "num_class_images", type: "int", min: 1, max: 1000, help: "How many class images to generate and train on." },
    { name: "prior_loss_weight", type: "float", help: "Weight of the class images' loss (0 to 10)." },
  ] },
  { legend: "Samples", fields: [
    { name: "validation_prompts", type: "lines", help: "Prompts sampled during training, one per line (up to 8); empty: the instance prompt and three new contexts." },
    { name: "validation_steps", type: "int", min: 1, max: 20000, optional: true, help: "Sample, and keep the weights, every N steps; empty: about five points." },
    { name: "num_validation_images", type: "int", min: 1, max: 8, help: "Images per prompt." },
    { name: "validation_scheduler", type: "select", options: SAMPLERS, help: "Sampler for the samples; the study: DDIM." },
    { name: "validation_inference_steps", type: "int", min: 1, max: 500, help: "Sampling steps per sample; DDIM at about 100 rescues overfit models." },
    { name: "guidance_scale", type: "float", help: "How closely samples follow the prompt (0 to 30)." },
  ] },
];

// ── session and API ───────────────────────────────────────────────────────────────────────────

const session = { token: localStorage.getItem(TOKEN_KEY), info: null, presets: null };

class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

function authHeaders() {
  return { Authorization: `Bearer ${session.token}` };
}

async function errorFrom(response) {
  const body = await response.json().catch(() => null);
  return apiError(response.status, body);
}

function apiError(status, body) {
  const error = body && body.error;
  if (error) return new ApiError(status, error.code, error.message, error.field || null);
  return new ApiError(status, "http_error", `The server answered ${status || "nothing"}.`);
}

async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...options.headers, ...authHeaders() } });
  if (response.status === 401) {
    signOut("Your token was not accepted: it is unknown, revoked or expired.");
    throw await errorFrom(response);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

async function loadServerFacts() {
  if (!session.info) {
    [session.info, session.presets] = await Promise.all([api("/api/info"), api("/api/presets")]);
  }
  document.getElementById("demo-banner").hidden = !session.info.demo_mode;
}

// ── sign in and out ───────────────────────────────────────────────────────────────────────────

function takeTokenFromUrl() {
  const match = location.hash.match(/^#token=(.+)$/);
  if (!match) return;
  signIn(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search + "#/");
}

function signIn(token) {
  session.token = token.trim();
  session.info = null;
  localStorage.setItem(TOKEN_KEY, session.token);
}

function signOut(message = "") {
  session.token = null;
  session.info = null;
  localStorage.removeItem(TOKEN_KEY);
  showSignIn(message);
}

function showSignIn(message = "") {
  leaveView();
  document.querySelector(".site-nav").hidden = true;
  document.getElementById("demo-banner").hidden = true;
  const { root, form, error } = mountView("tpl-signin");
  setFieldError(form.token, error, message);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.token.value.trim()) return setFieldError(form.token, error, "Paste a token first.");
    signIn(form.token.value);
    go("#/");
  });
  focusHeading(root);
}

// ── views and routing ─────────────────────────────────────────────────────────────────────────

let view = null; // what the current view must stop and release when it is left

function leaveView() {
  if (!view) return;
  view.controller.abort();
  view.blobs.clear();
  view = null;
}

function enterView() {
  leaveView();
  view = { controller: new AbortController(), blobs: new BlobCache() };
  return view;
}

/** Clone a template into <main>; returns the root and its [data-slot] elements by name. */
function mountView(templateId) {
  const main = document.getElementById("view");
  main.replaceChildren(document.getElementById(templateId).content.cloneNode(true));
  return { root: main, ...slots(main) };
}

function slots(root) {
  const found = {};
  for (const element of root.querySelectorAll("[data-slot]")) found[camel(element.dataset.slot)] = element;
  return found;
}

function camel(name) {
  return name.replace(/-(\w)/g, (_, letter) => letter.toUpperCase());
}

function cloneTemplate(templateId) {
  const fragment = document.getElementById(templateId).content.cloneNode(true);
  return { element: fragment.firstElementChild, ...slots(fragment) };
}

function focusHeading(root) {
  const heading = root.querySelector("h1");
  document.title = `${heading.textContent || "Job"} · Dreambooth Studio`;
  heading.focus();
}

function markNav(name) {
  document.querySelector(".site-nav").hidden = false;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** Show the view of `hash`, also when it is the one already in the address bar. */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  if (!session.token) return showSignIn();
  const current = enterView();
  try {
    await loadServerFacts();
    if (current !== view) return;
    const jobMatch = location.hash.match(/^#\/jobs\/([\w-]+)$/);
    if (jobMatch) return await showJob(jobMatch[1], current);
    if (location.hash === "#/new") return showNewJob(current);
    return await showJobs(current);
  } catch (error) {
    if (current === view && error.status !== 401 && error.name !== "AbortError") showFailure(error);
  }
}

function showFailure(error) {
  const main = document.getElementById("view");
  const heading = element("h1", "Something went wrong");
  heading.tabIndex = -1;
  main.replaceChildren(heading, element("p", error.message, "lead"));
  focusHeading(main);
}

function element(tag, text = "", className = "") {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

/** Object URLs of files fetched with the token (images, downloads); revoked when no longer shown. */
class BlobCache {
  constructor() {
    this.urls = new Map();
  }

  get(url, signal) {
    if (!this.urls.has(url)) {
      const objectUrl = request(url, { signal }).then((response) => response.blob()).then(URL.createObjectURL);
      objectUrl.catch(() => this.urls.delete(url));
      this.urls.set(url, objectUrl);
    }
    return this.urls.get(url);
  }

  revoke(url) {
    const objectUrl = this.urls.get(url);
    if (!objectUrl) return;
    objectUrl.then(URL.revokeObjectURL, () => {});
    this.urls.delete(url);
  }

  clear() {
    for (const url of [...this.urls.keys()]) this.revoke(url);
  }
}

function showImage(img, url, current) {
  current.blobs.get(url, current.controller.signal).then((objectUrl) => { img.src = objectUrl; }, () => {
    img.alt = `${img.alt} (could not be loaded)`;
  });
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); reject(new DOMException("left", "AbortError")); });
  });
}

// ── formatting ────────────────────────────────────────────────────────────────────────────────

function formatBytes(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
}

function formatDuration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function formatTime(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function phaseText(job) {
  if (job.status === "queued") return "Waiting for a worker";
  if (job.status === "running") return job.cancel_requested ? "Stopping…" : PHASES[job.phase] || "Running";
  return { succeeded: "Finished", failed: "Failed", cancelled: "Cancelled" }[job.status] || job.status;
}

function progressText(job) {
  const { step, total_steps: total, loss, eta_seconds: eta } = job.progress;
  const parts = total ? [`step ${step} of ${total}`] : [];
  if (loss !== null) parts.push(`loss ${loss.toFixed(4)}`);
  if (job.status === "running" && eta !== null) parts.push(`about ${formatDuration(eta)} left`);
  return parts.join(" · ");
}

function setProgress(bar, job) {
  const { step, total_steps: total } = job.progress;
  if (job.status === "queued" || (job.status === "running" && !total)) {
    bar.removeAttribute("value");
    bar.setAttribute("aria-valuetext", phaseText(job));
    return;
  }
  bar.max = total || 1;
  bar.value = job.status === "succeeded" ? bar.max : step;
  bar.setAttribute("aria-valuetext", total ? `step ${step} of ${total}` : phaseText(job));
}

function setBadge(badge, status) {
  badge.textContent = status;
  badge.dataset.status = status;
}

// ── jobs list ─────────────────────────────────────────────────────────────────────────────────

async function showJobs(current) {
  const slot = mountView("tpl-jobs");
  markNav("jobs");
  const rows = new Map();
  let first = true;
  for (;;) {
    const page = await api("/api/jobs?limit=50", { signal: current.controller.signal });
    renderJobList(slot, rows, page.items, current);
    if (first) focusHeading(slot.root);
    first = false;
    if (page.items.every((job) => TERMINAL.has(job.status))) return;
    await sleep(LIST_POLL_MS, current.controller.signal);
  }
}

/** Update the rows in place (a focused row keeps its focus), newest first. */
function renderJobList(slot, rows, jobs, current) {
  slot.empty.hidden = jobs.length > 0;
  const elements = jobs.map((job) => {
    if (!rows.has(job.id)) rows.set(job.id, cloneTemplate("tpl-job-row"));
    renderJobRow(rows.get(job.id), job, current);
    return rows.get(job.id).element;
  });
  const order = [...slot.list.children];
  if (order.length !== elements.length || elements.some((row, index) => order[index] !== row)) {
    slot.list.replaceChildren(...elements);
  }
}

function renderJobRow(row, job, current) {
  row.link.href = `#/jobs/${job.id}`;
  row.title.textContent = job.settings.instance_prompt;
  const details = [formatTime(job.created_at), `${job.photo_count} photos`, phaseText(job)];
  if (job.status === "running" && job.progress.total_steps) details.push(`step ${job.progress.step}/${job.progress.total_steps}`);
  row.sub.textContent = details.join(" · ");
  setProgress(row.progress, job);
  row.progress.setAttribute("aria-label", `Progress of ${job.settings.instance_prompt}`);
  setBadge(row.status, job.status);
  const sample = latestSample(job);
  if (sample && row.thumb.dataset.url !== sample.url) {
    const img = document.createElement("img");
    img.alt = `Latest sample: ${sample.prompt || ""}`;
    row.thumb.dataset.url = sample.url;
    row.thumb.replaceChildren(img);
    showImage(img, sample.url, current);
  }
}

function latestSample(job) {
  const samples = job.artifacts.filter((artifact) => artifact.kind === "sample");
  return samples.reduce((latest, sample) => (!latest || sample.step > latest.step ? sample : latest), null);
}

// ── new job: the form ─────────────────────────────────────────────────────────────────────────

function showNewJob(current) {
  const slot = mountView("tpl-new-job");
  markNav("new");
  const photos = new PhotoSet(slot, current);
  buildAdvancedFields(slot.advancedFields);
  buildPresetCards(slot.presets, slot.form);
  slot.form.training_method.addEventListener("change", () => showAdvancedGroups(slot.form));
  applyPreset(slot.form, "object");
  slot.form.resolution.addEventListener("input", () => photos.render());
  slot.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitJob(slot, photos, current);
  });
  focusHeading(slot.root);
}

function buildPresetCards(container, form) {
  for (const preset of session.presets) {
    const card = cloneTemplate("tpl-preset");
    card.input.value = preset.name;
    card.input.checked = preset.name === "object";
    card.title.textContent = preset.title;
    card.summary.textContent = preset.summary;
    card.input.addEventListener("change", () => applyPreset(form, preset.name));
    container.append(card.element);
  }
}

/** Fill the form with a preset's values over the defaults (demo mode: small and short). */
function applyPreset(form, name) {
  const preset = session.presets.find((candidate) => candidate.name === name);
  const values = { ...DEFAULTS, base_model: session.info.default_base_model, ...preset.values };
  if (session.info.demo_mode) {
    values.resolution = DEMO_RESOLUTION;
    values.max_train_steps = Math.min(values.max_train_steps, DEMO_MAX_STEPS);
  }
  form.class_prompt.value = values.class_prompt || "";
  for (const field of ADVANCED.flatMap((group) => group.fields)) writeField(form.elements[field.name], field, values[field.name]);
  showAdvancedGroups(form);
  form.resolution.dispatchEvent(new Event("input"));
}

function buildAdvancedFields(container) {
  for (const group of ADVANCED) {
    const fieldset = document.createElement("fieldset");
    fieldset.className = "field-group";
    fieldset.dataset.group = group.legend;
    fieldset.append(element("legend", group.legend), ...group.fields.map((field) => buildField(field)));
    container.append(fieldset);
  }
}

/** Show the groups that apply (LoRA's only for training_method lora); hidden ones are not sent. */
function showAdvancedGroups(form) {
  for (const group of ADVANCED.filter((candidate) => candidate.when)) {
    form.querySelector(`[data-group="${group.legend}"]`).hidden = !group.when(form);
  }
}

/** A labelled control with its help line and error slot; ids `f-name` (the new job) or `g-name` (generate). */
function buildField(field, prefix = "f-", fieldPrefix = "settings.") {
  const wrapper = document.createElement("div");
  wrapper.className = field.type === "bool" ? "field check" : "field";
  wrapper.dataset.field = `${fieldPrefix}${field.name}`;
  const control = buildControl(field);
  control.id = `${prefix}${field.name}`;
  control.name = field.name;
  const key = control.id.replace(/^f-/, "");
  control.setAttribute("aria-describedby", `help-${key}`);
  const label = element("label", field.label || field.name, field.label ? "" : "code-label");
  label.htmlFor = control.id;
  const help = element("p", field.help, "help");
  help.id = `help-${key}`;
  const error = element("p", "", "field-error");
  error.id = `err-${key}`;
  error.hidden = true;
  wrapper.append(...(field.type === "bool" ? [control, label] : [label, control]), help, error);
  return wrapper;
}

function buildControl(field) {
  if (field.type === "select") {
    const select = document.createElement("select");
    const options = field.name === "base_model" ? session.info.base_models : field.options;
    for (const option of options) select.append(new Option(option, option));
    return select;
  }
  if (field.type === "lines") {
    const textarea = document.createElement("textarea");
    textarea.rows = 3;
    return textarea;
  }
  const input = document.createElement("input");
  input.type = { bool: "checkbox", int: "number", float: "text", text: "text" }[field.type];
  if (field.type === "text") input.maxLength = 500;
  if (field.type === "float") input.inputMode = "decimal";
  if (field.type === "int") Object.assign(input, { min: field.min, max: field.max, step: field.step || 1 });
  return input;
}

function writeField(control, field, value) {
  if (field.type === "bool") control.checked = Boolean(value);
  else if (field.type === "lines") control.value = (value || []).join("\n");
  else control.value = formatValue(value);
}

function formatValue(value) {
  if (value === null || value === undefined) return "";
  // note: learning rates read best as 2e-6, not 0.000002.
  return typeof value === "number" && value !== 0 && Math.abs(value) < 1e-3 ? value.toExponential() : String(value);
}

function readField(control, field) {
  if (field.type === "bool") return control.checked;
  if (field.type === "select") return control.value;
  if (field.type === "lines") return control.value.split("\n").map((line) => line.trim()).filter(Boolean);
  const text = control.value.trim();
  if (text === "") return field.optional ? null : text;
  if (field.type === "text") return text;
  const number = Number(text);
  // note: a value that is not a number goes as typed, so that the API names the field.
  return Number.isFinite(number) ? number : text;
}

function readSettings(form) {
  const settings = {
    preset: form.preset.value,
    instance_prompt: form.instance_prompt.value,
  };
  if (form.class_prompt.value.trim()) settings.class_prompt = form.class_prompt.value;
  for (const field of ADVANCED.filter((group) => !group.when || group.when(form)).flatMap((group) => group.fields)) {
    const value = readField(form.elements[field.name], field);
    if (value !== null) settings[field.name] = value;
  }
  return settings;
}

// ── new job: submitting ───────────────────────────────────────────────────────────────────────

async function submitJob(slot, photos, current) {
  const { form } = slot;
  clearErrors(form, slot.formError);
  if (!form.consent.checked) {
    return showFieldError(form, slot.formError, "consent", "Tick this box to confirm you may train on these photos.");
  }
  if (!photos.items.length) return showFieldError(form, slot.formError, "photos", "Add at least one photo.");
  setUploading(slot, true);
  try {
    const job = await uploadPhotos(photos.items.map((item) => item.file), readSettings(form), (fraction) => showUploadProgress(slot, fraction));
    if (current === view) go(`#/jobs/${job.id}`);
  } catch (error) {
    if (error.status === 401) return;
    showFieldError(form, slot.formError, error.field, error.message);
  } finally {
    setUploading(slot, false);
  }
}

/** POST the job with XMLHttpRequest, whose upload progress events fetch lacks. */
function uploadPhotos(files, settings, onProgress) {
  return new Promise((resolve, reject) => {
    const body = new FormData();
    for (const file of files) body.append("photos", file, file.name);
    body.append("settings", JSON.stringify(settings));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs");
    xhr.setRequestHeader("Authorization", `Bearer ${session.token}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 202) return resolve(xhr.response);
      if (xhr.status === 401) signOut("Your token was not accepted: it is unknown, revoked or expired.");
      reject(apiError(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "The upload failed: the server could not be reached.")));
    xhr.send(body);
  });
}

function setUploading(slot, uploading) {
  slot.submit.disabled = uploading;
  slot.upload.hidden = !uploading;
  if (uploading) showUploadProgress(slot, 0);
}

function showUploadProgress(slot, fraction) {
  slot.uploadBar.value = fraction;
  slot.uploadText.textContent = fraction < 1 ? `${Math.round(fraction * 100)} %` : "Checking the photos…";
}

function clearErrors(form, formError) {
  formError.hidden = true;
  for (const control of form.querySelectorAll("[aria-invalid]")) {
    const error = document.getElementById(errorIdOf(control));
    setFieldError(control, error, "");
  }
}

/** Show an error beside the field it names (`settings.x`, `photos`), or above the form. */
function showFieldError(form, formError, field, message) {
  const wrapper = fieldWrapper(form, field);
  if (!wrapper) {
    formError.textContent = message;
    formError.hidden = false;
    formError.scrollIntoView({ block: "center" });
    return;
  }
  const details = wrapper.closest("details");
  if (details) details.open = true;
  const control = wrapper.querySelector("input, select, textarea");
  setFieldError(control, document.getElementById(errorIdOf(control)), message);
  formError.textContent = "The form has a problem: see the highlighted field.";
  formError.hidden = false;
  control.focus();
}

function fieldWrapper(form, field) {
  if (!field) return null;
  // note: a list item's error (settings.validation_prompts.2) belongs to the list's field.
  const name = field.split(".").filter((part) => !/^\d+$/.test(part)).join(".");
  return [...form.querySelectorAll("[data-field]")].find((wrapper) => wrapper.dataset.field === name) || null;
}

function errorIdOf(control) {
  return control.id === "photo-input" ? "err-photos" : `err-${control.id.replace(/^f-/, "")}`;
}

function setFieldError(control, error, message) {
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

// ── new job: the photos ───────────────────────────────────────────────────────────────────────

/** The chosen photos: thumbnails with the training crop, and warnings before anything is uploaded. */
class PhotoSet {
  constructor(slot, current) {
    this.slot = slot;
    this.items = [];
    this.nextId = 1;
    const input = slot.dropzone.querySelector("input");
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
    this.listenForDrops(slot.dropzone, current.controller.signal);
  }

  listenForDrops(zone, signal) {
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
    }
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      this.add([...event.dataTransfer.files]);
    });
    // note: a file dropped beside the zone must not make the browser navigate away from the form.
    window.addEventListener("dragover", (event) => event.preventDefault(), { signal });
    window.addEventListener("drop", (event) => event.preventDefault(), { signal });
  }

  add(files) {
    for (const file of files) {
      const item = { id: this.nextId++, file, width: 0, height: 0, hash: null, unreadable: false, bitmap: null };
      this.items.push(item);
      inspectPhoto(item).then(() => this.render());
    }
    this.render();
  }

  remove(id) {
    const item = this.items.find((candidate) => candidate.id === id);
    if (item && item.bitmap) item.bitmap.close();
    this.items = this.items.filter((candidate) => candidate.id !== id);
    this.render();
    this.slot.dropzone.querySelector("input").focus();
  }

  render() {
    const resolution = Number(this.slot.form.resolution.value) || DEFAULTS.resolution;
    const duplicates = duplicateIds(this.items);
    this.slot.thumbs.replaceChildren(...this.items.map((item) => this.thumb(item, resolution, duplicates)));
    const warnings = photoWarnings(this.items, resolution, duplicates);
    this.slot.warnings.replaceChildren(...warnings.map((text) => element("li", text)));
  }

  thumb(item, resolution, duplicates) {
    const tile = cloneTemplate("tpl-thumb");
    tile.name.textContent = item.file.name;
    tile.name.title = item.file.name;
    tile.remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    tile.remove.addEventListener("click", () => this.remove(item.id));
    if (item.bitmap) {
      drawCenterCrop(tile.canvas, item.bitmap);
      tile.size.textContent = `${item.width}×${item.height} → ${resolution}×${resolution}`;
    } else {
      tile.size.textContent = item.unreadable ? "not readable as an image" : "reading…";
    }
    const flags = [];
    if (item.unreadable) flags.push("unreadable");
    if (duplicates.has(item.id)) flags.push("duplicate");
    if (isSmall(item, resolution)) flags.push("small");
    if (isTooLarge(item)) flags.push("too large");
    tile.flags.replaceChildren(...flags.map((flag) => element("span", flag, "flag")));
    tile.element.classList.toggle("has-warning", flags.length > 0);
    return tile.element;
  }
}

async function inspectPhoto(item) {
  const [bitmap, hash] = await Promise.all([
    createImageBitmap(item.file).catch(() => null),
    sha256(item.file).catch(() => null),
  ]);
  item.hash = hash;
  item.unreadable = bitmap === null;
  if (bitmap) Object.assign(item, { bitmap, width: bitmap.width, height: bitmap.height });
}

async function sha256(file) {
  // note: crypto.subtle exists on secure origins only (https, localhost); elsewhere no duplicate check.
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** The square the trainer keeps from the photo's centre, scaled to the canvas. */
function drawCenterCrop(canvas, bitmap) {
  const side = Math.min(bitmap.width, bitmap.height);
  const left = (bitmap.width - side) / 2;
  const top = (bitmap.height - side) / 2;
  canvas.getContext("2d").drawImage(bitmap, left, top, side, side, 0, 0, canvas.width, canvas.height);
}

function isSmall(item, resolution) {
  return Boolean(item.bitmap) && Math.min(item.width, item.height) < resolution;
}

function isTooLarge(item) {
  const { max_photo_bytes: maxBytes, max_photo_pixels: maxPixels } = session.info.limits;
  return item.file.size > maxBytes || item.width * item.height > maxPixels;
}

function duplicateIds(items) {
  const seen = new Map();
  const duplicates = new Set();
  for (const item of items) {
    if (!item.hash) continue;
    if (seen.has(item.hash)) duplicates.add(item.id);
    else seen.set(item.hash, item.id);
  }
  return duplicates;
}

function photoWarnings(items, resolution, duplicates) {
  const warnings = [];
  const limit = session.info.limits.max_photos;
  if (items.length && items.length < MIN_PHOTOS) {
    warnings.push(`Only ${items.length} photo${items.length === 1 ? "" : "s"}: Dreambooth needs at least ${MIN_PHOTOS}, and 5 to 20 work best.`);
  }
  if (items.length > limit) warnings.push(`${items.length} photos: this server takes at most ${limit}. Remove ${items.length - limit}.`);
  if (duplicates.size) warnings.push(`${duplicates.size} duplicate photo${duplicates.size === 1 ? "" : "s"} (the same file twice): remove the copies marked “duplicate”.`);
  const small = items.filter((item) => isSmall(item, resolution));
  if (small.length) warnings.push(`${small.length} photo${small.length === 1 ? " is" : "s are"} smaller than ${resolution} px on the short side and will be upscaled (marked “small”).`);
  const large = items.filter(isTooLarge);
  if (large.length) {
    const { max_photo_bytes: maxBytes, max_photo_pixels: maxPixels } = session.info.limits;
    warnings.push(`${large.length} photo${large.length === 1 ? " is" : "s are"} over this server's limit of ${formatBytes(maxBytes)} or ${Math.round(maxPixels / 1e6)} megapixels (marked “too large”).`);
  }
  const unreadable = items.filter((item) => item.unreadable);
  if (unreadable.length) warnings.push(`${unreadable.length} file${unreadable.length === 1 ? "" : "s"} could not be read as an image here; the server will check.`);
  return warnings;
}

// ── job page ──────────────────────────────────────────────────────────────────────────────────

async function showJob(jobId, current) {
  const signal = current.controller.signal;
  let job;
  try {
    job = await api(`/api/jobs/${jobId}`, { signal });
  } catch (error) {
    if (error.status !== 404 && error.status !== 422) throw error;
    return showNotFound();
  }
  const page = mountJobPage(job, current);
  renderJob(page, job);
  focusHeading(page.root);
  if (!TERMINAL.has(job.status)) await followJob(jobId, signal, (update) => renderJob(page, update));
}

function showNotFound() {
  const { root } = mountView("tpl-not-found");
  markNav("jobs");
  focusHeading(root);
}

function mountJobPage(job, current) {
  const page = {
    ...mountView("tpl-job"), current, job, live: [], lastAnnounced: "",
    samplesKey: null, sampleUrls: new Set(), scoresKey: null, downloadsKey: null,
    step: null, stepChosen: false, slider: null, sampleTable: null, downloadParts: null,
    generations: new Map(),
  };
  markNav("jobs");
  page.title.textContent = job.settings.instance_prompt;
  page.cancel.addEventListener("click", () => cancelJob(page));
  page.delete.addEventListener("click", () => deleteJob(page));
  page.recommendationShow.addEventListener("click", () => chooseStep(page, recommendedStep(page.job)));
  return page;
}

function renderJob(page, job) {
  page.job = job;
  setBadge(page.status, job.status);
  page.meta.textContent = jobMeta(job);
  page.phase.textContent = phaseText(job);
  setProgress(page.progress, job);
  page.progressText.textContent = progressText(job);
  announce(page, job);
  renderFailure(page, job);
  settleStep(page, job);
  renderRecommendation(page, job);
  renderLossChart(page.chart, lossPoints(page, job), job);
  renderSamples(page, job);
  renderScores(page, job);
  renderDownloads(page, job);
  renderGenerate(page, job);
  showStep(page);
  page.cancel.hidden = TERMINAL.has(job.status) || job.cancel_requested;
}

function jobMeta(job) {
  const parts = [`Submitted ${formatTime(job.created_at)}`, `${job.photo_count} photos`, `preset ${job.settings.preset}`, job.settings.base_model];
  if (job.settings.training_method === "lora") parts.push(job.settings.lora_rank ? `LoRA rank ${job.settings.lora_rank}` : "LoRA");
  const memory = memoryText(job.memory_plan);
  if (memory) parts.push(memory);
  if (job.finished_at) parts.push(`finished ${formatTime(job.finished_at)}`);
  return parts.join(" · ");
}

/** The memory savers the worker turned on for this GPU, e.g. "16 GB GPU: 8-bit Adam, fp16, gradient checkpointing". */
function memoryText(plan) {
  if (!plan || plan.gpu_memory_gib === null) return "";
  const names = {
    use_8bit_adam: () => "8-bit Adam",
    mixed_precision: (value) => value,
    gradient_checkpointing: () => "gradient checkpointing",
    enable_xformers_memory_efficient_attention: () => "xformers",
    train_batch_size: (value) => `batch ${value}`,
    gradient_accumulation_steps: (value) => `${value} accumulation steps`,
    sample_batch_size: (value) => `class images in batches of ${value}`,
  };
  const changes = Object.entries(plan.changes).map(([name, value]) => (names[name] ? names[name](value) : `${name} ${value}`));
  const gpu = `${Math.round(plan.gpu_memory_gib)} GB GPU`;
  return changes.length ? `${gpu}: ${changes.join(", ")}` : gpu;
}

function announce(page, job) {
  const text = `${job.status}: ${phaseText(job)}`;
  if (text === page.lastAnnounced) return;
  page.lastAnnounced = text;
  page.announce.textContent = `Job ${text}`;
}

function renderFailure(page, job) {
  const failed = job.status === "failed" || job.status === "cancelled";
  page.failure.hidden = !failed;
  if (!failed) return;
  page.failure.setAttribute("role", "alert");
  page.failureTitle.textContent = job.status === "failed" ? "Training failed." : "This job was cancelled.";
  page.failureMessage.textContent = job.error ? job.error.message : "";
}

// ── job page: live updates ────────────────────────────────────────────────────────────────────

/** Follow a job over the events stream until it ends; poll every 2 s if the stream breaks. */
async function followJob(jobId, signal, onJob) {
  let last = null;
  const track = (job) => { last = job; onJob(job); };
  try {
    await readEvents(`/api/jobs/${jobId}/events`, signal, track);
  } catch (error) {
    if (signal.aborted || error.status === 401) return;
  }
  while (!last || !TERMINAL.has(last.status)) {
    await sleep(POLL_MS, signal);
    try {
      track(await api(`/api/jobs/${jobId}`, { signal }));
    } catch (error) {
      if (error.status === 404) return showNotFound();
      if (signal.aborted || error.status === 401) return;
    }
  }
}

/** Server-sent events over fetch, since EventSource cannot send the Authorization header. */
async function readEvents(url, signal, onData) {
  const response = await request(url, { signal, headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart());
      if (data.length) onData(JSON.parse(data.join("\n")));
    }
  }
}

// ── job page: the chosen step ─────────────────────────────────────────────────────────────────
// One training step is chosen at a time: the samples slider, the downloads and the generate form
// all follow it. It starts at the recommended step (else the last kept one) until the user picks.

function sampleArtifacts(job) {
  return job.artifacts.filter((artifact) => artifact.kind === "sample");
}

/** Steps whose weights can be downloaded and generated from. */
function keptSteps(job) {
  if (job.kept_steps && job.kept_steps.length) return [...job.kept_steps].sort((a, b) => a - b);
  const checkpoints = job.artifacts.filter((artifact) => artifact.kind === "checkpoint");
  return [...new Set(checkpoints.map((artifact) => artifact.step))].sort((a, b) => a - b);
}

/** Every step the page can show: those with samples and those with kept weights. */
function jobSteps(job) {
  return [...new Set([...sampleArtifacts(job).map((sample) => sample.step), ...keptSteps(job)])].sort((a, b) => a - b);
}

function recommendedStep(job) {
  const step = job.evaluation ? job.evaluation.recommended_step : null;
  return step === undefined ? null : step;
}

function defaultStep(job) {
  const recommended = recommendedStep(job);
  if (recommended !== null && jobSteps(job).includes(recommended)) return recommended;
  const steps = keptSteps(job).length ? keptSteps(job) : jobSteps(job);
  return steps.length ? steps[steps.length - 1] : null;
}

function settleStep(page, job) {
  if (page.stepChosen && jobSteps(job).includes(page.step)) return;
  page.stepChosen = false;
  page.step = defaultStep(job);
}

function chooseStep(page, step, { scroll = false } = {}) {
  if (step === null || !jobSteps(page.job).includes(step)) return;
  page.step = step;
  page.stepChosen = true;
  showStep(page, { scroll });
}

function stepText(page, step) {
  return `Step ${step}${step === recommendedStep(page.job) ? " (recommended)" : ""}`;
}

/** Bring every part of the page that follows the chosen step up to date. */
function showStep(page, { scroll = false } = {}) {
  if (page.step === null) return;
  if (page.slider) {
    const { input, output, steps } = page.slider;
    input.value = Math.max(0, steps.indexOf(page.step));
    output.textContent = stepText(page, page.step);
    input.setAttribute("aria-valuetext", stepText(page, page.step));
  }
  if (page.sampleTable) highlightStep(page.sampleTable, page.step, scroll);
  page.recommendationShow.hidden = page.step === recommendedStep(page.job);
  showDownloadStep(page);
  showGenerateStep(page);
}

// ── job page: recommendation and scores ───────────────────────────────────────────────────────

function renderRecommendation(page, job) {
  const step = recommendedStep(job);
  page.recommendation.hidden = step === null;
  if (step === null) return;
  const { reason, recommended_is_final: isFinal } = job.evaluation;
  page.recommendationTitle.textContent = `Recommended: step ${step}`;
  page.recommendationReason.textContent = reason || "";
  const last = Math.max(...jobSteps(job), job.progress.total_steps || 0);
  page.recommendationNote.textContent = isFinal
    ? "It is the last step of training."
    : `That is earlier than the last step (${last}), so it is preselected below for the samples, the downloads and new images: Dreambooth overfits fast, and later is not always better.`;
  page.recommendationShow.textContent = `Choose step ${step}`;
}

const SCORE_COLUMNS = [
  ["subject_fidelity", "Subject fidelity"],
  ["prompt_fidelity", "Prompt fidelity"],
  ["memorisation", "Memorisation"],
  ["score", "Score"],
];

/** The evaluation's per-step scores as a table; the recommended row is marked in words, not only colour. */
function renderScores(page, job) {
  const evaluation = job.evaluation;
  const key = evaluation ? JSON.stringify([evaluation.steps, evaluation.recommended_step]) : "";
  if (key === page.scoresKey) return;
  page.scoresKey = key;
  if (!evaluation || !evaluation.steps || !evaluation.steps.length) {
    page.scores.replaceChildren();
    return;
  }
  const table = document.createElement("table");
  table.className = "scores-table";
  table.append(element("caption", `Sample scores by training step, scored with ${evaluation.scorer}`, "visually-hidden"));
  const head = document.createElement("tr");
  head.append(...["Step", ...SCORE_COLUMNS.map(([, title]) => title)].map((title) => Object.assign(element("th", title), { scope: "col" })));
  const body = document.createElement("tbody");
  for (const row of evaluation.steps) {
    const recommended = row.step === evaluation.recommended_step;
    const tr = document.createElement("tr");
    const heading = Object.assign(element("th", `Step ${row.step}`), { scope: "row" });
    if (recommended) {
      tr.className = "recommended";
      heading.append(" ", element("span", "recommended", "tag"));
    }
    tr.append(heading, ...SCORE_COLUMNS.map(([name]) => element("td", formatScore(name, row[name]))));
    body.append(tr);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  table.append(thead, body);
  const scroller = Object.assign(document.createElement("div"), { className: "table-scroller" });
  scroller.append(table);
  page.scores.replaceChildren(
    element("h3", "Scores by step"),
    element("p", `From ${evaluation.scorer}, each 0 to 1. Subject fidelity: the samples look like your photos. Prompt fidelity: samples in new contexts follow their prompts. Memorisation: the share of samples that copy a training photo (lower is better). Score balances the three.`, "help"),
    scroller,
  );
}

function formatScore(name, value) {
  if (typeof value !== "number") return "–";
  return name === "memorisation" ? `${Math.round(value * 100)} %` : value.toFixed(2);
}

// ── job page: loss chart ──────────────────────────────────────────────────────────────────────

const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 320, height: 100, pad: 6 };

/** The server's loss history, then the live losses reported since its last point. */
function lossPoints(page, job) {
  const history = (job.loss_history || []).map(([step, loss]) => ({ step, loss }));
  const lastKept = history.length ? history[history.length - 1].step : 0;
  page.live = page.live.filter((point) => point.step > lastKept);
  const { step, loss } = job.progress;
  const lastLive = page.live[page.live.length - 1];
  if (loss !== null && step > lastKept && (!lastLive || step > lastLive.step)) page.live.push({ step, loss });
  return [...history, ...page.live];
}

function renderLossChart(container, points, job) {
  if (points.length < 2) {
    const text = TERMINAL.has(job.status) ? "This job recorded no loss curve." : "The loss curve appears here as training reports it.";
    container.replaceChildren(element("p", text, "muted"));
    return;
  }
  const svg = svgNode("svg", { viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img", class: "loss-chart" });
  const latest = points[points.length - 1];
  const lastStep = Math.max(job.progress.total_steps, latest.step, 1);
  const recommended = recommendedStep(job);
  const marker = recommended !== null ? `; step ${recommended} is recommended` : "";
  svg.append(svgNode("title", {}, `Training loss at ${points.length} points up to step ${latest.step}, latest ${latest.loss.toFixed(4)}${marker}`));
  if (recommended !== null) {
    const x = chartX(recommended, lastStep).toFixed(1);
    svg.append(svgNode("line", { x1: x, x2: x, y1: 0, y2: CHART.height, class: "chart-marker" }));
  }
  svg.append(svgNode("polyline", { points: chartPoints(points, lastStep), class: "loss-line" }));
  const [low, high] = lossRange(points);
  const caption = `loss ${low.toFixed(3)} – ${high.toFixed(3)} · latest ${latest.loss.toFixed(4)} at step ${latest.step}${recommended !== null ? ` · dashed line: recommended step ${recommended}` : ""}`;
  container.replaceChildren(svg, element("p", caption, "muted chart-caption"));
}

function chartX(step, lastStep) {
  return CHART.pad + (step / lastStep) * (CHART.width - 2 * CHART.pad);
}

function chartPoints(points, lastStep) {
  const [low, high] = lossRange(points);
  const { height, pad } = CHART;
  return points
    .map(({ step, loss }) => {
      const y = pad + ((high - loss) / (high - low || 1)) * (height - 2 * pad);
      return `${chartX(step, lastStep).toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

function lossRange(points) {
  const losses = points.map((point) => point.loss);
  return [Math.min(...losses), Math.max(...losses)];
}

function svgNode(tag, attributes, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

// ── job page: samples ─────────────────────────────────────────────────────────────────────────

/** A grid of prompts (rows) by training step (columns), and the slider that chooses the step. */
function renderSamples(page, job) {
  const samples = sampleArtifacts(job);
  const steps = jobSteps(job);
  const key = [samples.map((sample) => sample.id).join(","), steps.join(","), recommendedStep(job), job.status].join("|");
  if (key === page.samplesKey) return;
  page.samplesKey = key;
  const urls = new Set(samples.map((sample) => sample.url));
  for (const url of page.sampleUrls) if (!urls.has(url)) page.current.blobs.revoke(url);
  page.sampleUrls = urls;
  const sliderFocused = page.slider && document.activeElement === page.slider.input;
  page.slider = steps.length > 1 ? stepSlider(page, steps) : null;
  page.sampleTable = null;
  const parts = page.slider ? [page.slider.wrapper] : [];
  if (samples.length) {
    const sampleSteps = [...new Set(samples.map((sample) => sample.step))].sort((a, b) => a - b);
    const prompts = [...new Set(samples.map((sample) => sample.prompt || ""))];
    page.sampleTable = sampleTable(samples, sampleSteps, prompts, recommendedStep(job), page.current);
    const scroller = Object.assign(document.createElement("div"), { className: "sample-scroller" });
    scroller.append(page.sampleTable);
    parts.push(scroller);
  } else {
    const text = job.status === "succeeded" ? "This job made no samples." : "Samples appear here as training makes them.";
    parts.push(element("p", text, "muted"));
  }
  page.samples.replaceChildren(...parts);
  if (sliderFocused && page.slider) page.slider.input.focus();
}

function sampleTable(samples, steps, prompts, recommended, current) {
  const table = document.createElement("table");
  table.className = "sample-grid";
  table.append(element("caption", "Samples by prompt and training step", "visually-hidden"));
  const head = document.createElement("tr");
  head.append(element("th", "Prompt"), ...steps.map((step) => columnHeader(step, step === recommended)));
  const body = document.createElement("tbody");
  for (const prompt of prompts) {
    const row = document.createElement("tr");
    const heading = element("th", prompt);
    heading.scope = "row";
    row.append(heading, ...steps.map((step) => sampleCell(samples, prompt, step, step === recommended, current)));
    body.append(row);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  table.append(thead, body);
  return table;
}

function columnHeader(step, recommended) {
  const header = element("th", `Step ${step}`);
  header.scope = "col";
  header.dataset.step = step;
  if (recommended) {
    header.classList.add("recommended");
    header.append(" ", element("span", "recommended", "tag"));
  }
  return header;
}

function sampleCell(samples, prompt, step, recommended, current) {
  const cell = document.createElement("td");
  cell.dataset.step = step;
  if (recommended) cell.classList.add("recommended");
  for (const sample of samples.filter((s) => (s.prompt || "") === prompt && s.step === step)) {
    const img = document.createElement("img");
    img.alt = `Sample at step ${step}: ${prompt}${sample.seed !== null ? ` (seed ${sample.seed})` : ""}`;
    img.width = 256;
    img.height = 256;
    showImage(img, sample.url, current);
    cell.append(img);
  }
  return cell;
}

function stepSlider(page, steps) {
  const wrapper = Object.assign(document.createElement("div"), { className: "step-slider" });
  const input = Object.assign(document.createElement("input"), { type: "range", min: 0, max: steps.length - 1, id: "step-slider" });
  input.setAttribute("aria-describedby", "step-slider-help");
  const label = element("label", "Training step");
  label.htmlFor = input.id;
  const output = element("output");
  output.htmlFor = input.id;
  const help = element("p", "Choose the step to compare, download and generate from: Dreambooth overfits fast, so an earlier step is often better.", "help");
  help.id = "step-slider-help";
  input.addEventListener("input", () => chooseStep(page, steps[Number(input.value)], { scroll: true }));
  wrapper.append(label, input, output, help);
  return { wrapper, input, output, steps };
}

function highlightStep(table, step, scroll) {
  for (const cell of table.querySelectorAll("[data-step]")) cell.classList.toggle("selected", Number(cell.dataset.step) === step);
  const header = table.querySelector(`th[data-step="${step}"]`);
  if (header && scroll) header.scrollIntoView({ block: "nearest", inline: "nearest" });
}

// ── job page: downloads ───────────────────────────────────────────────────────────────────────

const DOWNLOADS = [
  { title: "Single file", help: "One .safetensors file in the original Stable Diffusion layout: it loads in diffusers, AUTOMATIC1111 and ComfyUI.",
    options: [{ format: "single", dtype: "fp16", text: "fp16" }, { format: "single", dtype: "fp32", text: "fp32" }] },
  { title: "Diffusers zip", help: "The pipeline folder for diffusers' from_pretrained, with DDIM as its scheduler; built on the first download.",
    options: [{ format: "diffusers", dtype: "fp16", text: "fp16" }, { format: "diffusers", dtype: "fp32", text: "fp32" }] },
  { title: "LoRA", lora: true, help: "The small adapters alone, to load over the base model: diffusers' load_lora_weights, or the kohya format for AUTOMATIC1111 and ComfyUI.",
    options: [{ format: "lora", dtype: "fp16", text: "diffusers", name: "LoRA (diffusers)" },
      { format: "lora_kohya", dtype: "fp16", text: "kohya / A1111 / ComfyUI", name: "LoRA (kohya / A1111 / ComfyUI)" }] },
];

function renderDownloads(page, job) {
  const kept = keptSteps(job);
  const lora = job.settings.training_method === "lora";
  const key = [job.status, kept.join(","), lora].join("|");
  if (key === page.downloadsKey) return;
  page.downloadsKey = key;
  page.downloadParts = null;
  if (job.status !== "succeeded" || !kept.length) {
    const text = job.status === "succeeded" ? "This job kept no checkpoint." : "The checkpoint can be downloaded once the job has succeeded.";
    page.downloads.replaceChildren(element("p", text, "muted"));
    return;
  }
  const heading = element("p", "", "download-step");
  const missing = element("p", "", "help");
  const list = Object.assign(document.createElement("ul"), { className: "downloads" });
  const buttons = [];
  for (const group of DOWNLOADS.filter((candidate) => lora || !candidate.lora)) {
    const item = document.createElement("li");
    const row = Object.assign(document.createElement("div"), { className: "download-buttons" });
    row.append(element("span", group.title, "download-title"));
    const bar = Object.assign(document.createElement("progress"), { max: 1, value: 0, hidden: true });
    for (const option of group.options) {
      const button = element("button", option.text, "button-primary");
      button.type = "button";
      button.setAttribute("aria-label", `Download ${option.name || `${group.title.toLowerCase()} ${option.text}`}`);
      button.addEventListener("click", () => downloadWeights(page, option, button, bar));
      buttons.push(button);
      row.append(button);
    }
    item.append(row, element("p", group.help, "help"), bar);
    list.append(item);
  }
  page.downloadParts = { heading, missing, buttons };
  page.downloads.replaceChildren(heading, missing, list);
}

function showDownloadStep(page) {
  const parts = page.downloadParts;
  if (!parts) return;
  const kept = keptSteps(page.job).includes(page.step);
  parts.heading.textContent = `Weights at ${stepText(page, page.step).toLowerCase()}`;
  if (jobSteps(page.job).length > 1) parts.heading.append(element("span", " · choose another with the Training step slider under Samples", "muted"));
  parts.missing.textContent = kept ? "" : `No weights were kept at step ${page.step}; kept steps: ${keptSteps(page.job).join(", ")}.`;
  parts.missing.hidden = kept;
  for (const button of parts.buttons) button.disabled = !kept || button.dataset.busy === "true";
}

/** Fetch a checkpoint of the chosen step with the token, showing progress, then save it from an object URL. */
async function downloadWeights(page, option, button, bar) {
  const { signal } = page.current.controller;
  const step = page.step;
  const url = `/api/jobs/${page.job.id}/checkpoint?format=${option.format}&dtype=${option.dtype}&step=${step}`;
  for (const old of button.closest("li").querySelectorAll(".field-error")) old.remove();
  button.disabled = true;
  button.dataset.busy = "true";
  bar.hidden = false;
  bar.value = 0;
  bar.setAttribute("aria-label", `${button.getAttribute("aria-label")} at step ${step}`);
  try {
    const response = await request(url, { signal });
    const blob = await readWithProgress(response, knownSize(page.job, option, step), (fraction) => { bar.value = fraction; });
    const extension = option.format === "diffusers" ? "zip" : "safetensors";
    saveBlob(blob, fileNameOf(response) || `dreambooth-step${step}-${option.format}-${option.dtype}.${extension}`);
  } catch (error) {
    if (!signal.aborted && error.status !== 401) alertError(button.closest("li"), error);
  } finally {
    delete button.dataset.busy;
    bar.hidden = true;
    showDownloadStep(page);
  }
}

function knownSize(job, option, step) {
  const artifact = job.artifacts.find((candidate) => candidate.kind === "checkpoint" && (candidate.format || "single") === option.format
    && candidate.dtype === option.dtype && candidate.step === step);
  return artifact ? artifact.size_bytes : 0;
}

async function readWithProgress(response, expectedBytes, onProgress) {
  const total = Number(response.headers.get("Content-Length")) || expectedBytes;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(total ? received / total : 0);
  }
  return new Blob(chunks, { type: response.headers.get("Content-Type") || "application/octet-stream" });
}

function fileNameOf(response) {
  const match = (response.headers.get("Content-Disposition") || "").match(/filename="?([^";]+)"?/);
  return match ? match[1] : null;
}

function saveBlob(blob, fileName) {
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: fileName });
  document.body.append(link);
  link.click();
  link.remove();
  // note: the browser reads the URL after click() returns; revoke it once the save has begun.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function alertError(container, error) {
  const message = element("p", error.message, "field-error");
  message.setAttribute("role", "alert");
  container.append(message);
}

// ── job page: generating images ───────────────────────────────────────────────────────────────

const GENERATE = [
  { name: "prompt", label: "Prompt", type: "text", help: "Name the subject as the instance prompt does, then put it anywhere." },
  { name: "negative_prompt", label: "Negative prompt", type: "text", optional: true, help: "What the images should not show; may stay empty." },
  { name: "scheduler", label: "Scheduler", type: "select", options: SAMPLERS, help: "DDIM at about 100 steps suits Dreambooth models: the study found it rescues overfit ones." },
  { name: "num_inference_steps", label: "Inference steps", type: "int", min: 1, max: 500, help: "More steps turn noise into detail." },
  { name: "guidance_scale", label: "Guidance scale", type: "float", help: "How closely the images follow the prompt (0 to 30)." },
  { name: "seed", label: "Seed", type: "int", min: 0, max: 4294967295, optional: true, help: "Repeats an image; empty: a random one." },
  { name: "num_images", label: "Images", type: "int", min: 1, max: 8, help: "How many, 1 to 8." },
  { name: "step", label: "Weights from step", type: "select", options: [], help: "The chosen training step." },
];

function renderGenerate(page, job) {
  page.generate.hidden = job.status !== "succeeded";
  if (job.status !== "succeeded" || page.generateForm.dataset.built) return;
  page.generateForm.dataset.built = "true";
  page.generateFields.append(...GENERATE.map((field) => buildField(field, "g-", "")));
  const form = page.generateForm;
  const values = { prompt: job.settings.instance_prompt, scheduler: "ddim", num_inference_steps: 100, guidance_scale: 7.5, num_images: 4 };
  for (const field of GENERATE) writeField(form.elements[field.name], field, values[field.name]);
  form.elements.step.addEventListener("change", () => chooseStep(page, Number(form.elements.step.value)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitGeneration(page);
  });
  loadGenerations(page);
}

/** The step select offers the kept steps and follows the chosen one. */
function showGenerateStep(page) {
  const select = page.generateForm.elements.step;
  if (!select) return;
  const kept = keptSteps(page.job);
  const wanted = `${kept.join(",")}:${recommendedStep(page.job)}`;
  if (select.dataset.options !== wanted) {
    select.dataset.options = wanted;
    const optionText = (step) => `${step}${step === recommendedStep(page.job) ? " (recommended)" : ""}`;
    select.replaceChildren(...kept.map((step) => new Option(optionText(step), step)));
  }
  if (kept.includes(page.step)) select.value = page.step;
}

function readGeneration(form) {
  const params = {};
  for (const field of GENERATE) {
    const value = readField(form.elements[field.name], field);
    if (value !== null && value !== "") params[field.name] = value;
  }
  if (params.step !== undefined) params.step = Number(params.step);
  return params;
}

async function submitGeneration(page) {
  const form = page.generateForm;
  const { signal } = page.current.controller;
  clearErrors(form, page.generateError);
  const params = readGeneration(form);
  if (!params.prompt) return showFieldError(form, page.generateError, "prompt", "Write a prompt first.");
  page.generateSubmit.disabled = true;
  try {
    const generation = await api(`/api/jobs/${page.job.id}/generations`, {
      method: "POST", signal, headers: { "Content-Type": "application/json" }, body: JSON.stringify(params),
    });
    page.generateStatus.textContent = `Queued ${countImages(params.num_images)} for “${params.prompt}”.`;
    trackGeneration(page, generation, { announce: true });
  } catch (error) {
    if (signal.aborted || error.status === 401) return;
    if (error.status === 409) {
      return showFieldError(form, page.generateError, null, `Not ready to generate: ${error.message}`);
    }
    // note: the API names body fields as "prompt"; other servers as "body.prompt".
    showFieldError(form, page.generateError, error.field && error.field.replace(/^body\./, ""), error.message);
  } finally {
    page.generateSubmit.disabled = false;
  }
}

function countImages(count) {
  return `${count || 1} image${count === 1 ? "" : "s"}`;
}

/** Earlier generations of this job, newest first (a list, or a page with items). */
async function loadGenerations(page) {
  const { signal } = page.current.controller;
  let body;
  try {
    body = await api(`/api/jobs/${page.job.id}/generations`, { signal });
  } catch (error) {
    return; // note: an older server has no such list; the form works without it
  }
  const items = Array.isArray(body) ? body : (body && Array.isArray(body.items) ? body.items : []);
  items.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  for (const generation of items.reverse()) trackGeneration(page, generation);
}

/** Show a generation at the top of the list (once) and poll it until it has succeeded or failed. */
function trackGeneration(page, generation, { announce: speak = false } = {}) {
  let entry = page.generations.get(generation.id);
  if (!entry) {
    entry = cloneTemplate("tpl-generation");
    page.generations.set(generation.id, entry);
    page.generationList.prepend(entry.element);
    page.generationsEmpty.hidden = true;
  }
  renderGeneration(entry, generation, page.current);
  if (!GENERATION_DONE.has(generation.status) && !entry.polled) {
    entry.polled = true;
    pollGeneration(page, entry, generation, speak);
  }
}

async function pollGeneration(page, entry, generation, speak) {
  const { signal } = page.current.controller;
  let current = generation;
  while (!GENERATION_DONE.has(current.status)) {
    try {
      await sleep(GENERATION_POLL_MS, signal);
      current = await api(`/api/generations/${current.id}`, { signal });
    } catch (error) {
      if (signal.aborted || error.status === 401) return;
      if (error.status === 404) current = { ...current, status: "failed", error: { code: "not_found", message: "This generation is gone." } };
      continue;
    }
    renderGeneration(entry, current, page.current);
  }
  if (!speak) return;
  page.generateStatus.textContent = current.status === "succeeded"
    ? `${countImages((current.images || []).length)} ready for “${current.params.prompt}”.`
    : `Generating failed: ${current.error ? current.error.message : "no reason given"}`;
}

function renderGeneration(entry, generation, current) {
  const params = generation.params || {};
  entry.prompt.textContent = params.prompt || "";
  setBadge(entry.status, generation.status);
  const details = [params.scheduler, params.num_inference_steps && `${params.num_inference_steps} steps`,
    params.guidance_scale !== undefined && `guidance ${params.guidance_scale}`, params.step !== undefined && params.step !== null && `step ${params.step}`,
    params.negative_prompt && `not: ${params.negative_prompt}`, generation.created_at && formatTime(generation.created_at)];
  entry.details.textContent = details.filter(Boolean).join(" · ");
  const failed = generation.status === "failed";
  entry.error.hidden = !failed;
  entry.error.textContent = failed && generation.error ? generation.error.message : failed ? "Generating failed." : "";
  const images = generation.images || [];
  const key = images.map((image) => image.url).join(",");
  if (entry.images.dataset.key === key) return;
  entry.images.dataset.key = key;
  entry.images.replaceChildren(...images.map((image, index) => generatedImage(image, index, params.prompt || "", current)));
}

function generatedImage(image, index, prompt, current) {
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
  current.blobs.get(image.url, current.controller.signal).then((objectUrl) => {
    img.src = objectUrl;
    save.href = objectUrl;
    save.hidden = false;
  }, () => { img.alt = `${img.alt} (could not be loaded)`; });
  const caption = document.createElement("figcaption");
  caption.append(element("span", seed), save);
  figure.append(img, caption);
  item.append(figure);
  return item;
}

// ── job page: cancel, delete ──────────────────────────────────────────────────────────────────

async function cancelJob(page) {
  const ok = await confirmAction("Cancel this job? A running job stops at its next training step.", "Cancel job");
  if (!ok) return;
  try {
    renderJob(page, await api(`/api/jobs/${page.job.id}/cancel`, { method: "POST" }));
  } catch (error) {
    if (error.status !== 401) alertError(page.cancel.parentElement, error);
  }
}

async function deleteJob(page) {
  const ok = await confirmAction("Delete this job and every file it owns: photos, samples, checkpoints and generated images? This cannot be undone.", "Delete job");
  if (!ok) return;
  try {
    await api(`/api/jobs/${page.job.id}`, { method: "DELETE" });
    go("#/");
  } catch (error) {
    if (error.status !== 401) alertError(page.delete.parentElement, error);
  }
}

function confirmAction(message, confirmLabel) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-message").textContent = message;
  document.getElementById("confirm-button").textContent = confirmLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

// ── start ─────────────────────────────────────────────────────────────────────────────────────

document.getElementById("sign-out").addEventListener("click", () => signOut("You signed out."));
window.addEventListener("hashchange", () => {
  takeTokenFromUrl();
  route();
});
takeTokenFromUrl();
route();

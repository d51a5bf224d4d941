// @ts-check
// The job page: its state, progress, loss, samples by step, scores, downloads and generated images,
// kept up to date while it runs. One training step is chosen at a time: the samples slider, the
// downloads and the generate form all follow it. It starts at the recommended step (else the last
// kept one) until the user picks another.

import { api } from "../api.js";
import { alertError, focusHeading, mountView, setBadge } from "../dom.js";
import { formatTime } from "../format.js";
import { defaultStep, isFinished, jobSteps, recommendedStep } from "../job-data.js";
import { go, markNav } from "../router.js";
import { renderDownloads, showDownloadStep } from "./downloads.js";
import { renderGenerate, showGenerateStep } from "./generate.js";
import { renderJobPhotos } from "./job-photos.js";
import { followJob, renderProgress } from "./live.js";
import { renderLoss } from "./loss-chart.js";
import { highlightStep, renderSamples } from "./samples.js";
import { renderRecommendation, renderScores } from "./scores.js";

/** @typedef {import("../job-data.js").Job} Job */

/**
 * The job page: the template's slots, the job as last heard, the chosen step, and what each part
 * keeps between updates (each redraws only when its `...Key` changes).
 * @typedef {Record<string, any> & {
 *   current: import("../router.js").View,
 *   job: Job,
 *   step: number | null,
 *   stepChosen: boolean,
 *   chooseStep: (step: number | null, options?: {scroll?: boolean}) => void,
 * }} JobPage
 */

export async function showJob(/** @type {import("../router.js").View} */ current, /** @type {string} */ jobId) {
  let job;
  try {
    job = await api(`/api/jobs/${jobId}`, { signal: current.signal });
  } catch (error) {
    const { status } = /** @type {{status?: number}} */ (error);
    if (status !== 404 && status !== 422) throw error;
    return showNotFound();
  }
  const page = mountJobPage(job, current);
  renderJob(page, job);
  focusHeading(page.root);
  if (!isFinished(job)) await followJob(jobId, current.signal, (update) => renderJob(page, update), showNotFound);
}

function showNotFound() {
  const { root } = mountView("tpl-not-found");
  markNav("jobs");
  focusHeading(root);
}

/** @returns {JobPage} */
function mountJobPage(/** @type {Job} */ job, /** @type {import("../router.js").View} */ current) {
  /** @type {JobPage} */
  const page = {
    ...mountView("tpl-job"), current, job, live: [], lastAnnounced: "",
    samplesKey: null, sampleUrls: new Set(), scoresKey: null, downloadsKey: null,
    step: null, stepChosen: false, chooseStep: () => {}, slider: null, sampleTable: null, downloadParts: null,
    generations: new Map(), photosShown: false,
  };
  page.chooseStep = (step, options) => chooseStep(page, step, options);
  markNav("jobs");
  page.title.textContent = job.settings.instance_prompt;
  page.cancel.addEventListener("click", () => cancelJob(page));
  page.delete.addEventListener("click", () => deleteJob(page));
  page.recommendationShow.addEventListener("click", () => page.chooseStep(recommendedStep(page.job)));
  return page;
}

function renderJob(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  page.job = job;
  setBadge(page.status, job.status);
  page.meta.textContent = jobMeta(job);
  renderProgress(page, job);
  renderFailure(page, job);
  settleStep(page, job);
  renderRecommendation(page, job);
  renderLoss(page, job);
  renderSamples(page, job);
  renderScores(page, job);
  renderDownloads(page, job);
  renderGenerate(page, job);
  renderJobPhotos(page, job);
  showStep(page);
  page.cancel.hidden = isFinished(job) || job.cancel_requested;
}

function jobMeta(/** @type {Job} */ job) {
  const { settings } = job;
  const parts = [`Submitted ${formatTime(job.created_at)}`, `${job.photo_count} photos`, `preset ${settings.preset}`, settings.base_model];
  if (settings.training_method === "lora") parts.push(settings.lora_rank ? `LoRA rank ${settings.lora_rank}` : "LoRA");
  if (settings.training_method === "pivotal") parts.push(pivotalText(settings));
  const memory = memoryText(job.memory_plan);
  if (memory) parts.push(memory);
  if (job.finished_at) parts.push(`finished ${formatTime(job.finished_at)}`);
  return parts.join(" · ");
}

/** "pivotal: <sks>, then full Dreambooth" (or "then LoRA rank 4"). */
function pivotalText(/** @type {Record<string, any>} */ settings) {
  const second = settings.pivotal_second_phase === "lora" ? `LoRA rank ${settings.lora_rank}` : "full Dreambooth";
  return `pivotal: ${settings.placeholder_token}, then ${second}`;
}

/** @type {Record<string, (value: any) => string>} */
const MEMORY_SAVERS = {
  use_8bit_adam: () => "8-bit Adam",
  mixed_precision: (value) => value,
  gradient_checkpointing: () => "gradient checkpointing",
  enable_xformers_memory_efficient_attention: () => "xformers",
  train_batch_size: (value) => `batch ${value}`,
  gradient_accumulation_steps: (value) => `${value} accumulation steps`,
  sample_batch_size: (value) => `class images in batches of ${value}`,
};

/** The memory savers the worker turned on for its GPU, e.g. "16 GB GPU: 8-bit Adam, fp16, gradient checkpointing". */
function memoryText(/** @type {Job["memory_plan"]} */ plan) {
  if (!plan || plan.gpu_memory_gib === null) return "";
  const changes = Object.entries(plan.changes).map(([name, value]) => (MEMORY_SAVERS[name] ? MEMORY_SAVERS[name](value) : `${name} ${value}`));
  const gpu = `${Math.round(plan.gpu_memory_gib)} GB GPU`;
  return changes.length ? `${gpu}: ${changes.join(", ")}` : gpu;
}

function renderFailure(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  const failed = job.status === "failed" || job.status === "cancelled";
  page.failure.hidden = !failed;
  if (!failed) return;
  page.failure.setAttribute("role", "alert");
  page.failureTitle.textContent = job.status === "failed" ? "Training failed." : "This job was cancelled.";
  page.failureMessage.textContent = job.error ? job.error.message : "";
}

// ── the chosen step ───────────────────────────────────────────────────────────────────────────

/** Keep the user's step while the job still has it; otherwise follow the default. */
function settleStep(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  if (page.stepChosen && page.step !== null && jobSteps(job).includes(page.step)) return;
  page.stepChosen = false;
  page.step = defaultStep(job);
}

function chooseStep(/** @type {JobPage} */ page, /** @type {number | null} */ step, { scroll = false } = {}) {
  if (step === null || !jobSteps(page.job).includes(step)) return;
  page.step = step;
  page.stepChosen = true;
  showStep(page, { scroll });
}

/** Bring every part of the page that follows the chosen step up to date. */
function showStep(/** @type {JobPage} */ page, { scroll = false } = {}) {
  if (page.step === null) return;
  highlightStep(page, scroll);
  page.recommendationShow.hidden = page.step === recommendedStep(page.job);
  showDownloadStep(page);
  showGenerateStep(page);
}

// ── cancel, delete ────────────────────────────────────────────────────────────────────────────

async function cancelJob(/** @type {JobPage} */ page) {
  const ok = await confirmAction("Cancel this job? A running job stops at its next training step.", "Cancel job");
  if (!ok) return;
  try {
    renderJob(page, await api(`/api/jobs/${page.job.id}/cancel`, { method: "POST" }));
  } catch (error) {
    if (/** @type {{status?: number}} */ (error).status !== 401) alertError(page.cancel.parentElement, /** @type {Error} */ (error));
  }
}

async function deleteJob(/** @type {JobPage} */ page) {
  const message = "Delete this job and every file it owns: photos, samples, checkpoints and generated images? This cannot be undone.";
  if (!(await confirmAction(message, "Delete job"))) return;
  try {
    await api(`/api/jobs/${page.job.id}`, { method: "DELETE" });
    go("#/");
  } catch (error) {
    if (/** @type {{status?: number}} */ (error).status !== 401) alertError(page.delete.parentElement, /** @type {Error} */ (error));
  }
}

/** Ask in the page's dialog; resolves true when the user confirms. */
function confirmAction(/** @type {string} */ message, /** @type {string} */ confirmLabel) {
  const dialog = /** @type {HTMLDialogElement} */ (document.getElementById("confirm-dialog"));
  /** @type {HTMLElement} */ (document.getElementById("confirm-message")).textContent = message;
  /** @type {HTMLElement} */ (document.getElementById("confirm-button")).textContent = confirmLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

// @ts-check
// The job page's downloads: the weights at the chosen step as one file, a diffusers zip, LoRA
// adapters or a pivotal job's learned token, fetched with the token (showing progress) and saved
// from an object URL.

import { request } from "../api.js";
import { alertError, element } from "../dom.js";
import { jobSteps, keptSteps, stepText } from "../job-data.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {import("./job.js").JobPage} JobPage */
/** @typedef {{format: string, dtype: string, text: string, name?: string}} Download */

/**
 * Each group names the training it needs, if any: `lora` (LoRA, or pivotal tuning's LoRA second phase), `pivotal`.
 * @type {{title: string, help: string, needs?: "lora" | "pivotal", options: Download[]}[]}
 */
const DOWNLOADS = [
  {
    title: "Single file",
    help: "One .safetensors file in the original Stable Diffusion layout: it loads in diffusers, AUTOMATIC1111 and ComfyUI.",
    options: [{ format: "single", dtype: "fp16", text: "fp16" }, { format: "single", dtype: "fp32", text: "fp32" }],
  },
  {
    title: "Diffusers zip",
    help: "The pipeline folder for diffusers' from_pretrained, with DDIM as its scheduler; built on the first download.",
    options: [{ format: "diffusers", dtype: "fp16", text: "fp16" }, { format: "diffusers", dtype: "fp32", text: "fp32" }],
  },
  {
    title: "LoRA",
    needs: "lora",
    help: "The small adapters alone, to load over the base model: diffusers' load_lora_weights, or the kohya format for AUTOMATIC1111 and ComfyUI.",
    options: [
      { format: "lora", dtype: "fp16", text: "diffusers", name: "LoRA (diffusers)" },
      { format: "lora_kohya", dtype: "fp16", text: "kohya / A1111 / ComfyUI", name: "LoRA (kohya / A1111 / ComfyUI)" },
    ],
  },
  {
    title: "Embedding",
    needs: "pivotal",
    help: "The learned token alone (textual inversion), fp32: load it beside the single file (which keeps CLIP's released vocabulary, as AUTOMATIC1111 and ComfyUI need) or the base model with the LoRA; the diffusers zip already holds it.",
    options: [{ format: "embedding", dtype: "fp32", text: "safetensors", name: "embedding" }],
  },
];

/** What the job's training gives beyond the model: LoRA files, and the learned token of pivotal tuning. */
function trainedWith(/** @type {Job} */ job) {
  const { training_method: method, pivotal_second_phase: second } = job.settings;
  return { lora: method === "lora" || (method === "pivotal" && second === "lora"), pivotal: method === "pivotal" };
}

/** How each tool loads the embedding: AUTOMATIC1111 and ComfyUI call it by its file's name. */
function embeddingUse(/** @type {Job} */ job) {
  const token = job.settings.placeholder_token;
  return [
    "AUTOMATIC1111: put it in embeddings/; the file's name is the trigger word, so rename it (ana.safetensors, then prompt “a photo of ana person”).",
    "ComfyUI: put it in models/embeddings/ and write embedding:NAME in the prompt, NAME being the file's name.",
    `diffusers: pipe.load_textual_inversion(path, token="${token}"), then prompt with ${token}; SDXL: its clip_l and clip_g tensors into text_encoder and text_encoder_2.`,
  ];
}

/** Whether `step` was in pivotal tuning's textual-inversion phase: its weights are the embedding alone. */
function inversionStep(/** @type {Job} */ job, /** @type {number} */ step) {
  return job.artifacts.some((artifact) => artifact.kind === "weights" && artifact.step === step && artifact.format === "embedding");
}

export function renderDownloads(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  const kept = keptSteps(job);
  const trained = trainedWith(job);
  const key = [job.status, kept.join(","), trained.lora, trained.pivotal].join("|");
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
  const list = element("ul", "", "downloads");
  /** @type {HTMLButtonElement[]} */
  const buttons = [];
  for (const group of DOWNLOADS.filter((candidate) => !candidate.needs || trained[candidate.needs])) {
    const item = document.createElement("li");
    const row = element("div", "", "download-buttons");
    row.append(element("span", group.title, "download-title"));
    const bar = Object.assign(document.createElement("progress"), { max: 1, value: 0, hidden: true });
    for (const option of group.options) {
      const button = element("button", option.text, "button-primary");
      button.type = "button";
      button.setAttribute("aria-label", `Download ${option.name || `${group.title.toLowerCase()} ${option.text}`}`);
      button.dataset.format = option.format;
      button.addEventListener("click", () => downloadWeights(page, option, button, bar));
      buttons.push(button);
      row.append(button);
    }
    item.append(row, element("p", group.help, "help"), bar);
    if (group.needs === "pivotal") {
      const uses = element("ul", "", "help embedding-use");
      uses.append(...embeddingUse(job).map((line) => element("li", line)));
      item.append(uses);
    }
    list.append(item);
  }
  page.downloadParts = { heading, missing, buttons };
  page.downloads.replaceChildren(heading, missing, list);
}

/** Name the chosen step, and offer its weights only where they were kept. */
export function showDownloadStep(/** @type {JobPage} */ page) {
  const { downloadParts: parts, step } = page;
  if (!parts || step === null) return;
  const kept = keptSteps(page.job);
  const isKept = kept.includes(step);
  const embeddingOnly = isKept && inversionStep(page.job, step);
  parts.heading.textContent = `Weights at ${stepText(page.job, step).toLowerCase()}`;
  if (jobSteps(page.job).length > 1) parts.heading.append(element("span", " · choose another with the Training step slider under Samples", "muted"));
  parts.missing.textContent = !isKept
    ? `No weights were kept at step ${step}; kept steps: ${kept.join(", ")}.`
    : embeddingOnly ? `Step ${step} was in the textual-inversion phase, which learns only the token: its download is the embedding.` : "";
  parts.missing.hidden = !parts.missing.textContent;
  for (const button of parts.buttons) {
    const offered = isKept && (!embeddingOnly || button.dataset.format === "embedding");
    button.disabled = !offered || button.dataset.busy === "true";
  }
}

async function downloadWeights(
  /** @type {JobPage} */ page, /** @type {Download} */ option, /** @type {HTMLButtonElement} */ button, /** @type {HTMLProgressElement} */ bar,
) {
  const { signal } = page.current;
  const step = /** @type {number} */ (page.step); // note: the buttons are enabled only at a kept step
  const url = `/api/jobs/${page.job.id}/checkpoint?format=${option.format}&dtype=${option.dtype}&step=${step}`;
  const item = /** @type {HTMLElement} */ (button.closest("li"));
  for (const old of item.querySelectorAll(".field-error")) old.remove();
  button.disabled = true;
  button.dataset.busy = "true";
  bar.hidden = false;
  bar.value = 0;
  bar.setAttribute("aria-label", `${button.getAttribute("aria-label")} at step ${step}`);
  try {
    const response = await request(url, { signal });
    const blob = await readWithProgress(response, knownSize(page.job, option, step), (fraction) => {
      bar.value = fraction;
    });
    const extension = option.format === "diffusers" ? "zip" : "safetensors";
    saveBlob(blob, fileNameOf(response) || `dreambooth-step${step}-${option.format}-${option.dtype}.${extension}`);
  } catch (error) {
    if (!signal.aborted && /** @type {{status?: number}} */ (error).status !== 401) alertError(item, /** @type {Error} */ (error));
  } finally {
    delete button.dataset.busy;
    bar.hidden = true;
    showDownloadStep(page);
  }
}

/** The size the job lists for this download, for progress when the server sends no Content-Length. */
function knownSize(/** @type {Job} */ job, /** @type {Download} */ option, /** @type {number} */ step) {
  const artifact = job.artifacts.find(
    (candidate) => candidate.kind === "checkpoint" && (candidate.format || "single") === option.format
      && candidate.dtype === option.dtype && candidate.step === step,
  );
  return artifact ? artifact.size_bytes : 0;
}

/**
 * The response's body as a Blob, telling `onProgress` the fraction read so far.
 * @param {Response} response
 * @param {number} expectedBytes the size to expect when the response does not say
 * @param {(fraction: number) => void} onProgress
 */
async function readWithProgress(response, expectedBytes, onProgress) {
  const total = Number(response.headers.get("Content-Length")) || expectedBytes;
  const reader = /** @type {ReadableStream<Uint8Array>} */ (response.body).getReader();
  /** @type {BlobPart[]} */
  const chunks = [];
  let received = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(/** @type {BlobPart} */ (value));
    received += value.length;
    onProgress(total ? received / total : 0);
  }
  return new Blob(chunks, { type: response.headers.get("Content-Type") || "application/octet-stream" });
}

function fileNameOf(/** @type {Response} */ response) {
  const match = (response.headers.get("Content-Disposition") || "").match(/filename="?([^";]+)"?/);
  return match ? match[1] : null;
}

function saveBlob(/** @type {Blob} */ blob, /** @type {string} */ fileName) {
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: fileName });
  document.body.append(link);
  link.click();
  link.remove();
  // note: the browser reads the URL after click() returns; revoke it once the save has begun.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

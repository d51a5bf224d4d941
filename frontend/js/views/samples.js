// @ts-check
// The job page's samples: a grid of prompts (rows) by training step (columns), and the slider that
// chooses the step the page shows, downloads and generates from.

import { showImage } from "../blobs.js";
import { element } from "../dom.js";
import { jobSteps, recommendedStep, sampleArtifacts, stepText } from "../job-data.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {import("../job-data.js").Artifact} Artifact */
/** @typedef {import("./job.js").JobPage} JobPage */

const OVERFITS = "Dreambooth overfits fast, so an earlier step is often better.";

export function renderSamples(/** @type {JobPage} */ page, /** @type {Job} */ job) {
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
    page.sampleTable = sampleTable(page, samples, sampleSteps, prompts);
    const scroller = element("div", "", "sample-scroller");
    scroller.append(page.sampleTable);
    parts.push(scroller);
  } else {
    const text = job.status === "succeeded" ? "This job made no samples." : "Samples appear here as training makes them.";
    parts.push(element("p", text, "muted"));
  }
  page.samples.replaceChildren(...parts);
  if (sliderFocused && page.slider) page.slider.input.focus();
}

/** Move the slider and the grid's highlight to the chosen step. */
export function highlightStep(/** @type {JobPage} */ page, /** @type {boolean} */ scroll) {
  const step = page.step;
  if (step === null) return;
  if (page.slider) {
    const { input, output, steps } = page.slider;
    input.value = Math.max(0, steps.indexOf(step));
    output.textContent = stepText(page.job, step);
    input.setAttribute("aria-valuetext", stepText(page.job, step));
  }
  const table = page.sampleTable;
  if (!table) return;
  for (const cell of table.querySelectorAll("[data-step]")) cell.classList.toggle("selected", Number(cell.dataset.step) === step);
  const header = table.querySelector(`th[data-step="${step}"]`);
  if (header && scroll) header.scrollIntoView({ block: "nearest", inline: "nearest" });
}

function sampleTable(
  /** @type {JobPage} */ page, /** @type {Artifact[]} */ samples, /** @type {number[]} */ steps, /** @type {string[]} */ prompts,
) {
  const recommended = recommendedStep(page.job);
  const table = element("table", "", "sample-grid");
  table.append(element("caption", "Samples by prompt and training step", "visually-hidden"));
  const head = document.createElement("tr");
  head.append(element("th", "Prompt"), ...steps.map((step) => columnHeader(step, step === recommended)));
  const body = document.createElement("tbody");
  for (const prompt of prompts) {
    const row = document.createElement("tr");
    const heading = element("th", prompt);
    heading.scope = "row";
    const cells = steps.map((step) => sampleCell(page, samples.filter((s) => (s.prompt || "") === prompt && s.step === step), step, recommended));
    row.append(heading, ...cells);
    body.append(row);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  table.append(thead, body);
  return table;
}

function columnHeader(/** @type {number} */ step, /** @type {boolean} */ recommended) {
  const header = element("th", `Step ${step}`);
  header.scope = "col";
  header.dataset.step = String(step);
  if (recommended) {
    header.classList.add("recommended");
    header.append(" ", element("span", "recommended", "tag"));
  }
  return header;
}

/**
 * @param {JobPage} page
 * @param {Artifact[]} samples this cell's: one prompt at one step
 * @param {number} step
 * @param {number | null} recommended
 */
function sampleCell(page, samples, step, recommended) {
  const cell = document.createElement("td");
  cell.dataset.step = String(step);
  if (step === recommended) cell.classList.add("recommended");
  for (const sample of samples) {
    const img = document.createElement("img");
    img.alt = `Sample at step ${step}: ${sample.prompt || ""}${sample.seed !== null ? ` (seed ${sample.seed})` : ""}`;
    img.width = 256;
    img.height = 256;
    showImage(img, sample.url, page.current);
    cell.append(img);
  }
  return cell;
}

function stepSlider(/** @type {JobPage} */ page, /** @type {number[]} */ steps) {
  const wrapper = element("div", "", "step-slider");
  const input = Object.assign(document.createElement("input"), { type: "range", min: "0", max: String(steps.length - 1), id: "step-slider" });
  input.setAttribute("aria-describedby", "step-slider-help");
  const label = element("label", "Training step");
  label.htmlFor = input.id;
  const output = element("output");
  output.htmlFor.add(input.id);
  const help = element("p", `Choose the step to compare, download and generate from: ${OVERFITS}`, "help");
  help.id = "step-slider-help";
  input.addEventListener("input", () => page.chooseStep(steps[Number(input.value)], { scroll: true }));
  wrapper.append(label, input, output, help);
  return { wrapper, input, output, steps };
}

// @ts-check
// The jobs list: the user's jobs, newest first, each with its latest sample; it polls while any runs.

import { api } from "../api.js";
import { showImage } from "../blobs.js";
import { cloneTemplate, focusHeading, mountView, setBadge, setProgress, sleep } from "../dom.js";
import { formatTime, phaseText } from "../format.js";
import { isFinished, latestSample } from "../job-data.js";
import { markNav } from "../router.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {import("../router.js").View} View */

const LIST_POLL_MS = 3000;

export async function showJobs(/** @type {View} */ current) {
  const slot = mountView("tpl-jobs");
  markNav("jobs");
  /** @type {Map<string, Record<string, any>>} */
  const rows = new Map();
  let first = true;
  for (;;) {
    const page = await api("/api/jobs?limit=50", { signal: current.signal });
    renderJobList(slot, rows, page.items, current);
    if (first) focusHeading(slot.root);
    first = false;
    if (page.items.every(isFinished)) return;
    await sleep(LIST_POLL_MS, current.signal);
  }
}

/** Update the rows in place (a focused row keeps its focus), newest first. */
function renderJobList(
  /** @type {Record<string, any>} */ slot, /** @type {Map<string, Record<string, any>>} */ rows, /** @type {Job[]} */ jobs,
  /** @type {View} */ current,
) {
  slot.empty.hidden = jobs.length > 0;
  const elements = jobs.map((job) => {
    let row = rows.get(job.id);
    if (!row) rows.set(job.id, (row = cloneTemplate("tpl-job-row")));
    renderJobRow(row, job, current);
    return row.element;
  });
  const order = [...slot.list.children];
  if (order.length !== elements.length || elements.some((row, index) => order[index] !== row)) {
    slot.list.replaceChildren(...elements);
  }
}

function renderJobRow(/** @type {Record<string, any>} */ row, /** @type {Job} */ job, /** @type {View} */ current) {
  const { instance_prompt: prompt } = job.settings;
  row.link.href = `#/jobs/${job.id}`;
  row.title.textContent = prompt;
  const details = [formatTime(job.created_at), `${job.photo_count} photos`, phaseText(job)];
  if (job.status === "running" && job.progress.total_steps) details.push(`step ${job.progress.step}/${job.progress.total_steps}`);
  row.sub.textContent = details.join(" · ");
  setProgress(row.progress, job);
  row.progress.setAttribute("aria-label", `Progress of ${prompt}`);
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

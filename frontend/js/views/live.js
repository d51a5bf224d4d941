// @ts-check
// The job page's live progress: phase, progress bar and text, a polite announcement when the state
// changes, and the job followed over its events stream (or by polling when the stream breaks).

import { api, readEvents } from "../api.js";
import { setProgress, sleep } from "../dom.js";
import { phaseText, progressText } from "../format.js";
import { isFinished } from "../job-data.js";

/** @typedef {import("../job-data.js").Job} Job */

const POLL_MS = 2000;

export function renderProgress(/** @type {import("./job.js").JobPage} */ page, /** @type {Job} */ job) {
  page.phase.textContent = phaseText(job);
  setProgress(page.progress, job);
  page.progressText.textContent = progressText(job);
  const text = `${job.status}: ${phaseText(job)}`;
  if (text === page.lastAnnounced) return;
  page.lastAnnounced = text;
  page.announce.textContent = `Job ${text}`;
}

/**
 * Follow a job over its events stream until it ends; poll every 2 s if the stream breaks.
 * @param {string} jobId
 * @param {AbortSignal} signal aborts when the page is left
 * @param {(job: Job) => void} onJob
 * @param {() => void} onGone the job was deleted meanwhile
 */
export async function followJob(jobId, signal, onJob, onGone) {
  /** @type {Job | null} */
  let last = null;
  const track = (/** @type {Job} */ job) => {
    last = job;
    onJob(job);
  };
  try {
    await readEvents(`/api/jobs/${jobId}/events`, signal, track);
  } catch (error) {
    if (signal.aborted || /** @type {{status?: number}} */ (error).status === 401) return;
  }
  while (!last || !isFinished(last)) {
    await sleep(POLL_MS, signal);
    try {
      track(await api(`/api/jobs/${jobId}`, { signal }));
    } catch (error) {
      const { status } = /** @type {{status?: number}} */ (error);
      if (status === 404) return onGone();
      if (signal.aborted || status === 401) return;
    }
  }
}

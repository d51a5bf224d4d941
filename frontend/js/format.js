// @ts-check
// Text for people: sizes, durations, times, numbers, and a job's phase and progress in words.

const PHASES = {
  preparing: "Preparing",
  generating_class_images: "Generating class images",
  inversion: "Textual inversion",
  training: "Training",
  sampling: "Making samples",
  exporting: "Exporting the checkpoint",
};

const ENDED = { succeeded: "Finished", failed: "Failed", cancelled: "Cancelled" };

export function formatBytes(/** @type {number} */ bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(/** @type {number} */ seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

export function formatTime(/** @type {string} */ iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** A value as a form shows it: empty for nothing, small numbers as 2e-6 (not 0.000002). */
export function formatValue(/** @type {any} */ value) {
  if (value === null || value === undefined) return "";
  return typeof value === "number" && value !== 0 && Math.abs(value) < 1e-3 ? value.toExponential() : String(value);
}

/** "1 photo", "3 photos". */
export function plural(/** @type {number} */ count, /** @type {string} */ noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** @param {import("./job-data.js").Job} job */
export function phaseText(job) {
  if (job.status === "queued") return "Waiting for a worker";
  if (job.status === "running") return job.cancel_requested ? "Stopping…" : PHASES[/** @type {keyof PHASES} */ (job.phase)] || "Running";
  return ENDED[/** @type {keyof ENDED} */ (job.status)] || job.status;
}

/** @param {import("./job-data.js").Job} job */
export function progressText(job) {
  const { total_steps: total, loss, eta_seconds: eta } = job.progress;
  const parts = total ? [stepsText(job)] : [];
  if (loss !== null) parts.push(`loss ${loss.toFixed(4)}`);
  if (job.status === "running" && eta !== null) parts.push(`about ${formatDuration(eta)} left`);
  return parts.join(" · ");
}

/**
 * "step 40 of 400". A pivotal job counts within its phase, which its settings tell apart: "Textual inversion:
 * step 120 of 2000", then "Dreambooth: step 40 of 500" (its steps run on across both).
 * @param {import("./job-data.js").Job} job
 */
export function stepsText(job) {
  const { step, total_steps: total } = job.progress;
  const inversion = job.settings.training_method === "pivotal" ? Number(job.settings.textual_inversion_steps) || 0 : 0;
  if (!inversion || inversion >= total) return `step ${step} of ${total}`;
  // note: samples and a resumed run's preparing happen between steps, so outside both phases the step tells
  if (job.phase === "inversion" || (job.phase !== "training" && step <= inversion)) {
    return `Textual inversion: step ${step} of ${inversion}`;
  }
  return `Dreambooth: step ${Math.max(0, step - inversion)} of ${total - inversion}`;
}

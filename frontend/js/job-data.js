// @ts-check
// What the page reads from a job as the API returns it: whether it has ended, its samples, the steps
// whose weights were kept, and the step the evaluation recommends. Plain data, no DOM.

/**
 * @typedef {object} Artifact
 * @property {number} id
 * @property {"sample" | "checkpoint" | string} kind
 * @property {number} step
 * @property {string | null} prompt
 * @property {number | null} seed
 * @property {string | null} format
 * @property {string | null} dtype
 * @property {number} size_bytes
 * @property {string} url
 */

/**
 * @typedef {object} Evaluation
 * @property {string} scorer
 * @property {number | null} recommended_step
 * @property {boolean} recommended_is_final
 * @property {string} reason
 * @property {Record<string, number>[]} steps
 */

/**
 * @typedef {object} Job
 * @property {string} id
 * @property {"queued" | "running" | "succeeded" | "failed" | "cancelled"} status
 * @property {string | null} phase
 * @property {boolean} cancel_requested
 * @property {number} photo_count
 * @property {{step: number, total_steps: number, loss: number | null, eta_seconds: number | null}} progress
 * @property {Record<string, any>} settings
 * @property {{code: string, message: string} | null} error
 * @property {Artifact[]} artifacts
 * @property {number[]} [kept_steps]
 * @property {[number, number][]} [loss_history]
 * @property {Evaluation | null} [evaluation]
 * @property {{gpu_memory_gib: number | null, changes: Record<string, any>} | null} [memory_plan]
 * @property {string} created_at
 * @property {string | null} finished_at
 */

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function isFinished(/** @type {Job} */ job) {
  return TERMINAL.has(job.status);
}

export function sampleArtifacts(/** @type {Job} */ job) {
  return job.artifacts.filter((artifact) => artifact.kind === "sample");
}

/** @returns {Artifact | null} */
export function latestSample(/** @type {Job} */ job) {
  return sampleArtifacts(job).reduce(
    (/** @type {Artifact | null} */ latest, sample) => (!latest || sample.step > latest.step ? sample : latest),
    null,
  );
}

/** Steps whose weights can be downloaded and generated from, in order. */
export function keptSteps(/** @type {Job} */ job) {
  if (job.kept_steps && job.kept_steps.length) return [...job.kept_steps].sort((a, b) => a - b);
  const checkpoints = job.artifacts.filter((artifact) => artifact.kind === "checkpoint");
  return [...new Set(checkpoints.map((artifact) => artifact.step))].sort((a, b) => a - b);
}

/** Every step the page can show: those with samples and those with kept weights. */
export function jobSteps(/** @type {Job} */ job) {
  const steps = [...sampleArtifacts(job).map((sample) => sample.step), ...keptSteps(job)];
  return [...new Set(steps)].sort((a, b) => a - b);
}

/** @returns {number | null} */
export function recommendedStep(/** @type {Job} */ job) {
  const step = job.evaluation ? job.evaluation.recommended_step : null;
  return step === undefined ? null : step;
}

/** The step a page starts at: the recommended one, else the last kept one, else the last sampled. */
export function defaultStep(/** @type {Job} */ job) {
  const recommended = recommendedStep(job);
  if (recommended !== null && jobSteps(job).includes(recommended)) return recommended;
  const steps = keptSteps(job).length ? keptSteps(job) : jobSteps(job);
  return steps.length ? steps[steps.length - 1] : null;
}

/** "Step 200 (recommended)", or "Step 300". */
export function stepText(/** @type {Job} */ job, /** @type {number} */ step) {
  return `Step ${step}${step === recommendedStep(job) ? " (recommended)" : ""}`;
}

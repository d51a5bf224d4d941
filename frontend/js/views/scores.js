// @ts-check
// The job page's evaluation: the recommended step with its reason, and the per-step scores as a table
// (the recommended row is marked in words, not only colour).

import { element } from "../dom.js";
import { jobSteps, recommendedStep } from "../job-data.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {import("./job.js").JobPage} JobPage */

const SCORE_COLUMNS = [
  ["subject_fidelity", "Subject fidelity"],
  ["prompt_fidelity", "Prompt fidelity"],
  ["memorisation", "Memorisation"],
  ["score", "Score"],
];

const SCORES_HELP =
  "Each 0 to 1. Subject fidelity: the samples look like your photos. Prompt fidelity: samples in new contexts follow " +
  "their prompts. Memorisation: the share of samples that copy a training photo (lower is better). Score balances the three.";

export function renderRecommendation(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  const step = recommendedStep(job);
  page.recommendation.hidden = step === null;
  if (step === null || !job.evaluation) return;
  const { reason, recommended_is_final: isFinal } = job.evaluation;
  page.recommendationTitle.textContent = `Recommended: step ${step}`;
  page.recommendationReason.textContent = reason || "";
  const last = Math.max(...jobSteps(job), job.progress.total_steps || 0);
  page.recommendationNote.textContent = isFinal
    ? "It is the last step of training."
    : `That is earlier than the last step (${last}), so it is preselected below for the samples, the downloads and new images: ` +
      "Dreambooth overfits fast, and later is not always better.";
  page.recommendationShow.textContent = `Choose step ${step}`;
}

export function renderScores(/** @type {JobPage} */ page, /** @type {Job} */ job) {
  const evaluation = job.evaluation;
  const key = evaluation ? JSON.stringify([evaluation.steps, evaluation.recommended_step]) : "";
  if (key === page.scoresKey) return;
  page.scoresKey = key;
  if (!evaluation || !evaluation.steps || !evaluation.steps.length) {
    page.scores.replaceChildren();
    return;
  }
  const table = element("table", "", "scores-table");
  table.append(element("caption", `Sample scores by training step, scored with ${evaluation.scorer}`, "visually-hidden"));
  const head = document.createElement("tr");
  head.append(...["Step", ...SCORE_COLUMNS.map(([, title]) => title)].map((title) => Object.assign(element("th", title), { scope: "col" })));
  const body = document.createElement("tbody");
  for (const row of evaluation.steps) {
    const tr = document.createElement("tr");
    const heading = Object.assign(element("th", `Step ${row.step}`), { scope: "row" });
    if (row.step === evaluation.recommended_step) {
      tr.className = "recommended";
      heading.append(" ", element("span", "recommended", "tag"));
    }
    tr.append(heading, ...SCORE_COLUMNS.map(([name]) => element("td", formatScore(name, row[name]))));
    body.append(tr);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  table.append(thead, body);
  const scroller = element("div", "", "table-scroller");
  scroller.append(table);
  page.scores.replaceChildren(element("h3", "Scores by step"), element("p", `From ${evaluation.scorer}. ${SCORES_HELP}`, "help"), scroller);
}

function formatScore(/** @type {string} */ name, /** @type {unknown} */ value) {
  if (typeof value !== "number") return "–";
  return name === "memorisation" ? `${Math.round(value * 100)} %` : value.toFixed(2);
}

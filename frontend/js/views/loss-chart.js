// @ts-check
// The job page's loss chart: the server's loss history, then the live losses reported since, as an
// SVG line; a dashed line marks the recommended step.

import { element } from "../dom.js";
import { isFinished, recommendedStep } from "../job-data.js";

/** @typedef {import("../job-data.js").Job} Job */
/** @typedef {{step: number, loss: number}} Point */

const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 320, height: 100, pad: 6 };

export function renderLoss(/** @type {import("./job.js").JobPage} */ page, /** @type {Job} */ job) {
  renderLossChart(page.chart, lossPoints(page, job), job);
}

/** The server's loss history, then the live losses reported since its last point. */
function lossPoints(/** @type {import("./job.js").JobPage} */ page, /** @type {Job} */ job) {
  const history = (job.loss_history || []).map(([step, loss]) => ({ step, loss }));
  const lastKept = history.length ? history[history.length - 1].step : 0;
  page.live = page.live.filter((/** @type {Point} */ point) => point.step > lastKept);
  const { step, loss } = job.progress;
  const lastLive = page.live[page.live.length - 1];
  if (loss !== null && step > lastKept && (!lastLive || step > lastLive.step)) page.live.push({ step, loss });
  return [...history, ...page.live];
}

function renderLossChart(/** @type {HTMLElement} */ container, /** @type {Point[]} */ points, /** @type {Job} */ job) {
  if (points.length < 2) {
    const text = isFinished(job) ? "This job recorded no loss curve." : "The loss curve appears here as training reports it.";
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
  const dashed = recommended !== null ? ` · dashed line: recommended step ${recommended}` : "";
  const caption = `loss ${low.toFixed(3)} – ${high.toFixed(3)} · latest ${latest.loss.toFixed(4)} at step ${latest.step}${dashed}`;
  container.replaceChildren(svg, element("p", caption, "muted chart-caption"));
}

function chartX(/** @type {number} */ step, /** @type {number} */ lastStep) {
  return CHART.pad + (step / lastStep) * (CHART.width - 2 * CHART.pad);
}

function chartPoints(/** @type {Point[]} */ points, /** @type {number} */ lastStep) {
  const [low, high] = lossRange(points);
  const { height, pad } = CHART;
  return points
    .map(({ step, loss }) => {
      const y = pad + ((high - loss) / (high - low || 1)) * (height - 2 * pad);
      return `${chartX(step, lastStep).toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

function lossRange(/** @type {Point[]} */ points) {
  const losses = points.map((point) => point.loss);
  return [Math.min(...losses), Math.max(...losses)];
}

function svgNode(/** @type {string} */ tag, /** @type {Record<string, string | number>} */ attributes, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text) node.textContent = text;
  return node;
}

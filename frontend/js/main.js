// @ts-check
// Dreambooth Studio in the browser: sign in, start a job from photos, follow it, pick a step, download
// the model and generate images from it. Plain DOM and fetch; no build step. This entry only wires
// the views to their addresses and starts the router.

import { addRoute, start } from "./router.js";
import { showJob } from "./views/job.js";
import { showJobs } from "./views/jobs.js";
import { showNewJob } from "./views/new-job.js";

addRoute(/^#\/jobs\/([\w-]+)$/, showJob);
addRoute(/^#\/new$/, showNewJob);
addRoute(/^/, showJobs); // anything else: the jobs list
start();

"""Validation steps: which steps are sampled, kept and scored, and where their outputs live.

Dreambooth overfits fast and the right number of steps differs per subject (shared/STUDY.md). At each
validation step the loop samples every validation prompt with the same seeds (steps compare like with
like), keeps the weights of that step (so any of them can be exported or generated from), and scores
the samples (subject fidelity, prompt fidelity, memorisation; see score.py) to recommend a step. This
module is the bookkeeping, torch-free so the worker's glue can use it; validate.py does the sampling.

On disk, under the run's output folder:
- `samples/<step>-<index>.png`: the samples;
- `steps/step-<step>/`: an intermediate step's trained weights, laid out like the pipeline folder
  (`unet/`, plus `text_encoder/` when it is trained) or, for LoRA runs, the LoRA files;
- `evaluation.json`: the scores so far, so a resumed run recommends from all of them.
The final step's weights are the exported pipeline itself.
"""

import json
import logging
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Sample, TrainConfig
from .files import atomic_file

log = logging.getLogger(__name__)

STEPS_DIR = "steps"
SAMPLES_DIR = "samples"
EVALUATION_FILE = "evaluation.json"
DEFAULT_POINTS = 5  # validation steps across a run when validation_steps is not set

_STEP_DIR = re.compile(r"step-(\d+)")
_SAMPLE = re.compile(r"(\d+)-\d+\.png")


@dataclass(frozen=True)
class Validation:
    """What one validation step produced, as the loop reports it."""

    step: int
    samples: tuple[Sample, ...]
    weights_dir: Path | None  # this step's kept weights; None at the final step (the pipeline holds them)
    weights_format: str  # "diffusers" (a partial pipeline folder) | "lora"
    kept_steps: tuple[int, ...]  # intermediate steps whose weights are still kept, after pruning
    evaluation: dict | None  # scores so far and the recommended step (the API's Evaluation); None unscored


def validation_every(config: TrainConfig) -> int:
    """Steps between validations: validation_steps, else about DEFAULT_POINTS points across the run."""
    return config.validation_steps or max(1, math.ceil(config.total_steps / DEFAULT_POINTS))


def is_validation_step(config: TrainConfig, step: int) -> bool:
    """Every validation_every steps, and always the last step."""
    return step == config.total_steps or (step > 0 and step % validation_every(config) == 0)


def validation_prompts(config: TrainConfig) -> list[tuple[str, bool]]:
    """(prompt, is a new-context prompt) pairs: the configured prompts, else the instance prompt and new contexts."""
    prompts = list(config.validation_prompts)
    if not prompts:
        from .score import default_validation_prompts

        prompts = default_validation_prompts(config.instance_prompt)
    return [(prompt, prompt.strip() != config.instance_prompt.strip()) for prompt in prompts]


def sample_seeds(config: TrainConfig, count: int) -> list[int]:
    """The seed of each sample: the same at every step, so a prompt's column shows only what training changed."""
    first = config.seed if config.seed is not None else 0
    return [first + index for index in range(count)]


def step_dir(output_dir: Path, step: int) -> Path:
    return output_dir / STEPS_DIR / f"step-{step}"


def kept_step_dirs(output_dir: Path) -> dict[int, Path]:
    """The complete kept-weights folders by step (temporary folders of a crashed save are not listed)."""
    root = output_dir / STEPS_DIR
    found = {int(m.group(1)): p for p in root.glob("step-*") if (m := _STEP_DIR.fullmatch(p.name))}
    return dict(sorted(found.items()))


def forget_after(output_dir: Path, step: int) -> None:
    """Drop every validation output of steps after `step` (a resumed run redoes them), and crashed saves."""
    for kept, path in kept_step_dirs(output_dir).items():
        if kept > step:
            shutil.rmtree(path, ignore_errors=True)
    for stale in (output_dir / STEPS_DIR).glob(".*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for sample in (output_dir / SAMPLES_DIR).glob("*"):
        m = _SAMPLE.fullmatch(sample.name)
        if m is None or int(m.group(1)) > step:
            sample.unlink(missing_ok=True)
    if (output_dir / EVALUATION_FILE).is_file():
        save_scores(output_dir, [s for s in load_scores(output_dir) if s["step"] <= step])


def load_scores(output_dir: Path) -> list[dict]:
    path = output_dir / EVALUATION_FILE
    return json.loads(path.read_text())["steps"] if path.is_file() else []


def save_scores(output_dir: Path, scores: list[dict]) -> None:
    with atomic_file(output_dir / EVALUATION_FILE) as tmp:
        tmp.write_text(json.dumps({"steps": scores}, indent=1))


def prune(kept: dict[int, Path], limit: int | None, protected: set[int]) -> dict[int, Path]:
    """Delete the oldest kept weights beyond `limit` (which counts the final step too), never a protected step."""
    if limit is None:
        return kept
    kept = dict(kept)
    for step in sorted(kept):
        if len(kept) + 1 <= limit:
            break
        if step not in protected:
            shutil.rmtree(kept.pop(step), ignore_errors=True)
            log.info("pruned the kept weights of step %d (checkpoints_total_limit %d)", step, limit)
    return kept


class Evaluator:
    """Scores each validation step's samples against the instance photos and keeps the recommendation.

    Scoring is a help, not the job: if the scoring model cannot be loaded the run goes on unscored.
    """

    def __init__(self, config: TrainConfig, photos: list, device, start_step: int, load_scorer: Callable):
        self.config = config
        self.scores = [s for s in load_scores(config.output_dir) if s["step"] <= start_step]
        self._photos = photos
        self._device = device
        self._load_scorer = load_scorer
        self._scorer = None
        self._reference = None
        self._failed = config.scorer_model is None

    def score(self, step: int, samples: list[Sample], contexts: list[bool]) -> None:
        if self._failed:
            return
        from PIL import Image

        from .score import ScoredSample

        try:
            if self._scorer is None:
                self._scorer = self._load_scorer(self.config.scorer_model, self._device)
                self._reference = self._scorer.reference(self._photos)
            images = []
            for sample, context in zip(samples, contexts):
                with Image.open(sample.path) as image:
                    images.append(ScoredSample(image=image.convert("RGB"), prompt=sample.prompt, context=context))
            scored = self._scorer.score(self._reference, step, images)
        except Exception:
            log.exception("scoring with %s failed; the run goes on unscored", self.config.scorer_model)
            self._failed = True
            return
        self.scores = [s for s in self.scores if s["step"] != step] + [scored.as_dict()]
        save_scores(self.config.output_dir, self.scores)

    def evaluation(self, eligible: set[int]) -> dict | None:
        """The API's evaluation: every score so far, and the best among the steps that can still be downloaded."""
        if not self.scores:
            return None
        from .score import StepScores, recommend

        candidates = [StepScores(**s) for s in self.scores if s["step"] in eligible]
        recommendation = recommend(candidates)
        return {
            "scorer": self.config.scorer_model,
            "steps": sorted(self.scores, key=lambda s: s["step"]),
            "recommended_step": recommendation.step if recommendation else None,
            "reason": recommendation.reason if recommendation else None,
            "recommended_is_final": recommendation is not None and recommendation.step == self.config.total_steps,
        }

"""Score each validation step's samples and recommend the step with the best balance.

Dreambooth overfits fast (shared/STUDY.md): too few steps and the subject is not learned, too many and
the model reproduces the training photos whatever the prompt. Three measures, after the DreamBooth
paper's DINO / CLIP-I / CLIP-T scores, follow that curve:
- subject fidelity: image-image cosine of every sample to every instance photo, negatives as 0, averaged;
- prompt fidelity: image-text cosine of each new-context sample to its prompt, as CLIPScore (clip_score);
- memorisation: the share of samples whose closest instance photo is a near-duplicate (cosine >= 0.95).
The score is their balance (see balance); `recommend` picks its best step and says why in one sentence.

Scoring models: a transformers CLIPModel (a Hub id or folder; model_type "clip") scores everything; any
other model (a DINO such as "facebook/dinov2-small") is loaded with AutoModel and embeds images for the
image-image measures by its CLS token, and `text_model`, a CLIP, scores the prompts, as the paper did.
"builtin:tiny-clip" is a tiny random CLIP generated under models_dir on first use, for tests: its
image-image similarities are usable, its text-image ones are noise.
"""

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPModel, CLIPTokenizer

from .components import BUILTIN_PREFIX
from .tiny import build_tiny_clip

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
BUILTIN_CLIP = "builtin:tiny-clip"
EMBED_BATCH = 16  # images or prompts per forward pass
# note: LAION-style deduplication treats CLIP image cosines this high as the same picture
MEMORISED_ABOVE = 0.95
# note: CLIPScore's weight (Hessel et al., 2021): real image-prompt cosines of ~0.2-0.35 map to ~0.5-0.9
CLIP_SCORE_WEIGHT = 2.5
# note: changes smaller than this along the curve read as flat in a recommendation's reason
FLAT = 0.01

_PHOTO_OF = re.compile(r"(?:a )?photo of (?P<subject>.+)", re.IGNORECASE)


@dataclass(frozen=True)
class ScoredSample:
    """One validation sample to score."""

    image: Image.Image
    prompt: str
    context: bool  # True: a new-context prompt (counts for prompt fidelity); False: the bare instance prompt


@dataclass(frozen=True)
class StepScores:
    """The scores of one validation step's samples, each in [0, 1]."""

    step: int
    subject_fidelity: float  # mean image-image similarity of the samples to the instance photos
    prompt_fidelity: float  # mean CLIPScore of the context samples against their prompts
    memorisation: float  # share of samples that are near-duplicates of an instance photo, whatever the prompt
    score: float  # balance(subject_fidelity, prompt_fidelity, memorisation): what recommend maximises

    def as_dict(self) -> dict:
        """JSON-ready, rounded to 4 decimals; StepScores(**d) reads it back."""
        return {
            "step": self.step,
            "subject_fidelity": round(self.subject_fidelity, 4),
            "prompt_fidelity": round(self.prompt_fidelity, 4),
            "memorisation": round(self.memorisation, 4),
            "score": round(self.score, 4),
        }


@dataclass(frozen=True)
class Recommendation:
    step: int
    reason: str  # one sentence, in terms of the curve


@dataclass(frozen=True)
class Reference:
    """The instance photos embedded once per job: L2-normalised rows, one per photo, on the CPU."""

    scorer: str  # the Scorer.name that embedded them
    embeddings: torch.Tensor


def clip_score(cosine: torch.Tensor) -> torch.Tensor:
    """CLIPScore's rescaling of image-text cosines into [0, 1]: 2.5 * cosine, clipped."""
    return (CLIP_SCORE_WEIGHT * cosine).clamp(0.0, 1.0)


def balance(subject_fidelity: float, prompt_fidelity: float, memorisation: float) -> float:
    """The harmonic mean of the two fidelities, scaled by the share of samples that are not copies.

    The harmonic mean is high only when both are: a step that renders the subject in no new context
    (or new contexts without the subject) scores low, and copied photos count for nothing.
    """
    total = subject_fidelity + prompt_fidelity
    harmonic = 2 * subject_fidelity * prompt_fidelity / total if total > 0 else 0.0
    return harmonic * (1.0 - memorisation)


def resolve_scorer_model(model: str, models_dir: Path) -> str:
    """Return a from_pretrained location, generating builtin:tiny-clip on first use."""
    if not model.startswith(BUILTIN_PREFIX):
        return model
    if model != BUILTIN_CLIP:
        raise ValueError(f"unknown builtin scoring model {model!r}; the only one is {BUILTIN_CLIP!r}")
    folder = models_dir / "builtin-tiny-clip"
    if not folder.exists():
        try:
            build_tiny_clip(folder)
        except FileExistsError:
            log.info("builtin tiny CLIP was generated by another process meanwhile")
    return str(folder)


class Scorer:
    """Embeds instance photos and samples with one scoring model (see the module docstring)."""

    def __init__(
        self,
        model: str,
        models_dir: Path,
        device: str | torch.device = "cpu",
        *,
        text_model: str = DEFAULT_CLIP,
        memorised_above: float = MEMORISED_ABOVE,
    ):
        self.name = model
        self.memorised_above = memorised_above
        self.device = torch.device(device)
        # note: scoring needs no fp32 precision, and fp16 halves a large CLIP's memory beside training
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        location = resolve_scorer_model(model, models_dir)
        clip_location = location
        if AutoConfig.from_pretrained(location).model_type == "clip":
            self._image_model = None  # CLIP's own image embeddings serve the image-image measures too
        else:
            self._image_model = self._prepare(AutoModel.from_pretrained(location))
            self._image_processor = AutoImageProcessor.from_pretrained(location)
            clip_location = resolve_scorer_model(text_model, models_dir)
        self._clip = self._prepare(CLIPModel.from_pretrained(clip_location))
        self._clip_processor = AutoImageProcessor.from_pretrained(clip_location)
        self._tokenizer = CLIPTokenizer.from_pretrained(clip_location)
        log.info("scoring with %s on %s", model, self.device)

    def reference(self, photos: list[Image.Image]) -> Reference:
        """Embed the instance photos, once per job."""
        if not photos:
            raise ValueError("no instance photos")
        return Reference(self.name, self._subject_embeddings(photos))

    def score(self, reference: Reference, step: int, samples: list[ScoredSample]) -> StepScores:
        """Score one validation step's samples against the instance photos."""
        if not samples:
            raise ValueError(f"no samples to score at step {step}")
        if reference.scorer != self.name:
            raise ValueError(f"reference embedded by {reference.scorer!r}, not {self.name!r}")
        images = [sample.image for sample in samples]
        clip_images = self._clip_image_embeddings(images)
        subject = clip_images if self._image_model is None else self._subject_embeddings(images)
        cosines = subject @ reference.embeddings.T  # samples x photos
        # note: the mean over photos, as the paper's DINO score: copying one photo earns no more than a
        # faithful new picture of the subject would (memorisation catches the copy)
        subject_fidelity = cosines.clamp(0.0, 1.0).mean().item()
        memorisation = (cosines.max(dim=1).values >= self.memorised_above).float().mean().item()
        # note: prompts are compared as written, identifier included: a rare token like "sks" moves CLIP
        # little, and the subject's class words weigh alike at every step, so the context makes the change.
        # Without context samples the bare prompts are all there is to measure.
        scored = [i for i, sample in enumerate(samples) if sample.context] or list(range(len(samples)))
        texts = self._text_embeddings([samples[i].prompt for i in scored])
        prompt_fidelity = clip_score((clip_images[scored] * texts).sum(dim=1)).mean().item()
        return StepScores(
            step=step,
            subject_fidelity=subject_fidelity,
            prompt_fidelity=prompt_fidelity,
            memorisation=memorisation,
            score=balance(subject_fidelity, prompt_fidelity, memorisation),
        )

    def _prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, dtype=self.dtype).requires_grad_(False).eval()

    def _pixels(self, processor, images: list[Image.Image]) -> torch.Tensor:
        rgb = [image.convert("RGB") for image in images]
        pixels = processor(images=rgb, return_tensors="pt").pixel_values
        return pixels.to(self.device, self.dtype)

    @torch.inference_mode()
    def _subject_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        """Image embeddings for the image-image measures: the DINO CLS token, or CLIP's image embedding."""
        if self._image_model is None:
            return self._clip_image_embeddings(images)
        chunks = []
        for start in range(0, len(images), EMBED_BATCH):
            pixels = self._pixels(self._image_processor, images[start : start + EMBED_BATCH])
            chunks.append(self._image_model(pixel_values=pixels).last_hidden_state[:, 0])
        return _normalised(chunks)

    @torch.inference_mode()
    def _clip_image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        # note: the towers and projections directly, whose outputs are the same across transformers 4 and 5
        chunks = []
        for start in range(0, len(images), EMBED_BATCH):
            pixels = self._pixels(self._clip_processor, images[start : start + EMBED_BATCH])
            pooled = self._clip.vision_model(pixel_values=pixels).pooler_output
            chunks.append(self._clip.visual_projection(pooled))
        return _normalised(chunks)

    @torch.inference_mode()
    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """One row per prompt; each distinct prompt is embedded once."""
        unique = list(dict.fromkeys(prompts))
        chunks = []
        for start in range(0, len(unique), EMBED_BATCH):
            tokens = self._tokenizer(
                unique[start : start + EMBED_BATCH], padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            pooled = self._clip.text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            chunks.append(self._clip.text_projection(pooled.pooler_output))
        embeddings = _normalised(chunks)
        return embeddings[[unique.index(prompt) for prompt in prompts]]


def _normalised(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenated embeddings, L2-normalised in fp32 on the CPU, so cosines are plain dot products."""
    return F.normalize(torch.cat(chunks).float().cpu(), dim=-1)


def recommend(scores: Sequence[StepScores]) -> Recommendation | None:
    """The step with the best score (None for no scores), with one sentence on why."""
    if not scores:
        return None
    curve = sorted(scores, key=lambda s: s.step)
    # note: scores equal as reported (4 decimals) tie, and the earlier step wins: fewer steps overfit less
    best = max(curve, key=lambda s: (round(s.score, 4), -s.step))
    return Recommendation(best.step, _reason(curve, best))


def _trend(before: float, after: float) -> str:
    if after > before + FLAT:
        return "rises"
    if after < before - FLAT:
        return "falls"
    return "stays flat"


def _reason(curve: list[StepScores], best: StepScores) -> str:
    """Why `best` wins, read from how the curve moves after it (or up to it, when it is the last step)."""
    last = curve[-1]
    if len(curve) == 1:
        return f"step {best.step} is the only step scored"
    if best is last:
        if _trend(curve[-2].subject_fidelity, last.subject_fidelity) == "rises":
            return f"the last step ({last.step}) is best and subject fidelity is still rising: more steps might help"
        return f"the last step ({last.step}) is best: more steps might help"
    subject = _trend(best.subject_fidelity, last.subject_fidelity)
    prompt = _trend(best.prompt_fidelity, last.prompt_fidelity)
    after = f"after step {best.step}"
    if _trend(best.memorisation, last.memorisation) == "rises":
        return f"{after} memorisation rises to {last.memorisation:.0%} of samples: the model is copying the photos"
    if prompt == "falls" and subject == "falls":
        return f"{after} subject and prompt fidelity both fall: overfitting degrades the samples"
    if prompt == "falls":
        return f"{after} prompt fidelity falls while subject fidelity {subject}: overfitting"
    if subject == "falls":
        return f"{after} subject fidelity falls: overfitting degrades the samples"
    return f"step {best.step} balances subject and prompt fidelity best; later steps gain nothing"


def default_validation_prompts(instance_prompt: str) -> list[str]:
    """The bare instance prompt, then three new contexts the subject should survive: a place, a style, an accessory."""
    prompt = instance_prompt.strip()
    if not prompt:
        raise ValueError("instance_prompt is empty")
    base = prompt.rstrip(" .,;")
    photo = _PHOTO_OF.fullmatch(base)
    style = f"a watercolor painting of {photo['subject']}" if photo else f"{base}, as a watercolor painting"
    return [prompt, f"{base} on a beach", style, f"{base} wearing a red hat"]

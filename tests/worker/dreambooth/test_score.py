"""Scoring validation samples and recommending a step, with the builtin tiny CLIP (random weights).

The tiny CLIP's image embeddings tell identical, perturbed and unrelated pictures apart; its text-image
similarities are noise, so prompt fidelity is tested through its mechanics and its mapping only.
"""

import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import BitImageProcessor, CLIPModel, Dinov2Config, Dinov2Model

from worker.dreambooth.data import load_photo
from worker.dreambooth.score import (
    Reference,
    ScoredSample,
    Scorer,
    StepScores,
    balance,
    clip_score,
    default_validation_prompts,
    recommend,
    resolve_scorer_model,
)
from worker.dreambooth.tiny import build_tiny_clip

PROMPT = "a photo of sks toy"
CONTEXT = "a photo of sks toy on a beach"


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    return Scorer("builtin:tiny-clip", tmp_path_factory.mktemp("scorer-models"))


@pytest.fixture(scope="module")
def photo_images(photos: tuple[Path, ...]) -> list[Image.Image]:
    return [load_photo(path, 64) for path in photos]


@pytest.fixture(scope="module")
def reference(scorer: Scorer, photo_images: list[Image.Image]) -> Reference:
    return scorer.reference(photo_images)


def perturbed(image: Image.Image, seed: int) -> Image.Image:
    """The photo with pixel noise and a slight turn: the subject as a faithful sample might show it."""
    noise = np.random.default_rng(seed).normal(0, 12, (image.height, image.width, 3))
    pixels = (np.asarray(image, dtype=float) + noise).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels).rotate(5, fillcolor="white")


def unrelated_images() -> list[Image.Image]:
    """Pictures of nothing in the photos: noise, and other shapes in other colours."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    for shape, colour, background in (("rectangle", "black", "purple"), ("ellipse", "yellow", "darkblue")):
        image = Image.new("RGB", (64, 64), background)
        getattr(ImageDraw.Draw(image), shape)((12, 12, 52, 52), fill=colour)
        images.append(image)
    return images


def as_samples(images: list[Image.Image], prompt: str = PROMPT, context: bool = False) -> list[ScoredSample]:
    return [ScoredSample(image=image, prompt=prompt, context=context) for image in images]


def test_samples_identical_to_the_photos_are_memorised_at_top_subject_fidelity(
    scorer: Scorer, reference: Reference, photo_images: list[Image.Image]
):
    scores = scorer.score(reference, 400, as_samples(photo_images))
    assert scores.step == 400 and scores.memorisation == 1.0 and scores.score == 0.0
    # note: subject fidelity averages over the photos, so copies score the photos' own mutual similarity
    mutual = (reference.embeddings @ reference.embeddings.T).clamp(0, 1).mean().item()
    assert scores.subject_fidelity == pytest.approx(mutual, abs=1e-4)
    one = scorer.score(scorer.reference(photo_images[:1]), 400, as_samples(photo_images[:1]))
    assert one.subject_fidelity == pytest.approx(1.0, abs=1e-4) and one.memorisation == 1.0


def test_perturbed_photos_score_higher_subject_fidelity_than_unrelated_images(
    scorer: Scorer, reference: Reference, photo_images: list[Image.Image]
):
    identical = scorer.score(reference, 1, as_samples(photo_images))
    faithful = scorer.score(reference, 1, as_samples([perturbed(p, i) for i, p in enumerate(photo_images)]))
    unrelated = scorer.score(reference, 1, as_samples(unrelated_images()))
    assert faithful.subject_fidelity == pytest.approx(identical.subject_fidelity, abs=0.02)
    assert faithful.subject_fidelity > unrelated.subject_fidelity + 0.1
    assert unrelated.memorisation == 0.0
    for scores in (identical, faithful, unrelated):
        assert all(0.0 <= value <= 1.0 for value in scores.as_dict().values() if isinstance(value, float))


def test_prompt_fidelity_counts_context_samples_only(
    scorer: Scorer, reference: Reference, photo_images: list[Image.Image]
):
    bare, context = ScoredSample(photo_images[0], PROMPT, False), ScoredSample(photo_images[1], CONTEXT, True)
    both = scorer.score(reference, 1, [bare, context])
    assert both.prompt_fidelity == pytest.approx(scorer.score(reference, 1, [context]).prompt_fidelity, abs=1e-6)
    assert both.memorisation == 1.0  # note: copies count whatever their prompt
    # note: with no context sample, the bare prompts are all there is to measure
    bare_only = scorer.score(reference, 1, [bare]).prompt_fidelity
    assert bare_only == pytest.approx(scorer.score(reference, 1, [replace(bare, context=True)]).prompt_fidelity)
    assert both.score == balance(both.subject_fidelity, both.prompt_fidelity, both.memorisation)
    with pytest.raises(ValueError):
        scorer.score(reference, 1, [])


def test_clip_score_and_balance_map_into_unit_range():
    cosines = torch.tensor([-0.1, 0.0, 0.2, 0.3, 0.5])
    assert clip_score(cosines).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.0])
    assert balance(0.8, 0.8, 0.0) == pytest.approx(0.8)
    assert balance(0.9, 0.1, 0.0) == pytest.approx(0.18)  # note: one fidelity alone does not make a good step
    assert balance(0.8, 0.8, 0.5) == pytest.approx(0.4)
    assert balance(0.0, 0.0, 0.0) == 0.0 and balance(0.8, 0.8, 1.0) == 0.0


def test_step_scores_as_dict_is_rounded_json_that_reads_back():
    scores = StepScores(step=800, subject_fidelity=0.712345, prompt_fidelity=0.5, memorisation=0.25, score=1 / 3)
    data = json.loads(json.dumps(scores.as_dict()))
    assert data == {
        "step": 800,
        "subject_fidelity": 0.7123,
        "prompt_fidelity": 0.5,
        "memorisation": 0.25,
        "score": 0.3333,
    }
    assert StepScores(**data).step == 800


def curve_point(step: int, subject: float, prompt: float, memorisation: float = 0.0) -> StepScores:
    return StepScores(step, subject, prompt, memorisation, balance(subject, prompt, memorisation))


def test_recommend_names_overfitting_when_prompt_fidelity_falls_late():
    curve = [
        curve_point(200, 0.55, 0.80),
        curve_point(400, 0.70, 0.78),
        curve_point(600, 0.78, 0.76),
        curve_point(800, 0.79, 0.62),
        curve_point(1000, 0.79, 0.50),
    ]
    recommendation = recommend(curve[::-1])
    assert recommendation.step == 600
    assert (
        recommendation.reason == "after step 600 prompt fidelity falls while subject fidelity stays flat: overfitting"
    )


def test_recommend_the_last_step_when_subject_fidelity_still_rises():
    curve = [curve_point(100, 0.4, 0.8), curve_point(200, 0.5, 0.8), curve_point(300, 0.6, 0.8)]
    recommendation = recommend(curve)
    assert recommendation.step == 300
    assert "still rising" in recommendation.reason and "more steps might help" in recommendation.reason


def test_recommend_names_copying_when_memorisation_rises():
    curve = [curve_point(100, 0.6, 0.8), curve_point(200, 0.75, 0.78), curve_point(300, 0.9, 0.75, 0.5)]
    recommendation = recommend(curve)
    assert recommendation.step == 200
    assert "memorisation rises to 50%" in recommendation.reason and "copying" in recommendation.reason


def test_recommend_ties_pick_the_earlier_step():
    assert recommend([]) is None
    tied = [curve_point(800, 0.7, 0.7), curve_point(400, 0.7, 0.7)]
    assert recommend(tied).step == 400
    # note: equal as reported (4 decimals) is a tie too
    nearly = [StepScores(800, 0.7, 0.7, 0.0, 0.70004), StepScores(400, 0.7, 0.7, 0.0, 0.70001)]
    assert recommend(nearly).step == 400
    only = recommend([curve_point(400, 0.7, 0.7)])
    assert (only.step, only.reason) == (400, "step 400 is the only step scored")


def test_default_validation_prompts_add_a_place_a_style_and_an_accessory():
    assert default_validation_prompts("a photo of sks dog") == [
        "a photo of sks dog",
        "a photo of sks dog on a beach",
        "a watercolor painting of sks dog",
        "a photo of sks dog wearing a red hat",
    ]
    assert default_validation_prompts(" A photo of sks toy. ")[1:3] == [
        "A photo of sks toy on a beach",
        "a watercolor painting of sks toy",
    ]
    assert default_validation_prompts("sks cat sitting on a sofa") == [
        "sks cat sitting on a sofa",
        "sks cat sitting on a sofa on a beach",
        "sks cat sitting on a sofa, as a watercolor painting",
        "sks cat sitting on a sofa wearing a red hat",
    ]
    with pytest.raises(ValueError):
        default_validation_prompts("  ")


def test_tiny_clip_is_deterministic_and_never_overwrites(tmp_path: Path):
    first, second = build_tiny_clip(tmp_path / "a"), build_tiny_clip(tmp_path / "b")
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = CLIPModel.from_pretrained(first)
    assert model.config.vision_config.image_size == 32 and sum(p.numel() for p in model.parameters()) < 200_000
    with pytest.raises(FileExistsError):
        build_tiny_clip(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # note: no temporary folder left behind
    with pytest.raises(ValueError):
        resolve_scorer_model("builtin:huge-clip", tmp_path)


def build_in_child(models_dir: Path, barrier: Path, name: str) -> None:
    """A process's part in the race: wait for the other, then ask for the builtin tiny CLIP."""
    (barrier / name).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    resolve_scorer_model("builtin:tiny-clip", models_dir)


def test_two_processes_building_the_tiny_clip_end_with_one_complete_folder(tmp_path: Path):
    barrier, models_dir = tmp_path / "barrier", tmp_path / "models"
    barrier.mkdir()
    # note: forked, so the children start with torch and transformers already imported
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=build_in_child, args=(models_dir, barrier, name)) for name in ("a", "b")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert [p.name for p in models_dir.iterdir()] == ["builtin-tiny-clip"]
    assert CLIPModel.from_pretrained(models_dir / "builtin-tiny-clip").config.projection_dim == 32


def test_a_dino_model_embeds_images_and_a_clip_scores_prompts(
    scorer: Scorer, reference: Reference, photo_images: list[Image.Image], tmp_path: Path
):
    dino = tmp_path / "tiny-dinov2"
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(dino)
    size = {"height": 32, "width": 32}
    BitImageProcessor(size={"shortest_edge": 32}, crop_size=size).save_pretrained(dino)
    dino_scorer = Scorer(str(dino), tmp_path, text_model="builtin:tiny-clip")
    dino_reference = dino_scorer.reference(photo_images)
    assert dino_scorer.name == str(dino) and dino_reference.embeddings.shape == (4, 32)
    samples = [ScoredSample(image, CONTEXT, True) for image in photo_images]
    scores = dino_scorer.score(dino_reference, 1, samples)
    assert scores.memorisation == 1.0
    assert scores.prompt_fidelity == pytest.approx(scorer.score(reference, 1, samples).prompt_fidelity, abs=1e-6)
    with pytest.raises(ValueError):
        dino_scorer.score(reference, 1, samples)  # note: a reference embedded by another model

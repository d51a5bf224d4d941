"""Pivotal tuning on the tiny models, on the CPU: phase one changes exactly the new tokens' rows, phase two the
UNet; a run resumed inside either phase or between them ends with the same weights; the single file and the
embedding file load back in diffusers and give the trained text embedding; generations from both phases."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from formats.single_file import TOKEN_EMBEDDING
from tests.worker.dreambooth.helpers import changed, weights
from worker.dreambooth.config import TrainConfig
from worker.dreambooth.render import PipelineCache, RenderRequest, TrainedModel, render
from worker.dreambooth.state import saved_states
from worker.dreambooth.train import train

PROMPT = "a photo of <rufus> toy"
TOKENS = ["<rufus>", "<rufus>_1"]
PIVOTAL = dict(
    training_method="pivotal", placeholder_token="<rufus>", num_vectors=2, textual_inversion_steps=2,
    max_train_steps=2, instance_prompt=PROMPT, validation_steps=1, validation_prompts=(PROMPT,),
    validation_inference_steps=2, textual_inversion_lr=5e-2,
)  # fmt: skip


@pytest.fixture(scope="module")
def pivotal_run(make_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory):
    config = make_config(tmp_path_factory.mktemp("pivotal"), **PIVOTAL)
    phases = []
    return config, train(config, lambda p: phases.append((p.phase, p.step, p.total_steps))), phases


def text_embedding(pipeline, prompt: str = PROMPT) -> torch.Tensor:
    prompt = pipeline.maybe_convert_prompt(prompt, pipeline.tokenizer)
    ids = pipeline.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipeline.text_encoder(ids)[0]


def test_the_two_phases_report_their_own_steps(pivotal_run):
    _, result, phases = pivotal_run
    trained = [(phase, step) for phase, step, total in phases if phase in ("inversion", "training")]
    assert trained == [("inversion", 1), ("inversion", 2), ("training", 3), ("training", 4)]
    assert {total for phase, _, total in phases if phase in ("inversion", "training")} == {4}
    assert sorted({sample.step for sample in result.samples}) == [1, 2, 3, 4]
    # note: phase one keeps the embedding alone; phase two the UNet with it
    assert {step: sorted(p.name for p in path.iterdir()) for step, path in result.kept_steps.items()} == {
        1: ["embedding.safetensors"], 2: ["embedding.safetensors"], 3: ["embedding.safetensors", "unet"],
    }  # fmt: skip


def test_phase_one_changes_exactly_the_new_rows_and_phase_two_the_unet(pivotal_run, tiny_model: Path):
    _, result, _ = pivotal_run
    base = StableDiffusionPipeline.from_pretrained(tiny_model)
    trained = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    ids = trained.tokenizer.convert_tokens_to_ids(TOKENS)
    assert ids == [len(base.tokenizer), len(base.tokenizer) + 1]
    before, after = base.text_encoder.state_dict(), trained.text_encoder.state_dict()
    key = next(k for k in after if k.endswith("token_embedding.weight"))
    assert after[key].shape[0] == before[key].shape[0] + 2
    assert torch.equal(after[key][: before[key].shape[0]], before[key])  # every old row, bit for bit
    start = before[key][base.tokenizer.convert_tokens_to_ids("toy</w>")]
    assert all(not torch.equal(after[key][row], start) for row in ids)  # both new rows moved from "toy"
    assert all(torch.equal(value, after[name]) for name, value in before.items() if name != key)
    assert changed(weights(result.pipeline_dir / "unet"), weights(tiny_model / "unet"))
    embedding = load_file(result.kept_steps[2] / "embedding.safetensors")["emb_params"]
    assert torch.equal(embedding, after[key][ids])  # phase two leaves the learned rows alone


def test_a_run_resumed_inside_either_phase_or_between_them_ends_alike(
    make_config: Callable[..., TrainConfig], tmp_path: Path, pivotal_run
):
    _, uninterrupted, _ = pivotal_run
    for stop_at in (1, 2, 3):
        config = make_config(tmp_path / f"stop-{stop_at}", checkpointing_steps=1, **PIVOTAL)
        stopped = train(config, *stopping_after(stop_at))
        assert stopped.stopped and stopped.final_step == stop_at
        if stop_at <= 2:
            # note: a phase-one state holds the embeddings only, never the frozen UNet
            assert set(load_state_names(saved_states(config.output_dir)[-1])) == {"text_encoder"}
        resumed = train(TrainConfig(**{**config.__dict__, "resume_from_checkpoint": "latest"}))
        assert resumed.resumed_from_step == stop_at and resumed.final_step == 4
        for part in ("unet", "text_encoder"):
            assert not changed(weights(resumed.pipeline_dir / part), weights(uninterrupted.pipeline_dir / part))


def stopping_after(step: int) -> tuple[Callable, Callable[[], bool]]:
    """(on_progress, should_stop) that stop a run once it has trained `step` steps."""
    done = [0]

    def on_progress(progress) -> None:
        if progress.phase in ("inversion", "training"):
            done[0] = progress.step

    return on_progress, lambda: done[0] >= step


def load_state_names(state: Path) -> list[str]:
    return [file.stem for file in state.glob("*.safetensors")]


def test_the_single_file_and_the_embedding_load_back_with_the_trained_text_embedding(
    pivotal_run, tiny_model: Path, tmp_path: Path
):
    _, result, _ = pivotal_run
    trained = StableDiffusionPipeline.from_pretrained(result.pipeline_dir)
    expected = text_embedding(trained)
    path = result.checkpoints["embedding"]
    with safe_open(path, "pt") as file:
        assert file.metadata()["placeholder_token"] == "<rufus>" and list(file.keys()) == ["emb_params"]
    # note: the single file keeps the released vocabulary (AUTOMATIC1111 and ComfyUI refuse a larger one), so it
    # loads on the base model's configs, and the new tokens come from the embedding, as those tools load them
    rows = load_file(result.checkpoints["fp32"])["cond_stage_model.transformer.text_model." + TOKEN_EMBEDDING].shape[0]
    assert rows == len(trained.tokenizer) - 2
    for source in (str(tiny_model), None):
        pipeline = (
            StableDiffusionPipeline.from_single_file(
                str(result.checkpoints["fp32"]), config=source, local_files_only=True
            )
            if source
            else StableDiffusionPipeline.from_pretrained(tiny_model)
        )
        pipeline.load_textual_inversion(str(path), token="<rufus>")
        torch.testing.assert_close(text_embedding(pipeline), expected, rtol=0, atol=0)
    single = StableDiffusionPipeline.from_single_file(str(result.checkpoints["fp32"]), config=str(tiny_model))
    assert not changed(single.unet.state_dict(), trained.unet.state_dict())
    assert (result.pipeline_dir / "tokenizer" / "added_tokens.json").is_file()  # for transformers 4.x


def test_sdxl_pivotal_lora_teaches_both_text_encoders_and_generates_from_both_phases(
    make_config: Callable[..., TrainConfig], tmp_path: Path, models_dir: Path
):
    config = make_config(
        tmp_path / "sdxl", base_model="builtin:tiny-sdxl", pivotal_second_phase="lora", train_batch_size=1,
        learning_rate=1e-3, **PIVOTAL,
    )  # fmt: skip
    result = train(config)
    vectors = load_file(result.checkpoints["embedding"])
    assert sorted(vectors) == ["clip_g", "clip_l"]
    assert (vectors["clip_l"].shape[0], vectors["clip_g"].shape[0]) == (2, 2)
    pipeline = StableDiffusionXLPipeline.from_pretrained(result.pipeline_dir)
    for tokenizer in (pipeline.tokenizer, pipeline.tokenizer_2):
        assert tokenizer.convert_tokens_to_ids(TOKENS) == [len(tokenizer) - 2, len(tokenizer) - 1]
    request = RenderRequest(PROMPT, None, "ddim", 2, 5.0, seed=3, num_images=1, resolution=64)
    cache = PipelineCache()
    for step, kind in ((1, "embedding"), (3, "lora")):
        model = TrainedModel(
            weights_dir=result.kept_steps[step], weights_format=kind, base_model=config.base_model,
            models_dir=models_dir,
        )  # fmt: skip
        loaded, _ = cache.get(model)
        assert loaded.pipeline.tokenizer_2.convert_tokens_to_ids(TOKENS)[0] != loaded.pipeline.tokenizer_2.unk_token_id
        out = tmp_path / kind
        out.mkdir()
        [image] = render(loaded, request, out)
        with Image.open(image.path) as png:
            assert png.size == (64, 64)


def test_a_placeholder_already_in_the_vocabulary_is_refused(make_config: Callable[..., TrainConfig], tmp_path: Path):
    from worker.dreambooth.errors import JobError

    config = make_config(tmp_path, **{**PIVOTAL, "placeholder_token": "toy", "instance_prompt": "a photo of toy"})
    with pytest.raises(JobError, match="already in the base model's vocabulary") as refused:
        train(config)
    assert refused.value.code == "invalid_settings"

"""The offline commands: `dreambooth make-model` and `dreambooth train`, run as a user would."""

import json
import subprocess

import pytest
from safetensors import safe_open

from backend.base_models import model_facts
from tests.e2e.stack import BIN, base_env, photo_files


def run(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([str(BIN / "dreambooth"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(
    ("flags", "pipeline", "family"),
    [
        (["--size", "tiny"], "StableDiffusionPipeline", "sd1"),  # the old name of --model
        (["--model", "tiny-sd2"], "StableDiffusionPipeline", "sd2"),
        (["--model", "tiny-sdxl"], "StableDiffusionXLPipeline", "sdxl"),
    ],
)
def test_make_model_writes_a_loadable_diffusers_folder_of_each_family(tmp_path, flags, pipeline, family):
    folder = tmp_path / "model"
    run("make-model", str(folder), *flags, env=base_env())
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (folder / "tokenizer" / "vocab.json").exists()
    assert model_facts(str(folder)).family_name == family  # told from its configs, as the API tells it


def test_train_runs_the_core_without_the_server(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for _field, (name, data, _type) in photo_files(3):
        (photos / name).write_bytes(data)
    output = tmp_path / "out"
    stdout = run(
        "train",
        "--photos",
        str(photos),
        "--output",
        str(output),
        "--models-dir",
        str(tmp_path / "models"),
        "--base-model",
        "builtin:tiny",
        "--instance-prompt",
        "a photo of rufus toy",
        "--resolution",
        "64",
        "--max-train-steps",
        "3",
        "--validation-inference-steps",
        "1",
        "--seed",
        "1",
        "--center-crop",
        env=base_env(),
    )
    checkpoint = output / "checkpoints" / "model-fp16.safetensors"
    assert f"checkpoint (fp16): {checkpoint}" in stdout
    assert "memory profile cpu (no GPU): no changes" in stdout
    with safe_open(str(checkpoint), "np") as file:
        assert any(key.startswith("model.diffusion_model.") for key in file.keys())
    # note: about five validation points means every one of 3 steps, each sampling 4 default prompts
    assert len(list((output / "samples").glob("*.png"))) == 3 * 4
    # note: scored as a server job is (SCORER_MODEL; the tiny CLIP in demo mode), its training state dropped
    assert "recommended step: " in stdout
    assert not (output / "training-state").exists()

"""`dreambooth train` and `submit` take every training setting as a flag, with the help, default and range of
backend/training_settings.py, and `train` validates them as the server does."""

import subprocess
import sys

import pytest

import worker.dreambooth.train
from backend.client import settings_from_flags
from backend.training_settings import describe_settings
from tests.conftest import ROOT
from tests.e2e.stack import photo_files
from worker.cli import build_parser, flag_name, main
from worker.dreambooth.config import TrainResult


def help_text(command: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # note: one line per option, so a help line can be found whole
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "submit"])
def test_help_shows_every_setting_with_its_help_and_default_by_group(command, capsys, monkeypatch):
    text = help_text(command, capsys, monkeypatch)
    for setting in describe_settings().settings:
        assert flag_name(setting.name) in text and setting.help in text, setting.name
    for group in describe_settings().groups:
        assert f"\n{group}:\n" in text
    assert (
        "--max-train-steps N   Optimizer steps; Dreambooth overfits fast: start low, add steps until the samples "
        "satisfy (default: 400; face preset: 1200, face_16gb/sdxl_object/sdxl_face presets: 500; range 1-20000)"
    ) in text
    assert "--with-prior-preservation, --no-with-prior-preservation" in text
    assert "--mixed-precision {no,fp16,bf16}" in text


def test_submit_sends_only_the_flags_given():
    flags = ["--instance-prompt", "a photo of rufus dog", "--max-train-steps", "800", "--learning-rate", "1e-6"]
    flags += ["--no-center-crop", "--validation-prompts", "rufus on the moon"]
    flags += ["--validation-prompts", "rufus in a cubist painting", "--mixed-precision", "bf16"]
    args = build_parser().parse_args(["submit", "dog.jpg", *flags])
    assert settings_from_flags(args) == {
        "instance_prompt": "a photo of rufus dog",
        "max_train_steps": 800,
        "learning_rate": 1e-6,
        "center_crop": False,
        "validation_prompts": ["rufus on the moon", "rufus in a cubist painting"],
        "mixed_precision": "bf16",
    }


def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for _field, (name, data, _type) in photo_files(2):
        (folder / name).write_bytes(data)
    return folder


def test_train_refuses_a_bad_value_naming_its_flag(tmp_path, capsys):
    local = ["train", "--photos", str(photo_folder(tmp_path)), "--output", str(tmp_path / "out")]
    for flags, message in [
        (["--learning-rate", "1"], "error: --learning-rate: Input should be less than or equal to 0.001"),
        (["--resolution", "100"], "error: --resolution: must be a multiple of 64"),
        (["--with-prior-preservation"], "error: --class-prompt: required when with_prior_preservation is on"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main([*local, "--instance-prompt", "rufus", "--preset", "custom", *flags])
        assert (exited.value.code, capsys.readouterr().err) == (2, message + "\n")
    assert not (tmp_path / "out").exists()


def test_train_runs_a_server_jobs_settings_with_the_workers_mapping(tmp_path, monkeypatch):
    """The face preset and the server's defaults reach the core as a job's would (worker/core_config.py)."""
    configs = []

    def fake_train(config, on_progress):
        configs.append(config)
        return TrainResult(stopped=False, final_step=0, pipeline_dir=None, samples=(), checkpoints={})

    monkeypatch.setattr(worker.dreambooth.train, "train", fake_train)
    photos = photo_folder(tmp_path)
    local = ["--photos", str(photos), "--output", str(tmp_path / "out")]
    main(["train", *local, "--instance-prompt", "ana person", "--preset", "face", "--checkpoints-total-limit", "3"])
    (config,) = configs
    assert config.base_model == "builtin:tiny"  # note: the server's default (demo mode in the tests)
    assert (config.learning_rate, config.max_train_steps, config.train_batch_size) == (1e-6, 1200, 2)
    assert (config.with_prior_preservation, config.class_prompt) == (True, "a photo of a person")
    assert (config.mixed_precision, config.validation_inference_steps) == ("fp16", 100)
    assert (config.checkpointing_steps, config.checkpoints_total_limit, config.kept_steps_limit) == (300, 1, 3)
    assert config.scorer_model == "builtin:tiny-clip" and len(config.instance_images) == 2


def test_train_fits_the_preset_and_resolution_to_the_base_models_family(tmp_path, monkeypatch, capsys):
    """As on the server: an SDXL base model starts from sdxl_object at its own resolution, and refuses face."""
    configs = []

    def fake_train(config, on_progress):
        configs.append(config)
        return TrainResult(stopped=False, final_step=0, pipeline_dir=None, samples=(), checkpoints={})

    monkeypatch.setattr(worker.dreambooth.train, "train", fake_train)
    local = ["train", "--photos", str(photo_folder(tmp_path)), "--output", str(tmp_path / "out")]
    main([*local, "--instance-prompt", "rufus", "--base-model", "builtin:tiny-sdxl"])
    (config,) = configs
    assert (config.training_method, config.learning_rate, config.resolution) == ("lora", 1e-4, 64)
    with pytest.raises(SystemExit) as exited:
        main([*local, "--instance-prompt", "rufus", "--base-model", "builtin:tiny-sdxl", "--preset", "face"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: --preset: face is for Stable Diffusion 1.x and Stable Diffusion 2.x"
    )


def test_the_command_line_loads_no_ml_stack_until_it_trains(tmp_path):
    """--help and a refused setting answer at once: torch is imported only for training itself."""
    code = (
        "import sys\n"
        "from worker.cli import main\n"
        "try:\n"
        f"    main(['train', '--photos', {str(tmp_path)!r}, '--output', 'out', '--instance-prompt', 'x',"
        " '--seed', '-1'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 2\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "assert not {'torch', 'diffusers', 'transformers'} & loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_pivotal_settings_are_flags_and_the_embedding_a_download_format():
    from backend.client import _default_name

    flags = ["--instance-prompt", "a photo of <sks> dog", "--training-method", "pivotal", "--num-vectors", "2"]
    flags += ["--pivotal-second-phase", "lora", "--textual-inversion-steps", "300", "--placeholder-token", "<sks>"]
    assert settings_from_flags(build_parser().parse_args(["submit", "dog.jpg", *flags])) == {
        "instance_prompt": "a photo of <sks> dog",
        "training_method": "pivotal",
        "num_vectors": 2,
        "pivotal_second_phase": "lora",
        "textual_inversion_steps": 300,
        "placeholder_token": "<sks>",
    }
    args = build_parser().parse_args(["download", "JOB", "--format", "embedding", "--dtype", "fp32"])
    assert args.format == "embedding"
    job = {"id": "5a3c1d52-0000-4000-8000-000000000001"}
    assert _default_name(job, {"step": 2500}, args) == "dreambooth-5a3c1d52-step2500-fp32-embedding.safetensors"

"""Exports built from a job's files without torch: diffusers zips, single files, fp16 weights, the build-once cache."""

import json
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load, load_file, save_file

from backend import exports
from backend.exports import (
    build_diffusers_zip,
    build_once,
    build_single_file,
    ddim_scheduler_config,
    download_stem,
    write_safetensors,
)
from backend.models import Job


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers pipeline folder of the builtin tiny model (PNDM scheduler, fp32 safetensors weights)."""
    from worker.dreambooth.tiny import make_model

    return make_model(tmp_path_factory.mktemp("tiny") / "pipeline")


def converted(folder: Path, tensors: dict[str, np.ndarray], dtype: str, metadata: dict | None = None) -> Path:
    """`tensors` saved by safetensors, then copied by write_safetensors in `dtype`."""
    source, target = folder / "source.safetensors", folder / "target.safetensors"
    save_file(tensors, source, metadata=metadata)
    with target.open("wb") as file:
        write_safetensors(source, file, dtype)
    return target


def test_weights_are_cast_to_fp16_one_tensor_at_a_time_keeping_integers_and_metadata(tmp_path):
    tensors = {
        "weight": np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4),
        "odd": np.arange(3, dtype=np.float32),  # note: 6 bytes in fp16, so the next tensor would sit unaligned
        "ids": np.arange(5, dtype=np.int64),
        "double": np.ones(2, dtype=np.float64),
    }
    path = converted(tmp_path, tensors, "fp16", {"format": "pt"})
    loaded = load_file(path)
    assert {name: array.dtype for name, array in loaded.items()} == {
        "weight": np.float16, "odd": np.float16, "ids": np.int64, "double": np.float16
    }  # fmt: skip
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array.astype(loaded[name].dtype))
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt"}
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    assert header_size % 8 == 0 and header["ids"]["data_offsets"][0] % 8 == 0


def test_fp32_copy_holds_the_same_tensors(tmp_path):
    tensors = {"a": np.random.default_rng(0).standard_normal((4, 4), dtype=np.float32), "b": np.ones(1, np.float16)}
    loaded = load_file(converted(tmp_path, tensors, "fp32"))
    np.testing.assert_array_equal(loaded["a"], tensors["a"])
    assert loaded["b"].dtype == np.float32


def test_ddim_config_keeps_the_noise_schedule():
    pndm = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.42.0",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "skip_prk_steps": True,
        "set_alpha_to_one": True,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }
    assert ddim_scheduler_config(pndm) == {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.42.0",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_diffusers_zip_loads_with_from_pretrained_and_samples_with_ddim(tiny_pipeline, tmp_path, dtype):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    archive = tmp_path / "model.zip"
    build_diffusers_zip(tiny_pipeline, archive, dtype, "rufus-dog-step3-" + dtype)
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.testzip() is None
        assert {name.split("/")[0] for name in zipped.namelist()} == {"rufus-dog-step3-" + dtype}
        zipped.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / ("rufus-dog-step3-" + dtype)
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    loaded = StableDiffusionPipeline.from_pretrained(folder, dtype=torch_dtype)
    original = StableDiffusionPipeline.from_pretrained(tiny_pipeline)

    assert isinstance(loaded.scheduler, DDIMScheduler)
    assert not loaded.scheduler.config.clip_sample and not loaded.scheduler.config.set_alpha_to_one
    assert loaded.scheduler.config.beta_schedule == original.scheduler.config.beta_schedule
    for part in ("unet", "vae", "text_encoder"):
        with safe_open(next((folder / part).glob("*.safetensors")), "np") as weights:
            assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {dtype.replace("fp", "F")}
        expected = getattr(original, part).state_dict()
        for name, value in getattr(loaded, part).state_dict().items():
            assert value.dtype == torch_dtype, f"{part}.{name}"
            assert torch.equal(value, expected[name].to(torch_dtype)), f"{part}.{name}"
    image = loaded.to(torch.float32)("a photo of rufus", num_inference_steps=2, output_type="np", height=64, width=64)
    assert image.images.shape == (1, 64, 64, 3)


def split(path: Path) -> tuple[dict, bytes]:
    """A .safetensors file's header and its tensor data."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_single_file_streamed_with_numpy_is_the_workers_export(tiny_pipeline, tmp_path, dtype):
    from worker.dreambooth.export import export_single_file

    worker = export_single_file(tiny_pipeline, tmp_path / "worker.safetensors", dtype, {"step": "3"})
    with safe_open(worker, "np") as f:
        metadata = f.metadata()
    build_single_file(tiny_pipeline, tmp_path / "api.safetensors", dtype, metadata)
    # note: the same tensors in the same order, to the byte; only the header's JSON may order its keys otherwise
    assert split(tmp_path / "api.safetensors") == split(worker)


@pytest.fixture(scope="session")
def family_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The builtin SD 2.x and SDXL pipeline folders (SD 1.x's is tiny_pipeline)."""
    from worker.dreambooth.tiny import make_model

    root = tmp_path_factory.mktemp("families")
    return {name: make_model(root / name, name) for name in ("tiny-sd2", "tiny-sdxl")}


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
def test_every_familys_single_file_streamed_with_numpy_is_the_workers_export(family_pipelines, tmp_path, name, dtype):
    """SD 2.x's and SDXL's OpenCLIP encoders concatenate q, k and v and (SDXL) transpose the projection."""
    from worker.dreambooth.export import export_single_file

    worker = export_single_file(family_pipelines[name], tmp_path / "worker.safetensors", dtype, {"step": "3"})
    with safe_open(worker, "np") as f:
        metadata = f.metadata()
    build_single_file(family_pipelines[name], tmp_path / "api.safetensors", dtype, metadata)
    assert split(tmp_path / "api.safetensors") == split(worker)


def test_sdxl_step_single_file_has_that_steps_second_text_encoder(family_pipelines, tmp_path):
    """A kept SDXL step whose weights folder holds its UNet and both text encoders, laid over the final pipeline."""
    from worker.dreambooth.export import export_single_file

    pipeline = family_pipelines["tiny-sdxl"]
    step = tmp_path / "weights"
    for part in ("unet", "text_encoder", "text_encoder_2"):
        shutil.copytree(pipeline / part, step / part)
        (weights,) = (step / part).glob("*.safetensors")
        save_file({key: value + 1 for key, value in load_file(weights).items()}, weights, metadata={"format": "pt"})
    whole = shutil.copytree(pipeline, tmp_path / "whole", dirs_exist_ok=True)
    shutil.copytree(step, whole, dirs_exist_ok=True)
    # note: one file name for both, as the header's default title is the file's
    final = export_single_file(pipeline, tmp_path / "final" / "model.safetensors", "fp32", {"step": "9"})
    expected = export_single_file(whole, tmp_path / "worker" / "model.safetensors", "fp32", {"step": "4"})

    exports._build_step_single_file(pipeline, step, final, tmp_path / "api.safetensors", step=4, dtype="fp32")
    assert split(tmp_path / "api.safetensors") == split(expected)
    projection = "conditioner.embedders.1.model.text_projection"
    assert not np.array_equal(load_file(tmp_path / "api.safetensors")[projection], load_file(final)[projection])


def test_a_weights_folder_stands_in_for_whole_component_folders(tiny_pipeline, tmp_path):
    """A step's single-file UNet laid over a pipeline whose UNet is sharded: only the step's files remain."""
    from worker.dreambooth.export import export_single_file

    pipeline = shutil.copytree(tiny_pipeline, tmp_path / "pipeline")
    unet = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(unet)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = names[1::2]
    for shard, keys in shards.items():
        save_file({key: unet[key] for key in keys}, pipeline / "unet" / shard, metadata={"format": "pt"})
    weight_map = {key: shard for shard, keys in shards.items() for key in keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    step = tmp_path / "weights"
    (step / "unet").mkdir(parents=True)
    shutil.copy(pipeline / "unet" / "config.json", step / "unet")
    changed = {key: value + 1 for key, value in unet.items()}
    save_file(changed, step / "unet" / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})

    build_diffusers_zip(pipeline, tmp_path / "step.zip", "fp32", "step", overlay=step)
    with zipfile.ZipFile(tmp_path / "step.zip") as archive:
        unet_files = sorted(name for name in archive.namelist() if name.startswith("step/unet/"))
        assert unet_files == ["step/unet/config.json", "step/unet/diffusion_pytorch_model.safetensors"]
        zipped = archive.read("step/unet/diffusion_pytorch_model.safetensors")
        text_encoder = archive.read("step/text_encoder/model.safetensors")
    assert all(np.array_equal(value, changed[key]) for key, value in load(zipped).items())
    assert load(text_encoder).keys() == load_file(pipeline / "text_encoder" / "model.safetensors").keys()

    whole = shutil.copytree(pipeline, tmp_path / "whole", ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(step / "unet", whole / "unet")
    expected = export_single_file(whole, tmp_path / "worker.safetensors", "fp32")
    build_single_file(pipeline, tmp_path / "api.safetensors", "fp32", {}, overlay=step)
    assert split(tmp_path / "api.safetensors")[1] == split(expected)[1]


def test_concurrent_callers_build_once_and_all_get_the_whole_file(tmp_path):
    builds = []

    def slow_build(tmp: Path) -> None:
        builds.append(tmp)
        tmp.write_bytes(b"half")
        time.sleep(0.3)
        with tmp.open("ab") as file:
            file.write(b" and whole")

    target = tmp_path / "exports" / "model.zip"
    start = threading.Barrier(4)
    results = []

    def request() -> None:
        start.wait()
        results.append(build_once(target, slow_build).read_bytes())

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert results == [b"half and whole"] * 4
    assert sorted(path.name for path in target.parent.iterdir()) == [".model.zip.lock", "model.zip"]


def test_a_failed_build_leaves_nothing_and_the_next_request_builds_again(tmp_path):
    target = tmp_path / "model.zip"

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        build_once(target, failing)
    assert not target.exists() and not (tmp_path / ".model.zip.tmp").exists()
    assert build_once(target, lambda tmp: tmp.write_bytes(b"whole")).read_bytes() == b"whole"


@pytest.mark.parametrize(
    ("prompt", "stem"),
    [
        ("a photo of rufus the dog", "rufus-dog"),
        ("A photo of sks toy", "sks-toy"),
        ("Ein Foto von Café-Hund «Bello» / ../etc", "ein-foto-von-cafe-hund-bello-etc"),
        ("a photo of a " + "very " * 20 + "good dog", "very-very-very-very-very-very-very-very"),
        ("a photo of the", "dreambooth-12345678"),
    ],
)
def test_download_names_come_from_the_subject_of_the_instance_prompt(prompt, stem):
    job = Job(id=uuid.UUID("12345678" + "0" * 24), settings={"instance_prompt": prompt})
    assert download_stem(job) == stem

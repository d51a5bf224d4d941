"""Downloads of a kept earlier step, in every format, built by the API process from the job's weights folders."""

import json
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load, load_file, save_file

from backend import exports, jobs, storage
from backend.models import Artifact, Job, JobStatus
from formats.lora import LORA_FILES

FINAL, WITH_TEXT_ENCODER, UNET_ONLY = 400, 200, 100  # kept steps: at 200 the text encoder was trained too
LORA_STEP = 200
PROMPT = "a photo of rufus the dog"  # the DOG settings make_job gives every job
UNET = "unet/diffusion_pytorch_model.safetensors"
TEXT_ENCODER = "text_encoder/model.safetensors"


@dataclass(frozen=True)
class Trained:
    """The files a finished job keeps, made from builtin:tiny outside DATA_DIR (jobs copy them in)."""

    pipeline: Path  # the final pipeline folder
    weights: dict[int, Path]  # kept step -> its weights folder (what training changed)
    whole: dict[int, Path]  # kept step -> the whole model at that step: the pipeline with its weights substituted
    checkpoints: dict[str, Path]  # dtype -> the final single file, as the worker exports it
    lora: dict[str, Path]  # LoRA format -> the final LoRA file
    lora_weights: Path  # a LoRA job's kept step: both LoRA files


def perturbed(source: Path, target: Path, seed: int) -> None:
    """A copy of a model folder with every weight moved a little, as some training steps would."""
    shutil.copytree(source, target)
    weights = next(target.glob("*.safetensors"))
    rng = np.random.default_rng(seed)
    tensors = {
        name: value + rng.normal(0, 0.01, value.shape).astype(value.dtype) for name, value in load_file(weights).items()
    }
    save_file(tensors, weights, metadata={"format": "pt"})


def lora_files(folder: Path, seed: int) -> dict[str, Path]:
    """A diffusers-format LoRA file and a kohya one, shaped like the worker's (rank 4, fp32, metadata)."""
    rng = np.random.default_rng(seed)
    down, up = rng.standard_normal((4, 32), np.float32), rng.standard_normal((32, 4), np.float32)
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    folder.mkdir(parents=True)
    paths = {format_: folder / name for format_, name in LORA_FILES.items()}
    save_file(
        {f"unet.{module}.lora_A.weight": down, f"unet.{module}.lora_B.weight": up},
        paths["lora"],
        metadata={"format": "pt"},
    )
    kohya = f"lora_unet_{module.replace('.', '_')}"
    save_file(
        {f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up, f"{kohya}.alpha": np.array(4, np.float32)},
        paths["lora_kohya"],
        metadata={"ss_network_dim": "4", "ss_network_alpha": "4.0"},
    )
    return paths


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from worker.dreambooth.config import TrainConfig
    from worker.dreambooth.export import checkpoint_metadata, export_single_file
    from worker.dreambooth.tiny import make_model

    root = tmp_path_factory.mktemp("trained")
    pipeline = make_model(root / "pipeline")
    weights = {step: root / f"weights-{step}" for step in (UNET_ONLY, WITH_TEXT_ENCODER)}
    for step, folder in weights.items():
        parts = ("unet", "text_encoder") if step == WITH_TEXT_ENCODER else ("unet",)
        for seed, part in enumerate(parts, start=step):
            perturbed(pipeline / part, folder / part, seed)
    whole = {}
    for step, folder in weights.items():
        whole[step] = shutil.copytree(pipeline, root / f"whole-{step}")
        for part in folder.iterdir():
            shutil.rmtree(whole[step] / part.name)
            shutil.copytree(part, whole[step] / part.name)
    config = TrainConfig(
        base_model="builtin:tiny",
        instance_images=(root / "photo.png",),
        instance_prompt=PROMPT,
        output_dir=root,
        models_dir=root,
        max_train_steps=FINAL,
        learning_rate=5e-6,
    )
    metadata = checkpoint_metadata(config, FINAL)
    checkpoints = {
        dtype: export_single_file(pipeline, root / f"final-{dtype}.safetensors", dtype, metadata)
        for dtype in ("fp16", "fp32")
    }
    lora_files(root / "lora-step", 1)
    return Trained(pipeline, weights, whole, checkpoints, lora_files(root / "lora", 0), root / "lora-step")


@pytest.fixture(scope="session")
def trained_sdxl(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Trained:
    """builtin:tiny-sdxl's files, one kept step having trained the UNet and the second text encoder."""
    from worker.dreambooth.export import export_single_file
    from worker.dreambooth.tiny import make_model

    root = tmp_path_factory.mktemp("trained-sdxl")
    pipeline = make_model(root / "pipeline", "tiny-sdxl")
    weights = root / f"weights-{WITH_TEXT_ENCODER}"
    for seed, part in enumerate(("unet", "text_encoder_2")):
        perturbed(pipeline / part, weights / part, seed)
    whole = shutil.copytree(pipeline, root / "whole")
    shutil.copytree(weights, whole, dirs_exist_ok=True)
    metadata = {"instance_prompt": PROMPT, "step": str(FINAL)}
    checkpoints = {
        dtype: export_single_file(pipeline, root / f"final-{dtype}.safetensors", dtype, metadata)
        for dtype in ("fp16", "fp32")
    }
    return Trained(
        pipeline,
        {WITH_TEXT_ENCODER: weights},
        {WITH_TEXT_ENCODER: whole},
        checkpoints,
        trained.lora,
        trained.lora_weights,
    )


# ── a finished job holding those files ─────────────────────────────────────────────────────


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored(job: Job, source: Path, name: str, **fields) -> Artifact:
    """An artifact for a copy of `source` (a file or folder) under the job's folder, as the worker records it."""
    target = storage.job_dir(job.id) / "output" / name
    if source.is_dir():
        shutil.copytree(source, target)
        size = sum(file.stat().st_size for file in target.rglob("*") if file.is_file())
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        size = target.stat().st_size
    return Artifact(path=storage.relative(target), size_bytes=size, **fields)


def finished_job(db, make_job, user, trained: Trained, training_method: str) -> Job:
    """A succeeded job with the final pipeline and single files and its kept steps' weights folders;
    a LoRA job also with its LoRA files, and LoRA files only at its earlier step."""
    job = make_job(user)
    job.settings = {**job.settings, "training_method": training_method}
    db.commit()
    artifacts = [
        stored(job, trained.pipeline, "pipeline", kind="pipeline", step=FINAL, format="diffusers", dtype="fp32"),
        *(
            stored(job, path, path.name, kind="checkpoint", step=FINAL, format="single", dtype=dtype)
            for dtype, path in trained.checkpoints.items()
        ),
    ]
    if training_method == "lora":
        artifacts += [
            stored(job, path, path.name, kind="checkpoint", step=FINAL, format=lora_format, dtype="fp32")
            for lora_format, path in trained.lora.items()
        ]
        artifacts.append(
            stored(
                job,
                trained.lora_weights,
                f"weights-{LORA_STEP}",
                kind="weights",
                step=LORA_STEP,
                format="lora",
                dtype="fp32",
            )
        )
    else:
        artifacts += [
            stored(job, folder, f"weights-{step}", kind="weights", step=step, format="diffusers", dtype="fp32")
            for step, folder in trained.weights.items()
        ]
    lease = jobs.claim_job(db, job.id)
    jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=artifacts)
    return job


@pytest.fixture
def owner(user_factory):
    user, token = user_factory("alice")
    return user, bearer(token)


@pytest.fixture
def full_job(db, make_job, owner, trained) -> Job:
    return finished_job(db, make_job, owner[0], trained, "full")


@pytest.fixture
def lora_job(db, make_job, owner, trained) -> Job:
    return finished_job(db, make_job, owner[0], trained, "lora")


def header(data: bytes) -> dict:
    return split(data)[0]


def split(data: bytes) -> tuple[dict, bytes]:
    """A .safetensors file's header and its tensor data."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def assert_same_tensors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


# ── single files ────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("step", "dtype"), [(WITH_TEXT_ENCODER, "fp16"), (WITH_TEXT_ENCODER, "fp32"), (UNET_ONLY, "fp32")]
)
def test_step_single_file_equals_the_workers_export_of_that_steps_weights(
    client, full_job, owner, trained, tmp_path, step, dtype
):
    from worker.dreambooth.export import export_single_file

    response = client.get(
        f"/api/jobs/{full_job.id}/checkpoint?format=single&dtype={dtype}&step={step}", headers=owner[1]
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="rufus-dog-step{step}-{dtype}.safetensors"'
    expected = export_single_file(trained.whole[step], tmp_path / "worker.safetensors", dtype)
    downloaded = load(response.content)
    assert_same_tensors(downloaded, load_file(expected))
    assert downloaded["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == np.int64

    final = load_file(trained.checkpoints[dtype])
    differs = {name for name, value in final.items() if not np.array_equal(value, downloaded[name])}
    assert any(name.startswith("model.diffusion_model.") for name in differs)
    # note: the text encoder is the final one's exactly where that step did not train it
    trained_text = any(name.startswith("cond_stage_model.") for name in differs)
    assert trained_text == (step == WITH_TEXT_ENCODER)
    assert not any(name.startswith("first_stage_model.") for name in differs)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_sdxl_step_single_file_is_the_workers_export_to_the_byte(
    client, db, make_job, owner, trained_sdxl, tmp_path, dtype
):
    from worker.dreambooth.export import export_single_file

    job = finished_job(db, make_job, owner[0], trained_sdxl, "full")
    url = f"/api/jobs/{job.id}/checkpoint?format=single&dtype={dtype}&step={WITH_TEXT_ENCODER}"
    response = client.get(url, headers=owner[1])
    assert response.status_code == 200
    expected = export_single_file(trained_sdxl.whole[WITH_TEXT_ENCODER], tmp_path / "worker.safetensors", dtype)
    expected_header, expected_data = split(expected.read_bytes())
    downloaded_header, downloaded_data = split(response.content)
    # note: names, types, shapes and offsets alike; the metadata is the final file's, said of the step
    assert {k: v for k, v in downloaded_header.items() if k != "__metadata__"} == {
        k: v for k, v in expected_header.items() if k != "__metadata__"
    }
    assert downloaded_data == expected_data
    assert downloaded_header["__metadata__"]["modelspec.architecture"] == "stable-diffusion-xl-v1-base"

    final = load_file(trained_sdxl.checkpoints[dtype])
    downloaded = load(response.content)
    differs = {name for name, value in final.items() if not np.array_equal(value, downloaded[name])}
    assert {name.split(".")[0] for name in differs} == {"model", "conditioner"}
    assert all(name.startswith("conditioner.embedders.1.") for name in differs if name.startswith("conditioner."))


def test_step_single_file_header_is_the_final_ones_said_of_that_step(client, full_job, owner, trained):
    response = client.get(f"/api/jobs/{full_job.id}/checkpoint?step={WITH_TEXT_ENCODER}", headers=owner[1])
    metadata = header(response.content)["__metadata__"]
    with safe_open(trained.checkpoints["fp32"], "np") as final:
        expected = final.metadata()
    assert metadata["step"] == str(WITH_TEXT_ENCODER)
    assert metadata["modelspec.title"] == f"{PROMPT} (Dreambooth, step {WITH_TEXT_ENCODER})"
    assert f", {WITH_TEXT_ENCODER} steps at learning rate 5e-06." in metadata["modelspec.description"]
    changed = {"step", "modelspec.title", "modelspec.description"}
    assert {key: value for key, value in metadata.items() if key not in changed} == {
        key: value for key, value in expected.items() if key not in changed
    }
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1" and metadata["format"] == "pt"


def test_step_single_file_loads_in_diffusers_with_that_steps_weights(client, full_job, owner, trained, tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    url = f"/api/jobs/{full_job.id}/checkpoint?dtype=fp32&step={WITH_TEXT_ENCODER}"
    path = tmp_path / "step.safetensors"
    path.write_bytes(client.get(url, headers=owner[1]).content)
    # note: `config` (a local diffusers folder) supplies every config, so nothing is fetched from the Hub
    loaded = StableDiffusionPipeline.from_single_file(path, config=str(trained.pipeline), local_files_only=True)
    expected = StableDiffusionPipeline.from_pretrained(trained.whole[WITH_TEXT_ENCODER])
    for part in ("unet", "text_encoder", "vae"):
        weights = getattr(expected, part).state_dict()
        for name, value in getattr(loaded, part).state_dict().items():
            assert torch.equal(value, weights[name]), f"{part}.{name}"


# ── diffusers zips ──────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("step", [WITH_TEXT_ENCODER, UNET_ONLY])
def test_step_diffusers_zip_is_the_pipeline_with_that_steps_weights(client, full_job, owner, trained, tmp_path, step):
    from diffusers import UNet2DConditionModel

    response = client.get(
        f"/api/jobs/{full_job.id}/checkpoint?format=diffusers&dtype=fp32&step={step}", headers=owner[1]
    )
    assert response.status_code == 200
    folder = f"rufus-dog-step{step}-fp32-diffusers"
    assert response.headers["content-disposition"] == f'attachment; filename="{folder}.zip"'
    with zipfile.ZipFile(BytesIO(response.content)) as archive:
        archive.extractall(tmp_path)
        names = {name.removeprefix(folder + "/") for name in archive.namelist()}
    assert names == {
        path.relative_to(trained.pipeline).as_posix() for path in trained.pipeline.rglob("*") if path.is_file()
    }
    unzipped = tmp_path / folder
    for part in (UNET, TEXT_ENCODER, "vae/diffusion_pytorch_model.safetensors"):
        assert_same_tensors(load_file(unzipped / part), load_file(trained.whole[step] / part))
    assert json.loads((unzipped / "scheduler/scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"
    unet = UNet2DConditionModel.from_pretrained(unzipped / "unet").state_dict()
    expected = load_file(trained.weights[step] / UNET)
    assert all(np.array_equal(value.numpy(), expected[name]) for name, value in unet.items())


def test_step_exports_are_kept_per_step_format_and_dtype(client, full_job, owner):
    for params in (
        f"step={UNET_ONLY}",
        f"step={UNET_ONLY}&dtype=fp32",
        f"step={WITH_TEXT_ENCODER}",
        f"step={UNET_ONLY}&format=diffusers",
        f"step={FINAL}&format=diffusers",
        f"step={FINAL}",  # note: the final single files are sent as they are, never rebuilt
    ):
        assert client.get(f"/api/jobs/{full_job.id}/checkpoint?{params}", headers=owner[1]).status_code == 200
    exported = storage.job_dir(full_job.id) / "exports"
    assert sorted(path.name for path in exported.iterdir() if not path.name.startswith(".")) == [
        f"step{UNET_ONLY}-diffusers-fp16.zip",
        f"step{UNET_ONLY}-single-fp16.safetensors",
        f"step{UNET_ONLY}-single-fp32.safetensors",
        f"step{WITH_TEXT_ENCODER}-single-fp16.safetensors",
        f"step{FINAL}-diffusers-fp16.zip",
    ]


def test_built_step_file_resumes_with_a_range_and_answers_304(client, full_job, owner):
    url = f"/api/jobs/{full_job.id}/checkpoint?step={UNET_ONLY}"
    whole = client.get(url, headers=owner[1])
    part = client.get(url, headers={**owner[1], "Range": "bytes=100-199", "If-Range": whole.headers["etag"]})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert client.get(url, headers={**owner[1], "If-None-Match": whole.headers["etag"]}).status_code == 304


def test_simultaneous_requests_for_a_step_build_it_once(client, full_job, owner, monkeypatch):
    builds = []

    def slow_build(*args, **kwargs):
        builds.append(threading.current_thread().name)
        time.sleep(0.5)  # note: long enough that the other request arrives while this one builds
        build_single_file(*args, **kwargs)

    build_single_file = exports.build_single_file
    monkeypatch.setattr(exports, "build_single_file", slow_build)
    responses = []

    def download():
        responses.append(client.get(f"/api/jobs/{full_job.id}/checkpoint?step={WITH_TEXT_ENCODER}", headers=owner[1]))

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in responses] == [200, 200]
    assert responses[0].content == responses[1].content
    assert len(builds) == 1


# ── LoRA jobs ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("lora_format", ["lora", "lora_kohya"])
@pytest.mark.parametrize("step", [FINAL, LORA_STEP])
def test_lora_files_download_at_every_kept_step(client, lora_job, owner, trained, lora_format, step):
    source = trained.lora[lora_format] if step == FINAL else trained.lora_weights / LORA_FILES[lora_format]
    url = f"/api/jobs/{lora_job.id}/checkpoint?format={lora_format}&step={step}"
    fp32 = client.get(url + "&dtype=fp32", headers=owner[1])
    assert fp32.status_code == 200 and fp32.content == source.read_bytes()  # note: sent as it is
    name = f"rufus-dog-step{step}-fp32-{lora_format.replace('_', '-')}.safetensors"
    assert fp32.headers["content-disposition"] == f'attachment; filename="{name}"'

    fp16 = client.get(url + "&dtype=fp16", headers=owner[1])
    assert fp16.status_code == 200
    expected = load_file(source)
    assert_same_tensors(load(fp16.content), {name: value.astype(np.float16) for name, value in expected.items()})
    with safe_open(source, "np") as original:
        assert header(fp16.content)["__metadata__"] == original.metadata()
    assert (storage.job_dir(lora_job.id) / "exports" / f"step{step}-{lora_format}-fp16.safetensors").is_file()


def test_lora_jobs_final_step_downloads_whole_as_well(client, lora_job, owner, trained):
    single = client.get(f"/api/jobs/{lora_job.id}/checkpoint?dtype=fp32", headers=owner[1])
    assert single.status_code == 200 and single.content == trained.checkpoints["fp32"].read_bytes()
    assert client.get(f"/api/jobs/{lora_job.id}/checkpoint?format=diffusers", headers=owner[1]).status_code == 200


@pytest.mark.parametrize(
    ("job", "params", "message"),
    [
        ("full_job", {"format": "lora"}, "this job was trained without LoRA"),
        ("full_job", {"format": "lora_kohya", "step": UNET_ONLY}, "this job was trained without LoRA"),
        ("full_job", {"step": 300}, "no checkpoint at step 300; kept steps: 100, 200, 400"),
        ("full_job", {"format": "diffusers", "step": 300}, "kept steps: 100, 200, 400"),
        (
            "lora_job",
            {"step": LORA_STEP},
            "intermediate steps of LoRA jobs download as format=lora or format=lora_kohya",
        ),
        ("lora_job", {"format": "diffusers", "step": LORA_STEP}, "download as format=lora or format=lora_kohya"),
        ("lora_job", {"format": "lora", "step": 300}, "no checkpoint at step 300; kept steps: 200, 400"),
    ],
)
def test_step_that_cannot_be_downloaded_is_not_found(client, owner, request, job, params, message):
    job = request.getfixturevalue(job)
    response = client.get(f"/api/jobs/{job.id}/checkpoint", params=params, headers=owner[1])
    assert response.status_code == 404
    assert message in response.json()["error"]["message"]
    assert not (storage.job_dir(job.id) / "exports").exists()


def test_step_whose_weights_are_gone_is_not_found(client, full_job, owner):
    shutil.rmtree(storage.job_dir(full_job.id) / "output" / f"weights-{UNET_ONLY}")
    for params in ({"step": UNET_ONLY}, {"step": UNET_ONLY, "format": "diffusers"}):
        response = client.get(f"/api/jobs/{full_job.id}/checkpoint", params=params, headers=owner[1])
        assert response.status_code == 404, params
        assert "no longer on the server" in response.json()["error"]["message"]

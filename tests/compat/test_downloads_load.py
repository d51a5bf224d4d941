"""Every download of a trained job loads first time, in the stack this project runs and in an older one that
many users pin (.venv-compat: transformers 4.x and a diffusers from before transformers 5).

Eight jobs train on the whole stack: on SD 1.x full and LoRA, with and without the text encoder; on SD 2.x
and SDXL full and LoRA with their text encoders. Each downloads at its final and at a kept earlier step, in
every format and dtype, over HTTP. tests/compat/load_downloads.py then
loads each one with each stack's own loaders: every weight must be accounted for (no missing, unexpected or
mismatched keys, no LoRA key left unloaded), and the text embedding and UNet output must equal those of
the weights the worker stored, loaded back in the stack that trained them.
"""

import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import text

from backend.auth import create_user
from backend.db import get_engine, get_sessionmaker
from backend.models import Base
from tests.e2e.stack import FAST_SETTINGS, Client, Stack, running_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COMPAT_PYTHON = ROOT / ".venv-compat" / "bin" / "python"
LOADER = Path(__file__).with_name("load_downloads.py")
PROMPT = "a photo of rufus toy"
SETTINGS = {
    **FAST_SETTINGS, "max_train_steps": 8, "validation_steps": 4, "validation_prompts": [PROMPT],
    "validation_inference_steps": 2, "learning_rate": 1e-3,
}  # fmt: skip
JOBS = {
    "full": {},
    "full-te": {"train_text_encoder": True},
    "lora": {"training_method": "lora"},
    "lora-te": {"training_method": "lora", "train_text_encoder": True},
    "sd2-full-te": {"base_model": "builtin:tiny-sd2", "train_text_encoder": True},
    "sd2-lora-te": {"base_model": "builtin:tiny-sd2", "training_method": "lora", "train_text_encoder": True},
    "sdxl-full-te": {"base_model": "builtin:tiny-sdxl", "train_text_encoder": True, "train_batch_size": 1},
    "sdxl-lora-te": {
        "base_model": "builtin:tiny-sdxl", "training_method": "lora", "train_text_encoder": True, "train_batch_size": 1,
    },
}  # fmt: skip
STEPS = (4, 8)  # a kept step and the final one
FORMATS = {"full": ("single", "diffusers"), "lora": ("lora", "lora_kohya")}
TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}  # note: absolute, on values of order one


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_engine().begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("compat")) as running:
        yield running


@pytest.fixture(scope="module")
def manifest(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the jobs, download everything, and list each download with the stored weights it must equal."""
    clients, submitted = {}, {}
    for name, extra in JOBS.items():
        # note: a user of their own per job: a user may have only so many jobs queued at once
        with get_sessionmaker()() as session:
            _user, token = create_user(session, f"compat-{name}")
        clients[name] = Client(stack.url, token)
        submitted[name] = clients[name].submit({**SETTINGS, **extra})["id"]
    folder = tmp_path_factory.mktemp("downloads")
    data = Path(stack.env["DATA_DIR"])
    downloads = []
    for name, job_id in submitted.items():
        client = clients[name]
        job = client.wait_for(job_id, {"succeeded", "failed", "cancelled"}, stack, timeout=600)
        assert job["status"] == "succeeded", stack.logs()
        assert set(STEPS) <= set(job["kept_steps"])
        base_model = JOBS[name].get("base_model", "builtin:tiny")
        base = data / "models" / f"builtin-{base_model.removeprefix('builtin:')}"
        if not any(item["name"] == f"base/{base_model}" for item in downloads):
            downloads.append({"name": f"base/{base_model}", "kind": "diffusers", "path": str(base), "reference": None})
        output = data / "jobs" / uuid.UUID(job_id).hex / "output"
        for step in STEPS:
            downloads.append({**reference(name, step, output, base, folder), "base_name": f"base/{base_model}"})
            for fmt in FORMATS[method(name)]:
                for dtype in ("fp32", "fp16"):
                    path = download(client, job_id, fmt, dtype, step, folder / f"{name}-{step}-{fmt}-{dtype}")
                    item = {"name": f"{name}/{step}/{fmt}/{dtype}", "reference": f"{name}/{step}", "dtype": dtype}
                    kind = {"lora_kohya": "lora"}.get(fmt, fmt)
                    downloads.append({**item, "kind": kind, "path": str(path), "config": str(base), "base": str(base)})
    path = folder / "manifest.json"
    path.write_text(json.dumps({"prompt": PROMPT, "timestep": 500, "downloads": downloads}, indent=1))
    return path


def reference(name: str, step: int, output: Path, base: Path, folder: Path) -> dict:
    """What the worker stored for `step`: the pipeline folder (the last step's, with a kept step's own weights
    laid over it), or a LoRA job's kept step as its stored LoRA file on the base model."""
    item = {"name": f"reference/{name}/{step}", "reference": None}
    if method(name) == "lora" and step != STEPS[-1]:
        lora = output / "steps" / f"step-{step}" / "pytorch_lora_weights.safetensors"
        return {**item, "kind": "lora", "path": str(lora), "base": str(base)}
    layered = folder / f"reference-{name}-{step}"
    layered.mkdir()
    for part in (output / "pipeline").iterdir():
        kept = output / "steps" / f"step-{step}" / part.name
        (layered / part.name).symlink_to(kept if kept.exists() else part)
    return {**item, "kind": "diffusers", "path": str(layered)}


def method(job_name: str) -> str:
    return "lora" if "lora" in job_name else "full"


def download(client: Client, job_id: str, fmt: str, dtype: str, step: int, stem: Path) -> Path:
    response = client.http.get(
        f"/api/jobs/{job_id}/checkpoint", params={"format": fmt, "dtype": dtype, "step": step}, timeout=120
    )
    assert response.status_code == 200, response.text
    if fmt != "diffusers":
        path = stem.with_suffix(".safetensors")
        path.write_bytes(response.content)
        return path
    archive = stem.with_suffix(".zip")
    archive.write_bytes(response.content)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(stem)
        (top,) = {name.split("/")[0] for name in zipped.namelist()}
    return stem / top


def load_everything(python: Path | str, manifest: Path, out: Path) -> tuple[dict, Path]:
    done = subprocess.run(
        [str(python), str(LOADER), str(manifest), str(out)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), out


@pytest.fixture(scope="module")
def own(manifest: Path) -> tuple[dict, Path]:
    return load_everything(sys.executable, manifest, manifest.parent / "own")


@pytest.fixture(scope="module")
def old(manifest: Path) -> tuple[dict, Path]:
    runs = load_everything(COMPAT_PYTHON, manifest, manifest.parent / "old")
    assert runs[0]["versions"]["transformers"].startswith("4."), runs[0]["versions"]
    return runs


def outputs_of(runs: tuple[dict, Path], name: str) -> dict[str, torch.Tensor]:
    results, out = runs
    return load_file(out / results["results"][name]["outputs"])


KEY_WORDS = ("key", "not loaded", "unexpected", "missing", "not initialized", "newly initialized", "mismatch")


def expected_note(item: dict, message: str) -> bool:
    """diffusers notes that a LoRA trained without the text encoder has no text-encoder keys: true, and fine."""
    return "-te/" not in item["name"] and "No LoRA keys associated to CLIPTextModel" in message


def problems_of(runs: tuple[dict, Path], own: tuple[dict, Path], items: list[dict]) -> list[str]:
    problems = []
    for item in items:
        result = runs[0]["results"][item["name"]]
        if "error" in result:
            problems.append(f"{item['name']}: {result['error']}")
            continue
        problems += [f"{item['name']} {part}: {report}" for part, report in result["reports"].items()
                     if any(report.values())]  # fmt: skip
        notes = [message for message in result["warnings"] if not expected_note(item, message)]
        problems += [f"{item['name']}: {note}" for note in notes if any(word in note.lower() for word in KEY_WORDS)]
        if item["reference"]:
            expected, actual = outputs_of(own, f"reference/{item['reference']}"), outputs_of(runs, item["name"])
            for name in ("text", "unet"):
                difference = (actual[name] - expected[name]).abs().max().item()
                if difference > TOLERANCE[item["dtype"]]:
                    problems.append(f"{item['name']}: {name} differs from the stored weights' by {difference:.2e}")
    return problems


def test_the_stored_weights_load_whole_and_differ_from_the_base(manifest: Path, own):
    items = [item for item in json.loads(manifest.read_text())["downloads"] if not item["reference"]]
    assert problems_of(own, own, items) == []
    for item in items:
        if item["name"].startswith("base/"):
            continue
        base, trained = outputs_of(own, item["base_name"]), outputs_of(own, item["name"])
        changed = ["unet"] + (["text"] if "-te/" in item["name"] else [])
        for name in changed:
            assert (trained[name] - base[name]).abs().max().item() > 10 * TOLERANCE["fp32"], (item["name"], name)


@pytest.mark.parametrize("stack_name", ["own", "old"])
def test_every_download_loads_whole_and_computes_what_the_worker_stored(manifest: Path, own, old, stack_name):
    items = [item for item in json.loads(manifest.read_text())["downloads"] if item["reference"]]
    problems = problems_of(own if stack_name == "own" else old, own, items)
    assert problems == [], "\n".join(problems)

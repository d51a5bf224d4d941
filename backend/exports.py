"""Checkpoint downloads: which file answers a request, and the exports built from a job's files on demand.

A finished job keeps its single-file checkpoints (sent as they are) and its diffusers pipeline folder.
A `diffusers` download is a zip of that folder with DDIM as its scheduler and its weights in the asked
dtype, built here without torch, once per (job, step, format, dtype), and kept under
DATA_DIR/jobs/<id>/exports/. A lock file per export makes concurrent requests, in threads or processes,
build it once; the file appears by an atomic rename, so nobody ever sends half of one.
"""

import errno
import fcntl
import json
import logging
import math
import os
import re
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Literal

import numpy as np
from safetensors import safe_open

from backend import storage
from backend.errors import Conflict, NotFound, StorageFailed
from backend.models import Artifact, Job, JobStatus

log = logging.getLogger(__name__)

Format = Literal["single", "diffusers", "lora", "lora_kohya"]
Dtype = Literal["fp16", "fp32"]

LORA_FORMATS = ("lora", "lora_kohya")
# The artifact each format is sent or built from: (kind, format).
SOURCES = {"single": ("checkpoint", "single"), "diffusers": ("pipeline", "diffusers")}
DESCRIPTIONS = {"single": "single-file checkpoint", "diffusers": "diffusers pipeline"}

# The study: DDIM rescues overfit Dreambooth models, so downloaded pipelines default to it.
DDIM = {"_class_name": "DDIMScheduler", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
# What a DDIM scheduler keeps from the pipeline's own scheduler: the noise schedule it was trained with.
NOISE_SCHEDULE = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "timestep_spacing", "rescale_betas_zero_snr", "_diffusers_version",
)  # fmt: skip

# safetensors dtype names -> numpy (little-endian, as the format is)
NUMPY_TYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4",
    "I64": "<i8", "U64": "<u8", "F16": "<f2", "F32": "<f4", "F64": "<f8",
}  # fmt: skip
FLOATS = {"F16", "F32", "F64"}
TENSOR_TYPES = {"fp16": "F16", "fp32": "F32"}

# Words that name no subject; the rest of the instance prompt names the download.
FILLER_WORDS = {"a", "an", "the", "of", "photo", "picture", "image", "in", "on", "at", "with", "and", "my"}
MAX_SLUG = 40


@dataclass(frozen=True)
class Download:
    """A file to send: a kept file, or an export `build` writes (to a temporary path) on first request."""

    path: Path
    filename: str
    media_type: str
    build: Callable[[Path], None] | None = None

    def ready(self) -> Path:
        """The file, built first if it is an export nobody has built yet (that can take minutes)."""
        try:
            if self.build is not None:
                build_once(self.path, self.build)
            if not self.path.is_file():
                raise FileNotFoundError(self.path)
        except FileNotFoundError:
            log.error("checkpoint file missing: %s", self.path)
            raise NotFound("this checkpoint's files are no longer on the server") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.error("no room to build %s: %s", self.path, exc)
            raise StorageFailed("the server has no room to build this download now; try again later") from None
        return self.path


def checkpoint_download(job: Job, checkpoint_format: Format, dtype: Dtype, step: int | None) -> Download:
    """What answers GET /api/jobs/{id}/checkpoint; `step` None means the last kept one."""
    if job.status != JobStatus.succeeded:
        raise Conflict(f"the job is {job.status}; checkpoints can be downloaded once it has succeeded")
    if checkpoint_format in LORA_FORMATS:
        raise NotFound(
            "this job was trained without LoRA; download format=single (one .safetensors file) "
            "or format=diffusers (a zip of the pipeline folder) instead"
        )
    sources = [
        artifact
        for artifact in job.artifacts
        if (artifact.kind, artifact.format or "single") == SOURCES[checkpoint_format]
    ]
    kept = sorted({artifact.step for artifact in sources})
    if not kept:
        raise NotFound(f"this job kept no {DESCRIPTIONS[checkpoint_format]}")
    if step is not None and step not in kept:
        raise NotFound(f"this job kept no checkpoint at step {step}; kept steps: {', '.join(map(str, kept))}")
    step = kept[-1] if step is None else step
    stem = f"{download_stem(job)}-step{step}-{dtype}"
    if checkpoint_format == "single":
        return _single_file(sources, step, dtype, stem)
    source = storage.resolve(next(artifact.path for artifact in sources if artifact.step == step))
    folder = f"{stem}-diffusers"
    return Download(
        path=storage.job_dir(job.id) / "exports" / f"step{step}-diffusers-{dtype}.zip",
        filename=f"{folder}.zip",
        media_type="application/zip",
        build=partial(build_diffusers_zip, source, dtype=dtype, folder=folder),
    )


def _single_file(sources: list[Artifact], step: int, dtype: Dtype, stem: str) -> Download:
    artifact = next((a for a in sources if a.step == step and a.dtype == dtype), None)
    if artifact is None:
        raise NotFound(f"this job has no {dtype} single-file checkpoint at step {step}")
    return Download(storage.resolve(artifact.path), f"{stem}.safetensors", "application/octet-stream")


def download_stem(job: Job) -> str:
    """A download's name: the subject words of the instance prompt ("a photo of rufus the dog" -> "rufus-dog")."""
    prompt = unicodedata.normalize("NFKD", job.settings.get("instance_prompt", "")).encode("ascii", "ignore")
    words = [word for word in re.findall(r"[a-z0-9]+", prompt.decode().lower()) if word not in FILLER_WORDS]
    return "-".join(words)[:MAX_SLUG].strip("-") or f"dreambooth-{job.id.hex[:8]}"


# ── building and caching ────────────────────────────────────────────────────────────────────


def build_once(path: Path, build: Callable[[Path], None]) -> Path:
    """`path`, first written by `build(temporary path)` unless it exists; concurrent callers build it once."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # note: each caller opens the lock file itself, so flock excludes threads of one process as well as processes
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # built while we waited
            return path
        tmp = path.with_name(f".{path.name}.tmp")  # only the lock holder writes it; a crashed build's is overwritten
        start = time.monotonic()
        try:
            build(tmp)
            with open(tmp, "rb") as file:
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("built %s (%d bytes) in %.1f s", path, path.stat().st_size, time.monotonic() - start)
    return path


def build_diffusers_zip(pipeline_dir: Path, out: Path, dtype: Dtype, folder: str) -> None:
    """Zip a diffusers pipeline folder under `folder/`, with DDIM as its scheduler and its weights in `dtype`."""
    if not (pipeline_dir / "model_index.json").is_file():
        raise FileNotFoundError(pipeline_dir / "model_index.json")
    with zipfile.ZipFile(out, "w") as archive:
        for path in sorted(p for p in pipeline_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(pipeline_dir).as_posix()
            name = f"{folder}/{relative}"
            if relative == "model_index.json":
                index = {**_read_json(path), "scheduler": ["diffusers", "DDIMScheduler"]}
                archive.writestr(name, _json(index), zipfile.ZIP_DEFLATED)
            elif relative == "scheduler/scheduler_config.json":
                archive.writestr(name, _json(ddim_scheduler_config(_read_json(path))), zipfile.ZIP_DEFLATED)
            elif path.suffix == ".safetensors":
                # note: weights hardly compress, so they are stored: building and unzipping stay disk-bound
                with archive.open(zipfile.ZipInfo.from_file(path, name), "w") as entry:
                    write_safetensors(path, entry, dtype)
            else:
                archive.write(path, name, compress_type=zipfile.ZIP_DEFLATED)


def ddim_scheduler_config(config: dict) -> dict:
    """A DDIMScheduler config on the same noise schedule as `config` (any diffusers scheduler's)."""
    return {**DDIM, **{key: config[key] for key in NOISE_SCHEDULE if key in config}}


def write_safetensors(source: Path, target: IO[bytes], dtype: Dtype) -> None:
    """Copy a .safetensors file into `target` with its floating tensors cast to `dtype`, keeping its metadata.

    One tensor at a time: a UNet is gigabytes, and this runs in the API process.
    """
    with safe_open(source, framework="numpy") as weights:
        entries = []
        for name in weights.keys():
            view = weights.get_slice(name)
            kind = TENSOR_TYPES[dtype] if view.get_dtype() in FLOATS else view.get_dtype()
            entries.append((name, kind, view.get_shape()))
        # note: widest types first (as safetensors itself writes), so every tensor stays aligned in the file
        entries.sort(key=lambda entry: (-np.dtype(NUMPY_TYPES[entry[1]]).itemsize, entry[0]))
        header: dict = {"__metadata__": weights.metadata()} if weights.metadata() else {}
        offset = 0
        for name, kind, shape in entries:
            size = math.prod(shape) * np.dtype(NUMPY_TYPES[kind]).itemsize
            header[name] = {"dtype": kind, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        target.write(len(encoded).to_bytes(8, "little") + encoded)
        for name, kind, _shape in entries:
            target.write(weights.get_tensor(name).astype(NUMPY_TYPES[kind], copy=False).tobytes())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"

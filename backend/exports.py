"""Checkpoint downloads: which file answers a request, and the exports built from a job's files on demand.

A finished job keeps its single-file checkpoints (sent as they are), its diffusers pipeline folder, and at
each kept earlier step a weights folder holding only what training changed (its UNet, its text encoder
when that was trained; LoRA jobs: the LoRA files; pivotal jobs: also the learned embedding, which is all a
textual-inversion step keeps). Any other download is built here without torch, once per (job, step, format,
dtype), and kept under DATA_DIR/jobs/<id>/exports/: a `diffusers` zip of the pipeline folder (with a step's
weights laid over it) with DDIM as its scheduler and its weights in the asked dtype; a step's single file,
streamed one tensor at a time in its family's original layout; a LoRA file or an embedding in fp16. A lock
file per export makes concurrent requests, in threads or processes, build it once; the file appears by an
atomic rename, so nobody ever sends half of one.
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
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Literal

import numpy as np
from safetensors import safe_open

from backend import storage
from backend.errors import Conflict, NotFound, StorageFailed
from backend.models import Artifact, Job, JobStatus
from backend.training_settings import dreambooth_method

# note: the one module of the core the API uses: plain Python, so the exports here and the worker's own
# single files hold the same names (test_torch_free keeps it that way)
from formats import single_file as layout
from formats.embedding import EMBEDDING_FILE, EMBEDDING_FORMAT, added_tokens
from formats.hub_layout import hub_name
from formats.lora import LORA_FILES, LORA_FORMATS

log = logging.getLogger(__name__)

# note: the LoRA ones are formats.lora.LORA_FORMATS, embedding is formats.embedding.EMBEDDING_FORMAT
Format = Literal["single", "diffusers", "lora", "lora_kohya", "embedding"]
Dtype = Literal["fp16", "fp32"]

# A LoRA job's kept step: its weights folder holds one file per LoRA format.
# Artifacts that hold a step's weights: the steps a download may ask for.
STEP_KINDS = ("checkpoint", "pipeline", "weights")
SAFETENSORS_TYPE = "application/octet-stream"

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
    _check_format(job, checkpoint_format)
    lora = dreambooth_method(job.settings) == "lora"
    kept = downloadable_steps(job)
    if not kept:
        raise NotFound("this job kept no checkpoint")
    if step is not None and step not in kept:
        raise NotFound(f"this job kept no checkpoint at step {step}; kept steps: {', '.join(map(str, kept))}")
    step = kept[-1] if step is None else step
    stem = f"{download_stem(job)}-step{step}-{dtype}"
    exports = storage.job_dir(job.id) / "exports"
    if checkpoint_format == EMBEDDING_FORMAT:
        return _embedding_file(job, dtype, step, stem, exports)
    if _find(job, "weights", step, EMBEDDING_FORMAT) is not None:
        raise NotFound(
            f"step {step} was in this job's textual-inversion phase, which learns only the new token's embedding; "
            "download it as format=embedding"
        )
    if checkpoint_format in LORA_FORMATS:
        return _lora_file(job, checkpoint_format, dtype, step, stem, exports)
    if lora and _find(job, "pipeline", step) is None:
        raise NotFound(
            f"step {step} of this LoRA job kept only its LoRA weights; "
            "intermediate steps of LoRA jobs download as format=lora or format=lora_kohya"
        )
    if checkpoint_format == "single":
        return _single_file(job, dtype, step, stem, exports)
    return _diffusers_zip(job, dtype, step, stem, exports)


def job_formats(job: Job) -> list[str]:
    """The download formats a job's training gives: LoRA files when it trained LoRA (alone or as pivotal tuning's
    second phase), the learned embedding when it was pivotal."""
    formats = ["single", "diffusers"]
    if dreambooth_method(job.settings) == "lora":
        formats += LORA_FORMATS
    if job.settings.get("training_method") == "pivotal":
        formats.append(EMBEDDING_FORMAT)
    return formats


def _check_format(job: Job, checkpoint_format: Format) -> None:
    """A 404 naming the formats the job has, for a format its training does not give."""
    formats = job_formats(job)
    if checkpoint_format in formats:
        return
    why = (
        "was trained without LoRA"
        if checkpoint_format in LORA_FORMATS
        else "learned no embedding (only training_method pivotal does)"
    )
    offered = " or ".join(f"format={name}" for name in formats)
    raise NotFound(f"this job {why}; download {offered} instead")


def downloadable_steps(job: Job) -> list[int]:
    """Steps with weights or a checkpoint file to download."""
    return sorted({artifact.step for artifact in job.artifacts if artifact.kind in STEP_KINDS})


def _single_file(job: Job, dtype: Dtype, step: int, stem: str, exports: Path) -> Download:
    filename = f"{stem}.safetensors"
    kept = _find(job, "checkpoint", step, "single", dtype)
    if kept is not None:
        return Download(storage.resolve(kept.path), filename, SAFETENSORS_TYPE)
    weights, pipeline = _find(job, "weights", step, "diffusers"), _final_pipeline(job)
    # note: a step's file says what the final one says of the training, so its header starts from that
    final = pipeline and (
        _find(job, "checkpoint", pipeline.step, "single", "fp32") or _find(job, "checkpoint", pipeline.step, "single")
    )
    if weights is None or final is None:
        raise NotFound(f"this job has no {dtype} single-file checkpoint at step {step}")
    return Download(
        path=exports / f"step{step}-single-{dtype}.safetensors",
        filename=filename,
        media_type=SAFETENSORS_TYPE,
        build=partial(
            _build_step_single_file,
            storage.resolve(pipeline.path),
            storage.resolve(weights.path),
            storage.resolve(final.path),
            step=step,
            dtype=dtype,
            added_tokens=added_tokens(job.settings.get("training_method", "full"), job.settings.get("num_vectors", 1)),
        ),
    )


def _diffusers_zip(job: Job, dtype: Dtype, step: int, stem: str, exports: Path) -> Download:
    pipeline, overlay = _find(job, "pipeline", step, "diffusers"), None
    if pipeline is None:
        weights, pipeline = _find(job, "weights", step, "diffusers"), _final_pipeline(job)
        if weights is None or pipeline is None:
            raise NotFound(f"this job kept no diffusers pipeline at step {step}")
        overlay = storage.resolve(weights.path)
    folder = f"{stem}-diffusers"
    return Download(
        path=exports / f"step{step}-diffusers-{dtype}.zip",
        filename=f"{folder}.zip",
        media_type="application/zip",
        build=partial(build_diffusers_zip, storage.resolve(pipeline.path), dtype=dtype, folder=folder, overlay=overlay),
    )


def _lora_file(job: Job, checkpoint_format: Format, dtype: Dtype, step: int, stem: str, exports: Path) -> Download:
    """The final step's LoRA checkpoint file, or the file in a kept step's LoRA weights folder."""
    source = _find(job, "checkpoint", step, checkpoint_format)
    if source is not None:
        path = storage.resolve(source.path)
    elif (source := _find(job, "weights", step, "lora")) is not None:
        path = storage.resolve(source.path) / LORA_FILES[checkpoint_format]
    else:
        raise NotFound(f"this job kept no LoRA weights at step {step}")
    filename = f"{stem}-{checkpoint_format.replace('_', '-')}.safetensors"
    return _in_dtype(
        path, source.dtype, dtype, filename, exports / f"step{step}-{checkpoint_format}-{dtype}.safetensors"
    )


def _embedding_file(job: Job, dtype: Dtype, step: int, stem: str, exports: Path) -> Download:
    """A pivotal job's learned embedding: the final one, or the file every kept step's weights folder holds
    (phase one's hold only it; phase two's hold it beside the step's UNet or LoRA files)."""
    source = _find(job, "checkpoint", step, EMBEDDING_FORMAT)
    if source is not None:
        path = storage.resolve(source.path)
    elif (source := _find(job, "weights", step)) is not None:
        path = storage.resolve(source.path) / EMBEDDING_FILE
    else:
        raise NotFound(f"this job kept no embedding at step {step}")
    filename = f"{stem}-embedding.safetensors"
    return _in_dtype(path, source.dtype, dtype, filename, exports / f"step{step}-embedding-{dtype}.safetensors")


def _in_dtype(path: Path, stored: str | None, dtype: Dtype, filename: str, export: Path) -> Download:
    """A small .safetensors file sent as it is stored (fp32 unless the artifact says otherwise), or cast to
    `dtype` once at `export`."""
    if dtype == (stored or "fp32"):
        return Download(path, filename, SAFETENSORS_TYPE)
    return Download(export, filename, SAFETENSORS_TYPE, build=partial(cast_safetensors, path, dtype=dtype))


def _find(job: Job, kind: str, step: int, file_format: str | None = None, dtype: str | None = None) -> Artifact | None:
    """The job's artifact of `kind` at `step` (of `file_format` and `dtype` if given; single files have no format)."""
    return next(
        (
            artifact
            for artifact in job.artifacts
            if (artifact.kind, artifact.step) == (kind, step)
            and file_format in (None, artifact.format or "single")
            and dtype in (None, artifact.dtype)
        ),
        None,
    )


def _final_pipeline(job: Job) -> Artifact | None:
    """The pipeline folder of the last step: a kept earlier step is that with the step's weights laid over it."""
    pipelines = (artifact for artifact in job.artifacts if artifact.kind == "pipeline")
    return max(pipelines, key=lambda artifact: artifact.step, default=None)


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


def build_diffusers_zip(pipeline_dir: Path, out: Path, dtype: Dtype, folder: str, overlay: Path | None = None) -> None:
    """Zip a diffusers pipeline folder (a kept step's weights folder laid over it) under `folder/`, with DDIM as
    its scheduler and its weights in `dtype`."""
    with zipfile.ZipFile(out, "w") as archive:
        for top in overlaid(pipeline_dir, overlay).values():
            files = [top] if top.is_file() else sorted(path for path in top.rglob("*") if path.is_file())
            for path in files:
                relative = path.relative_to(top.parent).as_posix()
                name = f"{folder}/{relative}"
                if relative == "model_index.json":
                    index = {**_read_json(path), "scheduler": ["diffusers", "DDIMScheduler"]}
                    archive.writestr(name, _json(index), zipfile.ZIP_DEFLATED)
                elif relative == "scheduler/scheduler_config.json":
                    archive.writestr(name, _json(ddim_scheduler_config(_read_json(path))), zipfile.ZIP_DEFLATED)
                elif path.suffix == ".safetensors":
                    # note: weights hardly compress, so they are stored: building and unzipping stay disk-bound
                    with archive.open(zipfile.ZipInfo.from_file(path, name), "w") as entry:
                        write_safetensors(path, entry, dtype, rename=_hub_names(path.parent))
                elif path.name.endswith(".safetensors.index.json"):
                    index = _read_json(path)
                    rename = _hub_names(path.parent)
                    index["weight_map"] = {rename(key): file for key, file in index["weight_map"].items()}
                    archive.writestr(name, _json(index), zipfile.ZIP_DEFLATED)
                else:
                    archive.write(path, name, compress_type=zipfile.ZIP_DEFLATED)


def overlaid(pipeline_dir: Path, overlay: Path | None = None) -> dict[str, Path]:
    """The top-level entries of a pipeline folder (model_index.json, unet/, vae/, ...) by name, with a kept
    step's weights folder laid over it: each of its folders (unet/, text_encoder/) stands in for the whole
    of the pipeline's. Its files are not the pipeline's (a pivotal job's embedding.safetensors downloads on
    its own)."""
    if not (pipeline_dir / "model_index.json").is_file():
        raise FileNotFoundError(pipeline_dir / "model_index.json")
    entries = {entry.name: entry for entry in pipeline_dir.iterdir()}
    if overlay is not None:
        if not overlay.is_dir():
            raise FileNotFoundError(overlay)
        entries |= {entry.name: entry for entry in overlay.iterdir() if entry.is_dir()}
    return dict(sorted(entries.items()))


def ddim_scheduler_config(config: dict) -> dict:
    """A DDIMScheduler config on the same noise schedule as `config` (any diffusers scheduler's)."""
    return {**DDIM, **{key: config[key] for key in NOISE_SCHEDULE if key in config}}


def build_single_file(
    pipeline_dir: Path,
    out: Path,
    dtype: Dtype,
    metadata: dict[str, str],
    overlay: Path | None = None,
    added_tokens: int = 0,
) -> None:
    """Write a pipeline's UNet, VAE and text encoders (a kept step's weights laid over them) as one .safetensors
    file in its family's original layout: the names, shapes, types and bytes the worker's export_single_file
    writes, streamed one tensor at a time."""
    entries = overlaid(pipeline_dir, overlay)
    # note: training changes weights, never configs, so the pipeline's own configs tell the family
    family = layout.folder_family(pipeline_dir)
    with ExitStack() as stack:
        files: dict[str, dict] = {}  # component -> diffusers name -> its open file
        for component in layout.components(family):
            files[component] = {}
            for path in layout.weight_files(entries[component]):
                weights = stack.enter_context(safe_open(path, framework="numpy"))
                files[component] |= dict.fromkeys(weights.keys(), weights)
        configs = {component: _read_json(entries[component] / "config.json") for component in layout.IMAGE_COMPONENTS}
        sources = layout.original_layout(family, files, configs, added_tokens)
        tensors = [_streamed(name, source, files, dtype) for name, source in sources.items()]
        with out.open("wb") as target:
            write_tensors(target, tensors, metadata)


def _streamed(name: str, source: layout.Source, files: dict[str, dict], dtype: Dtype) -> "Tensor":
    """The Tensor that writes `name` from the open files `source` reads (formats/single_file.py's Source)."""
    views = [files[component][key].get_slice(key) for component, key in source.reads]
    shape = source.shape([view.get_shape() for view in views])
    if source.transform == layout.POSITIONS:
        return Tensor(name, "I64", shape, partial(np.arange, shape[1], dtype=np.int64))
    return Tensor(name, _file_type(views[0].get_dtype(), dtype), shape, partial(_read, source, files))


def _read(source: layout.Source, files: dict[str, dict]) -> np.ndarray:
    """A Source's values: its reads, concatenated along dim 0 when several (q, k, v), transposed if it says so."""
    values = [files[component][key].get_tensor(key) for component, key in source.reads]
    value = np.concatenate(values) if len(values) > 1 else values[0]
    if source.dropped_rows:
        return value[: value.shape[0] - source.dropped_rows]
    return value.T if source.transform == layout.TRANSPOSE else value


def _build_step_single_file(
    pipeline_dir: Path,
    weights_dir: Path,
    final_checkpoint: Path,
    out: Path,
    step: int,
    dtype: Dtype,
    added_tokens: int = 0,
) -> None:
    with safe_open(final_checkpoint, framework="numpy") as final:
        metadata = layout.metadata_at_step(final.metadata() or {}, step)
    build_single_file(pipeline_dir, out, dtype, metadata, overlay=weights_dir, added_tokens=added_tokens)


def cast_safetensors(source: Path, out: Path, dtype: Dtype) -> None:
    """Copy a .safetensors file to `out` with its floating tensors in `dtype`."""
    with out.open("wb") as target:
        write_safetensors(source, target, dtype)


@dataclass(frozen=True)
class Tensor:
    """A tensor to write: its name, safetensors type and shape in the file, and how to read it (cast on writing)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]


def write_safetensors(
    source: Path, target: IO[bytes], dtype: Dtype, rename: Callable[[str], str] = lambda name: name
) -> None:
    """Copy a .safetensors file into `target` with its floating tensors cast to `dtype` and its tensors renamed,
    keeping its metadata."""
    with safe_open(source, framework="numpy") as weights:
        tensors = []
        for name in weights.keys():
            view = weights.get_slice(name)
            kind = _file_type(view.get_dtype(), dtype)
            tensors.append(Tensor(rename(name), kind, tuple(view.get_shape()), partial(weights.get_tensor, name)))
        write_tensors(target, tensors, weights.metadata())


def write_tensors(target: IO[bytes], tensors: list[Tensor], metadata: dict[str, str] | None) -> None:
    """Write a .safetensors file one tensor at a time: a UNet is gigabytes, and this runs in the API process."""
    # note: widest types first (as safetensors itself writes), so every tensor stays aligned in the file
    tensors = sorted(tensors, key=lambda tensor: (-np.dtype(NUMPY_TYPES[tensor.kind]).itemsize, tensor.name))
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for tensor in tensors:
        size = math.prod(tensor.shape) * np.dtype(NUMPY_TYPES[tensor.kind]).itemsize
        header[tensor.name] = {
            "dtype": tensor.kind,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write(len(encoded).to_bytes(8, "little") + encoded)
    for tensor in tensors:
        data = tensor.read().astype(NUMPY_TYPES[tensor.kind], copy=False)
        if data.size != math.prod(tensor.shape):
            raise ValueError(f"{tensor.name} holds {data.size} values, not {tensor.shape}")
        target.write(data.tobytes())


def _file_type(kind: str, dtype: Dtype) -> str:
    """The safetensors type a tensor of type `kind` is written as: floats in `dtype`, the rest as they are."""
    return TENSOR_TYPES[dtype] if kind in FLOATS else kind


def _hub_names(folder: Path) -> Callable[[str], str]:
    """How a model folder's weights are named on the Hub (formats/hub_layout.py), even if saved otherwise."""
    config = folder / "config.json"
    architectures = _read_json(config).get("architectures") if config.is_file() else None
    return partial(hub_name, (architectures or [""])[0])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"

"""Where files live under DATA_DIR, and how they are written: generated names, atomic renames."""

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from backend.settings import get_settings

PHOTO_KINDS = ("instance", "class")


def data_dir() -> Path:
    return get_settings().data_dir


def job_dir(job_id: uuid.UUID) -> Path:
    return data_dir() / "jobs" / job_id.hex


def models_dir() -> Path:
    return data_dir() / "models"


def relative(path: Path) -> str:
    """A path as stored in the database: relative to DATA_DIR, so the data folder can move."""
    return path.resolve().relative_to(data_dir()).as_posix()


def resolve(stored: str) -> Path:
    """The absolute path of a stored relative path, refusing anything that escapes DATA_DIR."""
    root = data_dir()
    path = (root / stored).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"stored path escapes the data folder: {stored!r}")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either nothing or the whole file, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def photo_path(job_id: uuid.UUID, kind: str, position: int, extension: str) -> Path:
    """Where a job's uploaded photo is kept: a generated name, never the user's."""
    return job_dir(job_id) / f"{kind}-photos" / f"{position:04d}{extension}"


def remove_job_files(job_id: uuid.UUID) -> None:
    shutil.rmtree(job_dir(job_id), ignore_errors=True)


def remove_job_photos(job_id: uuid.UUID) -> None:
    """Delete the raw photos of a job (the retention rule), keeping its outputs."""
    for kind in PHOTO_KINDS:
        shutil.rmtree(job_dir(job_id) / f"{kind}-photos", ignore_errors=True)


def remove_job_outputs(job_id: uuid.UUID) -> None:
    """Delete everything a job made but its photos: partial outputs of a failed or cancelled run."""
    folder = job_dir(job_id)
    keep = {f"{kind}-photos" for kind in PHOTO_KINDS}
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

"""Atomic writes: readers see a whole file or folder, or none at all."""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{suffix}")


def _fsync(path: Path) -> None:
    # note: without fsync a power cut after the rename can still leave a truncated file behind it
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it into place only if the block succeeds.

    With replace=False an existing `path` is left alone and FileExistsError is raised.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        try:
            os.rename(tmp, path)
        except OSError:
            # note: rename refuses to replace a non-empty folder; that is how we learn `path` exists
            if not path.exists():
                raise
            if not replace:
                raise FileExistsError(path) from None
            old = _sibling(path, "old")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

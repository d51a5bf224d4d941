"""The API process never loads the machine-learning stack (DESIGN rule 1), nor do the core's modules it uses."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML_STACK = {"torch", "diffusers", "transformers", "accelerate"}


def assert_imports_none_of(modules: str, forbidden: set[str]) -> None:
    """Import `modules` in a fresh interpreter and check no top-level package in `forbidden` got loaded."""
    code = (
        f"import sys, {modules}\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        f"heavy = set({sorted(forbidden)!r}) & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_backend_imports_no_ml_stack():
    assert_imports_none_of("backend.main, backend.auth, backend.jobs, backend.queue, backend.exports", ML_STACK)


def test_the_original_layout_names_are_plain_python():
    """backend/exports.py streams single files by formats/single_file.py's names, as the worker writes them."""
    assert_imports_none_of("formats.single_file", ML_STACK | {"numpy", "safetensors", "backend", "worker"})

"""The API process never loads the machine-learning stack (DESIGN rule 1), nor does the one module of the core it uses."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_backend_imports_no_ml_stack():
    code = (
        "import sys, backend.main, backend.auth, backend.jobs, backend.queue, backend.exports\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'accelerate'} & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_the_original_layout_names_are_plain_python():
    """backend/exports.py streams single files by worker/dreambooth/layout.py's names, as export.py writes them."""
    code = (
        "import sys, worker.dreambooth.layout\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'accelerate', 'numpy', 'safetensors', 'backend'} & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)

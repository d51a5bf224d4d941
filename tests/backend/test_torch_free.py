"""The API process never loads the machine-learning stack (DESIGN rule 1)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_backend_imports_no_ml_stack():
    code = (
        "import sys, backend.main, backend.auth, backend.jobs, backend.queue\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'accelerate'} & loaded\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)

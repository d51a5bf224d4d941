"""`backend/client.py` stays a plain HTTP client."""

import subprocess

from tests.e2e.stack import BIN


def test_client_imports_no_machine_learning_stack():
    """Importing the client must not pull in torch or the ML libraries (the CLI starts fast anywhere)."""
    code = "import sys, backend.client; print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

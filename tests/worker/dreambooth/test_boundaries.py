"""The core stands alone: no web, queue or database imports, and a config that needs no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import worker.dreambooth

PACKAGE = Path(worker.dreambooth.__file__).parent
FORBIDDEN = {"backend", "celery", "sqlalchemy", "fastapi", "worker", "tests"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a module (relative imports stay inside the package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_nothing_of_ours_outside_itself():
    for path in PACKAGE.glob("*.py"):
        assert not imported_roots(path) & FORBIDDEN, path.name


def test_config_imports_without_torch():
    code = "import sys, worker.dreambooth.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent.parent).returncode == 0

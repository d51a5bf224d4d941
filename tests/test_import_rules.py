"""Dependencies point one way (DESIGN.md): every import in the code, top level or inside a function, parsed."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ML_STACK = ("torch", "diffusers", "transformers", "accelerate", "peft", "bitsandbytes", "xformers")
# package -> the modules it must never import (a name covers its submodules)
RULES = {
    "backend": (*ML_STACK, "worker", "celery.worker"),
    "worker/dreambooth": ("backend", "worker.tasks", "worker.generation_tasks", "worker.progress", "worker.cli",
                          "worker.celery_app", "worker.reaper", "celery", "sqlalchemy", "fastapi", "alembic"),
    "formats": (*ML_STACK, "backend", "worker", "bench", "tests", "numpy", "safetensors"),
}  # fmt: skip


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against its package."""
    package = path.relative_to(root).parent.parts
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            modules.add(module)
            # note: `from . import layout` imports a module named by the alias
            modules |= {f"{module}.{alias.name}" for alias in node.names}
    return modules


def crossings(folder: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        for module in sorted(imported_modules(path, root)):
            if any(module == name or module.startswith(name + ".") for name in forbidden):
                found.append(f"{path.relative_to(root)} imports {module}")
    return found


@pytest.mark.parametrize("folder", list(RULES))
def test_no_import_crosses_the_design_rules(folder: str):
    assert crossings(folder, RULES[folder]) == []


def test_the_checker_sees_relative_and_nested_imports(tmp_path: Path):
    (tmp_path / "formats").mkdir()
    (tmp_path / "formats" / "probe.py").write_text("def late():\n    from ..backend import jobs\n    import torch.nn\n")
    assert crossings("formats", RULES["formats"], root=tmp_path) == [
        "formats/probe.py imports backend",
        "formats/probe.py imports backend.jobs",
        "formats/probe.py imports torch.nn",
    ]

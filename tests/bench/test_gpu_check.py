"""The GPU acceptance run's dry run: the same code paths on the CPU, so scripts/gpu-check cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = [
    "environment",
    "gpu tests",
    "memory planner",
    "memory goals",
    "lora memory",
    "training speed",
    "training speed with savers",
    "compiled speed",
    "sdxl memory",
    "sdxl speed",
    "pivotal memory",
]


def test_the_dry_run_brings_back_every_section_and_figure(tmp_path: Path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["scripts/gpu-check", "--dry-run", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == [
        "gpu-check.json",
        "gpu-check.log",
        "gpu-check.md",
        "gpu-tests.xml",
    ]
    results = json.loads((out / "gpu-check.json").read_text())
    sections = results["sections"]
    assert list(sections) == SECTIONS
    assert {name: section["status"] for name, section in sections.items()} == dict.fromkeys(SECTIONS, "ok")
    assert results["dry_run"] and sections["environment"]["gpu"] is None

    tests = sections["gpu tests"]
    # note: the compiled-UNet test skips itself on a CPU (a compile takes minutes there and gains nothing)
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (5, 0, 1)

    for card, measured in sections["memory planner"]["cards"].items():
        auto, none, following = measured["jobs"]
        assert auto["outcome"] == "stopped after the timed steps" and auto["plan"]["profile"] == "cpu", card
        assert none["outcome"] == "failed" and none["error"]["code"] == "out_of_memory", card
        assert "training_method lora" in none["error"]["message"]
        assert following["outcome"] in ("succeeded", "stopped after the timed steps"), card
    assert sections["memory planner"]["cards"]["12 GB"]["jobs"][2]["exports"] == ["fp16", "fp32"]

    figures = [line["figure"] for line in results["summary"]]
    assert len(figures) == 12 and all(line["measured"] is not None for line in results["summary"][:10])
    assert [line["met"] is None for line in results["summary"]].count(True) == 1  # SDXL full: no goal
    assert any(figure.startswith("SDXL LoRA rank 32") for figure in figures)
    markdown = (out / "gpu-check.md").read_text()
    assert "## GPU check (dry run on the CPU)" in markdown
    for table in (
        "### memory goals",
        "### lora memory",
        "### memory planner",
        "### training speed, rows 0",
        "### sdxl",
        "### pivotal memory",
    ):
        assert table in markdown


def test_only_runs_the_sections_named(tmp_path: Path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["scripts/gpu-check", "--dry-run", "--only", "environment", "--out", str(out), "--work-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(json.loads((out / "gpu-check.json").read_text())["sections"]) == ["environment"]
    wrong = subprocess.run(
        ["scripts/gpu-check", "--dry-run", "--only", "nonsense"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "no section named nonsense" in wrong.stderr


def test_every_section_can_be_named_on_the_command_line():
    from bench import gpu_check

    assert gpu_check._names() == SECTIONS
    # note: --only takes a comma-separated list, so a name with a comma could never be asked for
    assert not [name for name in SECTIONS if "," in name]


def test_the_summary_holds_the_speeds_plain_and_compiled_against_their_goals():
    from bench import gpu_check

    def speed(ours: float, reference: float) -> dict:
        row = {"configuration": "UNet only", "ours": {"steps_per_s": ours, "first_step_s": 140.0}}
        return {"status": "ok", "rows": [row | {"reference": {"steps_per_s": reference}}]}

    sections = {"training speed": speed(6.5, 5.8), "compiled speed": speed(9.85, 4.25)}
    lines = {line["figure"]: line for line in gpu_check.summary({"sections": sections})}
    assert lines["UNet only, fp16, batch 1, no checkpointing: steps/s"]["met"] is False
    assert lines["ours / reference loop, UNet only"]["measured"] == 1.12
    assert lines["UNet only, fp16, batch 1, no checkpointing, compiled: steps/s"]["met"] is True
    assert lines["ours compiled / reference loop, UNet only"] == {
        "figure": "ours compiled / reference loop, UNet only",
        "measured": 2.32,
        "goal": "at least 1.6x",
        "met": True,
    }
    assert lines["compiled: loop start to the first step's end, s"]["measured"] == 140.0

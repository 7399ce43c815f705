"""scripts/reproduce.py: a slice of the grid writes runs, tables and plots; a rerun resumes (skips
what is done); a seed still running is marked in the tables. On the random tiny model (plumbing only:
what it learns is tests/core/starter/test_learning.py's business)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "tiny-clip.json"


def reproduce(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "scripts/reproduce.py", "--out", str(out), "--model", str(TINY), "--tasks", "outlines",
               "--methods", "linear_probe", "--shots", "1", "--epochs", "1", "--test-per-class", "2", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def runs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_a_slice_writes_runs_tables_and_plots_and_a_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    reproduce(out, "--seeds", "0")
    first = runs(out)
    # zero-shot once, then the probe with each LayerNorm mode, plus auto's choice
    assert sorted(r["label"] for r in first) == sorted(
        ["zero_shot", "linear_probe", "linear_probe + LN joint", "linear_probe + LN init", "auto"])
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in first)
    assert next(r for r in first if r["label"] == "auto")["picked"]
    table = (out / "README.md").read_text()
    assert table.startswith("# The paper in miniature: results on tiny-clip.json")
    rows = [line for line in table.splitlines() if line.startswith("| linear_probe")]
    assert len(rows) == 3 and not any("†" in row for row in rows)
    assert (out / "accuracy_vs_shots.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "layernorm_modes.png").read_bytes()[:4] == b"\x89PNG"

    reproduce(out, "--seeds", "0")  # everything is done: nothing runs again
    assert runs(out) == first

    reproduce(out, "--seeds", "1", "--methods", "linear_probe", "--no-auto")
    assert len(runs(out)) == len(first) + 3
    # seed 1 has no auto run yet: that cell is marked as having fewer seeds, the others are not
    table = (out / "README.md").read_text()
    auto_row = next(line for line in table.splitlines() if line.startswith("| auto |"))
    probe_row = next(line for line in table.splitlines() if line.startswith("| linear_probe |"))
    assert "†" in auto_row and "†" not in probe_row and "±" in probe_row

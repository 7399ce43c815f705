"""The example-dataset script: digits by default, the starter model's downstream tasks with --task."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_example_dataset.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_a_starter_task_is_written_as_split_class_folders(tmp_path: Path) -> None:
    out = tmp_path / "shapes.zip"
    assert run(str(out), "--task", "outlines", "--classes", "3", "--train", "2", "--val", "1", "--test", "2").returncode == 0
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    folders = Counter(name.rsplit("/", 1)[0] for name in names)
    assert folders == {f"{split}/{shape}": n for shape in ("circle", "square", "triangle")
                       for split, n in (("train", 2), ("val", 1), ("test", 2))}
    # Same arguments, same archive; another seed, other images.
    again, other = tmp_path / "again.zip", tmp_path / "other.zip"
    run(str(again), "--task", "outlines", "--classes", "3", "--train", "2", "--val", "1", "--test", "2")
    run(str(other), "--task", "outlines", "--classes", "3", "--train", "2", "--val", "1", "--test", "2", "--seed", "1")
    assert again.read_bytes() == out.read_bytes() != other.read_bytes()


def test_more_classes_than_the_task_has_is_refused(tmp_path: Path) -> None:
    result = run(str(tmp_path / "x.zip"), "--task", "outlines", "--classes", "9")
    assert result.returncode == 2 and "has 8 classes" in result.stderr
    assert not (tmp_path / "x.zip").exists()

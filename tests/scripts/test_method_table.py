"""The README's method table is the registry's (scripts/method_table.py --check), and --check notices
a stale one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, "scripts/method_table.py"]


def test_readme_method_table_is_up_to_date():
    result = subprocess.run([*SCRIPT, "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_table_and_write_fixes_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- methods:begin -->\n| method | old |\n<!-- methods:end -->\nafter\n")
    stale = subprocess.run([*SCRIPT, "--check", "--readme", readme], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1 and "out of date" in stale.stderr
    subprocess.run([*SCRIPT, "--write", "--readme", readme], cwd=REPO, check=True, timeout=120)
    text = readme.read_text()
    assert "| `layernorm`" in text and "65,536" in text and text.endswith("<!-- methods:end -->\nafter\n")
    assert subprocess.run([*SCRIPT, "--check", "--readme", readme], cwd=REPO, timeout=120).returncode == 0

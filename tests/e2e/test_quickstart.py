"""The quick start in README.md works as written, against the embedded default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from core.settings import Settings
from tests.conftest import REPO, migrate
from tests.e2e.conftest import Processes


def _client_block() -> str:
    docs = (REPO / "README.md").read_text()
    section = docs[docs.index("### Quick start"):docs.index("### API")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if "make_example_dataset" in b]
    return block


def test_quick_start_runs_as_written(processes: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    migrate(Settings(data_dir=data).resolved_database_url)  # what `make serve` does before uvicorn
    # `make serve` serves on 127.0.0.1 without API keys.
    url = processes.api({"CLIPADAPT_DATA_DIR": str(data), "CLIPADAPT_TORCH_THREADS": "1", "CLIPADAPT_AUTH": "disabled"})

    work = tmp_path / "work"  # the commands write files into the current directory
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    (work / "scripts").symlink_to(REPO / "scripts")
    script = _client_block().replace("API=http://127.0.0.1:8000", f"API={url}", 1)
    assert f"API={url}" in script
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert result.stdout.count('"predictions"') == 2
    assert (work / "shapes-model.tar.gz").stat().st_size > 0

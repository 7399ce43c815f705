"""The load run (scripts/loadtest.py) in CI: 200 job creations and 200 zero-shot predictions from
24 concurrent clients against uvicorn on Postgres and Redis; no errors, no job lost or duplicated."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import text

from core.jobs.db import get_engine
from tests.conftest import REPO, TABLES


def test_load_run_loses_and_duplicates_nothing(postgres_url: str, redis_url: str) -> None:
    with get_engine(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    result = subprocess.run(
        [sys.executable, "scripts/loadtest.py", "--jobs", "200", "--predictions", "200", "--concurrency", "24",
         "--database-url", postgres_url, "--broker-url", redis_url],
        cwd=REPO, env=os.environ | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    print(result.stdout)  # the throughput and latency table, in the test log
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "200 jobs stored, 200 dispatched" in result.stdout
    table = {line.split()[1]: line.split()[2:4] for line in result.stdout.splitlines() if line.startswith("POST ")}
    assert table == {"/jobs": ["200", "0"], "/predict": ["200", "0"]}  # requests, errors

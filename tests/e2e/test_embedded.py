"""The embedded default (what `make serve` runs): SQLite, local storage, in-process runner."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from core.settings import Settings
from tests.conftest import migrate
from tests.e2e.conftest import Processes
from tests.e2e.flow import cancel_running_job, upload_train_predict


def test_embedded_flow_stays_responsive(processes: Processes, tmp_path: Path, example_zip: Path) -> None:
    # As `make serve` runs it: on 127.0.0.1 without API keys.
    env = {"CLIPADAPT_DATA_DIR": str(tmp_path / "data"), "CLIPADAPT_DEVICE": "cpu", "CLIPADAPT_TORCH_THREADS": "1",
           "CLIPADAPT_AUTH": "disabled"}
    migrate(Settings(data_dir=tmp_path / "data").resolved_database_url)
    url = processes.api(env)

    slowest = 0.0
    stop = threading.Event()

    def probe() -> None:  # the API answers while a job trains in the runner's child process
        nonlocal slowest
        while not stop.is_set():
            started = time.monotonic()
            httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert "embedded" in client.get("/readyz").json()["checks"]["broker"]
            result = upload_train_predict(client, example_zip)
            cancel_running_job(client, result["dataset"]["id"])
    finally:
        stop.set()
        prober.join()
    assert slowest < 2.0, f"/healthz took {slowest:.2f}s during training"

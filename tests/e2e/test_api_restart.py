"""Restarting the embedded API mid-training loses nothing: datasets and jobs are still there, and the
interrupted job resumes from its checkpoint in the new process and finishes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from core.settings import Settings
from tests.conftest import migrate
from tests.e2e.conftest import Processes
from tests.e2e.flow import wait_for_job

EPOCHS = 30


def test_api_restart_resumes_the_running_job(processes: Processes, tmp_path: Path, example_zip: Path) -> None:
    env = {"CLIPADAPT_DATA_DIR": str(tmp_path / "data"), "CLIPADAPT_DEVICE": "cpu", "CLIPADAPT_TORCH_THREADS": "1",
           "CLIPADAPT_AUTH": "disabled", "CLIPADAPT_CHECKPOINT_EVERY_S": "0"}
    migrate(Settings(data_dir=tmp_path / "data").resolved_database_url)
    url = processes.api(env)
    with httpx.Client(base_url=url, timeout=60) as client:
        dataset = client.post("/datasets", files={"file": ("digits.zip", example_zip.read_bytes())}).json()
        job = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                         "recipe": {"method": "layernorm", "epochs": EPOCHS, "batch_size": 4}}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/jobs/{job['id']}/metrics").json()["count"] < 3:
            assert time.monotonic() < deadline, client.get(f"/jobs/{job['id']}").json()
            time.sleep(0.1)

    api, _ = processes.running[-1]
    api.send_signal(signal.SIGTERM)  # a deploy or a reboot: the runner stops its child, which re-queues
    api.wait(60)

    url = processes.api(env)
    with httpx.Client(base_url=url, timeout=60) as client:
        assert [d["id"] for d in client.get("/datasets").json()["data"]] == [dataset["id"]]
        finished = wait_for_job(client, job["id"])
        assert finished["state"] == "succeeded", finished["error"]
        assert finished["attempts"] == 2
        epochs = [m["epoch"] for m in client.get(f"/jobs/{job['id']}/metrics").json()["data"]]
        assert epochs == list(range(1, EPOCHS + 1))
        messages = [e["message"] for e in client.get(f"/jobs/{job['id']}/events").json()["data"]]
        assert any(m.startswith("resuming stage 0 after epoch") for m in messages), messages

"""GET /metrics: Prometheus text with job metrics from the database and the API's own counters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.jobs.db import transaction
from core.jobs.models import JobMetric
from core.jobs.runner import run_job
from core.jobs.telemetry import render_metrics
from core.settings import Settings
from tests.conftest import REPO


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_cover_jobs_training_predictions_and_uploads(
    client: TestClient, dataset: dict, settings: Settings, example_zip: Path
) -> None:
    import zipfile

    before = scrape(TestClient(client.app).get("/metrics").text)  # no API key needed
    response = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny",
                                          "recipe": {"method": "layernorm", "epochs": 2, "batch_size": 8}})
    job_id = response.json()["id"]
    queued = scrape(client.get("/metrics").text)
    assert queued[("clipadapt_jobs", (("state", "queued"),))] == 1
    assert queued[("clipadapt_queue_depth", ())] == 1
    assert queued[("clipadapt_jobs_dispatch_pending", ())] == 0

    assert run_job(job_id, settings=settings) == "succeeded"
    epochs = client.get(f"/jobs/{job_id}/metrics").json()["data"]
    images_per_epoch = epochs[0]["images"]
    assert 0 < images_per_epoch <= sum(dataset["split_counts"]["train"].values())
    assert all(m["seconds"] > 0 and m["images"] == images_per_epoch for m in epochs), epochs
    with zipfile.ZipFile(example_zip) as zf:
        image = zf.read(next(n for n in zf.namelist() if n.endswith(".png")))
    predicted = client.post("/predict", data={"base_model": "clipadapt-tiny", "classnames": "a,b"},
                            files=[("images", ("x.png", image, "image/png"))])
    assert predicted.status_code == 200, predicted.text

    after = scrape(client.get("/metrics").text)
    assert after[("clipadapt_metrics_database_up", ())] == 1
    assert after[("clipadapt_jobs", (("state", "succeeded"),))] == 1
    assert after[("clipadapt_queue_depth", ())] == 0
    assert after[("clipadapt_job_duration_seconds_count", (("state", "succeeded"),))] == 1
    assert after[("clipadapt_job_duration_seconds_sum", (("state", "succeeded"),))] > 0
    assert after[("clipadapt_training_images_total", ())] == 2 * images_per_epoch
    assert after[("clipadapt_predict_seconds_count", (("kind", "zero-shot"),))] - before.get(
        ("clipadapt_predict_seconds_count", (("kind", "zero-shot"),)), 0) == 1
    uploaded = ("clipadapt_upload_bytes_total", ())
    assert after[uploaded] >= dataset["size_bytes"]


def test_running_jobs_report_their_last_epoch_throughput(client: TestClient, dataset: dict, settings: Settings) -> None:
    from core.jobs.repository import JobRepository

    job_id = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "clipadapt-tiny"}).json()["id"]
    with transaction(settings.resolved_database_url) as session:
        repo = JobRepository(session)
        job = repo.get(job_id)
        job.state = "running"
        for epoch, seconds in ((1, 4.0), (2, 2.0)):
            repo.add_metric(JobMetric(job_id=job_id, stage=0, stage_name="layernorm", epoch=epoch, epochs=5,
                                      train_loss=1.0, val={}, best=False, seconds=seconds, images=50))
    samples = scrape(client.get("/metrics").text)
    assert samples[("clipadapt_training_images_per_second", (("job_id", job_id),))] == 25.0


def test_an_unreachable_database_is_reported_not_raised() -> None:
    samples = scrape(render_metrics("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2").decode())
    assert samples[("clipadapt_metrics_database_up", ())] == 0
    assert not any(name == "clipadapt_jobs" for name, _ in samples)


def test_several_api_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """uvicorn --workers N with PROMETHEUS_MULTIPROC_DIR: any process's /metrics has everyone's counts."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    count = "from core.jobs.telemetry import UPLOAD_BYTES, observe_prediction; UPLOAD_BYTES.inc(5); observe_prediction('zero-shot', 2, 0.2)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, cwd=REPO)
    url = f"sqlite:///{tmp_path / 'empty.db'}"  # no tables: the job metrics are reported missing
    out = subprocess.run([sys.executable, "-c", f"from core.jobs.telemetry import render_metrics; print(render_metrics({url!r}).decode())"],
                         env=env, check=True, capture_output=True, text=True, cwd=REPO).stdout
    samples = scrape(out)
    assert samples[("clipadapt_upload_bytes_total", ())] == 10
    assert samples[("clipadapt_predict_images_total", (("kind", "zero-shot"),))] == 4

"""run_job against real training on the tiny model (a few seconds per job)."""

from __future__ import annotations

import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.jobs.db import transaction
from core.jobs.files import artifact_key
from core.jobs.models import Dataset, JobState
from core.jobs.repository import JobRepository
from core.jobs.runner import run_job
from core.jobs.storage import get_storage
from core.settings import Settings


def _job(settings: Settings, job_id: str):
    with transaction(settings.resolved_database_url) as session:
        repo = JobRepository(session)
        return repo.get(job_id), list(repo.metrics(job_id)), list(repo.events(job_id))


def test_successful_job_stores_artifact_and_metrics_before_succeeding(
    settings: Settings, add_job: Callable[..., str], tmp_path: Path
) -> None:
    job_id = add_job()
    assert run_job(job_id, settings=settings) == JobState.succeeded
    job, metrics, events = _job(settings, job_id)

    assert job.state == JobState.succeeded and job.error is None
    assert job.started_at <= job.finished_at
    assert job.resolved_recipe["method"] == "layernorm" and job.resolved_recipe["epochs"] == 2
    assert job.trainable_params > 0
    assert 0 <= job.val_metrics["accuracy"] <= 1 and "accuracy" in job.test_metrics
    assert (job.epoch, job.epochs) == (2, 2)
    assert [(m.epoch, m.epochs) for m in metrics] == [(1, 2), (2, 2)]
    assert all(m.train_loss > 0 and "accuracy" in m.val for m in metrics)
    assert [e.state for e in events if e.kind == "state"] == ["queued", "running", "succeeded"]

    assert job.artifact_key == artifact_key(job_id)
    archive = tmp_path / "artifact.tar.gz"
    get_storage(settings).get_file(job.artifact_key, archive)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {f"{job_id}/manifest.json", f"{job_id}/weights.safetensors"} <= names

    assert run_job(job_id, settings=settings) is None  # a redelivered task does not retrain


def test_auto_recipe_records_its_decision(settings: Settings, add_job: Callable[..., str]) -> None:
    job_id = add_job({"method": "auto", "epochs": 1, "batch_size": 8})
    assert run_job(job_id, settings=settings) == JobState.succeeded
    job, _, events = _job(settings, job_id)
    assert job.recipe["method"] == "auto"
    assert job.resolved_recipe["method"] != "auto"
    assert job.auto_decision
    assert any("auto" in e.message for e in events if e.kind == "message")


def _run_in_thread(job_id: str, settings: Settings, interrupt: threading.Event | None = None):
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("state", run_job(job_id, settings=settings, interrupt=interrupt))
    )
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job, metrics, _ = _job(settings, job_id)
        if metrics:  # training is under way
            return thread, result
        assert job.state in (JobState.queued, JobState.running), job.error
        time.sleep(0.1)
    raise AssertionError("training did not start")


def test_cancel_stops_a_running_job(settings: Settings, add_job: Callable[..., str]) -> None:
    job_id = add_job({"method": "layernorm", "epochs": 500, "batch_size": 4})
    thread, result = _run_in_thread(job_id, settings)
    with transaction(settings.resolved_database_url) as session:
        repo = JobRepository(session)
        repo.request_cancel(repo.get(job_id))
    thread.join(60)
    assert not thread.is_alive()
    job, metrics, _ = _job(settings, job_id)
    assert result["state"] == JobState.cancelled and job.state == JobState.cancelled
    assert job.artifact_key is None and len(metrics) < 500


def test_shutdown_interrupt_requeues_the_job(settings: Settings, add_job: Callable[..., str]) -> None:
    job_id = add_job({"method": "layernorm", "epochs": 500, "batch_size": 4})
    interrupt = threading.Event()
    thread, result = _run_in_thread(job_id, settings, interrupt)
    interrupt.set()
    thread.join(60)
    job, _, events = _job(settings, job_id)
    assert result["state"] == JobState.queued and job.state == JobState.queued
    assert job.finished_at is None and "re-queued" in events[-1].message


def test_missing_archive_fails_with_structured_error(
    settings: Settings, dataset_id: str, add_job: Callable[..., str]
) -> None:
    job_id = add_job()
    with transaction(settings.resolved_database_url) as session:
        key = session.get(Dataset, dataset_id).archive_key
    get_storage(settings).delete(key)
    assert run_job(job_id, settings=settings) == JobState.failed
    job, _, events = _job(settings, job_id)
    assert job.error["code"] == "storage_error" and key in job.error["message"]
    assert events[-1].state == "failed"


@pytest.mark.parametrize(
    ("spec", "code"),
    [({"name": "/nonexistent/model.json", "pretrained": None, "quick_gelu": None}, "model_load_failed")],
)
def test_unloadable_base_model_fails(
    settings: Settings, add_job: Callable[..., str], spec: dict, code: str
) -> None:
    job_id = add_job(base_model_spec=spec)
    assert run_job(job_id, settings=settings) == JobState.failed
    job, _, _ = _job(settings, job_id)
    assert job.error["code"] == code and job.finished_at is not None

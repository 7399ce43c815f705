"""run_job: train one job end to end. The Celery task and the embedded runner both call it.

The job row is the source of truth. run_job claims the row (queued -> running), writes progress and
per-epoch metrics as training goes, stores the artifact, and only then marks the job succeeded.
Failures become a structured ``error`` on the row; run_job itself does not raise for job errors.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.jobs.db import transaction
from core.jobs.files import artifact_key, local_dataset, pack_artifact
from core.jobs.models import JobMetric, JobState
from core.jobs.repository import JobRepository
from core.jobs.storage import StorageError, get_storage
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A running job whose heartbeat is older than this was abandoned (its worker died) and may be
# claimed again when the broker redelivers the task.
STALE_AFTER = timedelta(minutes=10)
HEARTBEAT_EVERY_S = 2.0


class JobFailure(Exception):
    """A failure with a stable code for the job's ``error`` field."""

    def __init__(self, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail


class JobCallbacks:
    """core.adapt TrainCallbacks that write progress, metrics and events to the job row."""

    def __init__(self, db_url: str, job_id: str, interrupt: threading.Event | None = None) -> None:
        self.db_url = db_url
        self.job_id = job_id
        self.interrupt = interrupt or threading.Event()
        self.cancel_requested = False
        self._next_check = 0.0

    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        with transaction(self.db_url) as session:
            repo = JobRepository(session)
            job = repo.get(self.job_id)
            assert job is not None
            job.stage, job.stage_name, job.epoch, job.epochs = stage, name, 0, epochs
            repo.add_event(self.job_id, f"stage {stage} ({name}) started: {epochs} epochs")

    def on_epoch_end(self, report: Any) -> None:
        with transaction(self.db_url) as session:
            repo = JobRepository(session)
            job = repo.get(self.job_id)
            assert job is not None
            repo.add_metric(
                JobMetric(
                    job_id=self.job_id,
                    stage=report.stage,
                    stage_name=report.stage_name,
                    epoch=report.epoch,
                    epochs=report.epochs,
                    train_loss=float(report.train_loss),
                    val=_jsonable(report.val),
                    best=bool(report.best),
                )
            )
            job.stage, job.stage_name = report.stage, report.stage_name
            job.epoch, job.epochs = report.epoch, report.epochs
            if report.best:
                job.val_metrics = _jsonable(report.val)

    def on_message(self, message: str) -> None:
        with transaction(self.db_url) as session:
            repo = JobRepository(session)
            repo.add_event(self.job_id, message)
            repo.heartbeat(self.job_id)  # messages mark slow steps (downloads, auto's probe)

    def on_checkpoint(self, make: Any) -> None:
        pass

    def should_stop(self) -> bool:
        if self.interrupt.is_set() or self.cancel_requested:
            return True
        now = time.monotonic()
        if now >= self._next_check:  # called every step: touch the database at most every 2 s
            self._next_check = now + HEARTBEAT_EVERY_S
            with transaction(self.db_url) as session:
                self.cancel_requested = JobRepository(session).heartbeat(self.job_id) is not None
        return self.cancel_requested


def _jsonable(value: Any) -> Any:
    """Metrics may hold numpy/torch scalars; the JSON column needs plain Python values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def run_job(
    job_id: str, *, settings: Settings | None = None, interrupt: threading.Event | None = None
) -> JobState | None:
    """Train job ``job_id`` if it can be claimed; returns its final state (None if not claimed).

    ``interrupt`` (set on process shutdown) stops training and puts the job back in the queue.
    """
    settings = settings or get_settings()
    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        if not JobRepository(session).claim(job_id, stale_after=STALE_AFTER):
            job = JobRepository(session).get(job_id)
            log.info("job %s not claimed (state: %s)", job_id, job.state if job else "missing")
            return None
        job = JobRepository(session).get(job_id)
        assert job is not None
        spec, recipe, dataset_id = job.base_model_spec, job.recipe, job.dataset_id
        archive = job.dataset.archive_key if job.dataset else None
    log.info("job %s started", job_id)

    callbacks = JobCallbacks(db_url, job_id, interrupt)
    try:
        outcome = _train_and_store(settings, job_id, spec, recipe, dataset_id, archive, callbacks)
    except JobFailure as failure:
        return _finish_failed(db_url, job_id, failure)
    except Exception as exc:  # noqa: BLE001 - every failure must end up on the job row
        return _finish_failed(db_url, job_id, _classify(exc))

    if outcome is None:  # stopped: by a user's cancel, or by shutdown (re-queued)
        with transaction(db_url) as session:
            repo = JobRepository(session)
            job = repo.get(job_id)
            assert job is not None
            if callbacks.cancel_requested or job.cancel_requested_at is not None:
                repo.set_state(job, JobState.cancelled, "job cancelled")
            else:
                job.started_at = job.heartbeat_at = None
                job.stage = job.stage_name = job.epoch = None
                repo.set_state(job, JobState.queued, "interrupted by worker shutdown; re-queued")
            return job.state
    return JobState.succeeded


def _train_and_store(
    settings: Settings,
    job_id: str,
    spec: dict[str, Any],
    recipe_data: dict[str, Any],
    dataset_id: str | None,
    archive: str | None,
    callbacks: JobCallbacks,
) -> JobState | None:
    import torch
    from pydantic import ValidationError

    from core.adapt.artifact import save_artifact
    from core.adapt.data import load_dataset
    from core.adapt.models import ModelSpec, load_base_model
    from core.adapt.recipe import parse_recipe
    from core.adapt.trainer import TrainingCancelled, train

    db_url = settings.resolved_database_url
    storage = get_storage(settings)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)

    if dataset_id is None or archive is None:
        raise JobFailure("dataset_missing", "the job's dataset was deleted")
    try:
        recipe = parse_recipe(recipe_data)
    except ValidationError as e:
        raise JobFailure("recipe_invalid", "the stored recipe is no longer valid", e.errors()) from e

    callbacks.on_message(f"loading dataset {dataset_id}")
    folder = local_dataset(storage, archive, settings.cache_dir, dataset_id)
    # Images were verified when the dataset was uploaded.
    dataset = load_dataset(folder, verify_images=False)

    callbacks.on_message(f"loading base model {spec['name']} on {device}")
    try:
        base = load_base_model(ModelSpec(**spec), device=device)
    except Exception as e:  # noqa: BLE001 - unknown arch, missing weights file, no network...
        raise JobFailure("model_load_failed", f"cannot load base model: {e}") from e

    try:
        result = train(base, dataset, recipe, callbacks=callbacks, device=device)
    except TrainingCancelled:
        return None

    with tempfile.TemporaryDirectory(prefix=f"clipadapt-{job_id}-") as tmp:
        out = save_artifact(result, Path(tmp) / "artifact")
        packed = pack_artifact(out, Path(tmp) / "artifact.tar.gz", arcname=job_id)
        key = artifact_key(job_id)
        storage.put_file(key, packed)

    with transaction(db_url) as session:
        repo = JobRepository(session)
        job = repo.get(job_id)
        assert job is not None
        job.resolved_recipe = result.recipe.model_dump(mode="json")
        job.auto_decision = _jsonable(result.auto_decision) if result.auto_decision else None
        job.trainable_params = int(result.trainable_params)
        job.val_metrics = _jsonable(result.val_metrics)
        job.test_metrics = _jsonable(result.test_metrics) if result.test_metrics else None
        job.artifact_key = key
        repo.set_state(job, JobState.succeeded, "job succeeded")
    log.info("job %s succeeded", job_id)
    return JobState.succeeded


def _classify(exc: Exception) -> JobFailure:
    from core.adapt.artifact import ArtifactError
    from core.adapt.data import DatasetError

    tail = traceback.format_exception(exc)[-3:]
    if isinstance(exc, DatasetError):
        return JobFailure("dataset_invalid", str(exc))
    if isinstance(exc, StorageError):
        return JobFailure("storage_error", str(exc))
    if isinstance(exc, ArtifactError):
        return JobFailure("artifact_error", str(exc))
    if "out of memory" in str(exc).lower():
        return JobFailure("out_of_memory", str(exc), {"traceback": tail})
    if isinstance(exc, ValueError):  # core.adapt reports unusable recipe/data combinations so
        return JobFailure("invalid_request", str(exc), {"traceback": tail})
    return JobFailure("internal_error", f"{type(exc).__name__}: {exc}", {"traceback": tail})


def _finish_failed(db_url: str, job_id: str, failure: JobFailure) -> JobState:
    log.error("job %s failed: %s: %s", job_id, failure.code, failure.message)
    error = {"code": failure.code, "message": failure.message, "detail": failure.detail}
    with transaction(db_url) as session:
        repo = JobRepository(session)
        job = repo.get(job_id)
        assert job is not None
        repo.set_state(job, JobState.failed, f"job failed: {failure.message}", error=error)
    return JobState.failed

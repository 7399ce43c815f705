"""run_job: train one job end to end. The Celery task and the embedded runner both call it.

The job row is the source of truth. run_job claims the row (queued -> running) under a lease that a
heartbeat thread renews, writes progress and per-epoch metrics as training goes, saves a resumable
checkpoint to storage every ``checkpoint_every_s``, stores the artifact, and only then marks the job
succeeded. A job whose worker died (its lease expired) is re-queued by the recovery loop
(``core.jobs.recovery``) and the next attempt resumes from the last checkpoint. A worker that lost its
lease stops and writes nothing more. Failures become a structured ``error`` on the row; run_job
itself does not raise for job errors.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import socket
import tempfile
import threading
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from core.jobs.db import retry_transaction, transaction
from core.jobs.files import archive_limits, artifact_key, checkpoint_key, local_dataset, pack_artifact, stage_cache_key
from core.jobs.models import Job, JobMetric, JobState
from core.jobs.repository import JobRepository
from core.jobs.storage import Storage, StorageError, get_storage
from core.logs import job_context
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Heartbeats renew the lease and pick up cancellation requests: at least every 2 s, and at least
# four times per lease.
HEARTBEAT_EVERY_S = 2.0


class JobFailure(Exception):
    """A failure with a stable code for the job's ``error`` field."""

    def __init__(self, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.detail = code, message, detail


def worker_name() -> str:
    """Identifies one run_job call in lease_owner (and in the job's events)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LeaseKeeper:
    """Renews the job's lease from a background thread, so slow steps that never reach
    ``should_stop`` (downloads, evaluation, feature caching) keep the lease too. It stops renewing
    when the process dies, and the lease then expires."""

    def __init__(self, db_url: str, job_id: str, worker: str, lease: timedelta) -> None:
        self.db_url, self.job_id, self.worker, self.lease = db_url, job_id, worker, lease
        self.every = min(HEARTBEAT_EVERY_S, lease.total_seconds() / 4)
        self.lost = threading.Event()
        self.cancel_requested = threading.Event()
        self._stop = threading.Event()
        # The thread runs in a copy of this context, so its log records carry the job id too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._loop,), name=f"lease-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.renew()
            if self.lost.is_set():
                return

    def renew(self) -> None:
        try:
            with transaction(self.db_url) as session:
                held, cancel = JobRepository(session).renew_lease(self.job_id, worker=self.worker, lease=self.lease)
        except SQLAlchemyError as e:  # the database is away: retry next beat; the lease may run out
            log.warning("job %s: lease renewal failed: %s", self.job_id, e)
            return
        if not held:
            log.error("job %s: lease lost (it was re-queued or claimed elsewhere); stopping", self.job_id)
            self.lost.set()
        if cancel is not None:
            self.cancel_requested.set()


# Asked after every epoch of a run's last stage with (that stage's best `ranking_score` so far, its
# epochs so far): a reason to stop the job early (it then ends ``pruned``: stopped on purpose, its
# metrics kept), or None. Sweeps give their trials one (successive halving, core.jobs.sweeps); other
# jobs have none.
EarlyStopRule = Callable[[float, int], "str | None"]


def ranking_score(val: dict[str, Any]) -> float:
    """Validation accuracy, ties broken by validation loss: on a few dozen images many trials tie on
    accuracy, and a pruner promotes every trial tied at the top of a rung. The loss moves the score by
    less than half of one image's worth of accuracy, so it never reorders different accuracies."""
    accuracy = float(val["accuracy"])
    loss, count = val.get("loss"), val.get("count")
    if loss is None or not count or not math.isfinite(loss):
        return accuracy
    return accuracy - (loss / (1 + loss)) / (2 * count)


class EarlyStopTracker:
    """Feeds an EarlyStopRule. Only the last stage is judged, on its own epochs: it is the stage whose
    best epoch the job keeps, and an earlier LayerNorm-init stage only prepares it (a recipe that
    learns late after it would otherwise be cut while still initializing, and trials whose init
    stage was reused would be judged on epochs they never trained)."""

    def __init__(self, rule: EarlyStopRule | None) -> None:
        self.rule = rule
        self.best: dict[int, float] = {}  # best ranking_score per stage
        self.stop_reason: str | None = None

    def record(self, stage: int, val: dict[str, Any] | None) -> None:
        if val and "accuracy" in val:
            self.best[stage] = max(ranking_score(val), self.best.get(stage, float("-inf")))

    def epoch_end(self, report: Any) -> None:
        self.record(report.stage, report.val)
        if self.rule is not None and self.stop_reason is None and report.final_stage and report.stage in self.best:
            self.stop_reason = self.rule(self.best[report.stage], report.epoch)


class JobCallbacks:
    """core.adapt TrainCallbacks that write progress, metrics, events and checkpoints."""

    def __init__(
        self,
        db_url: str,
        job_id: str,
        interrupt: threading.Event | None = None,
        lease: LeaseKeeper | None = None,
        *,
        storage: Storage | None = None,
        checkpoint_every_s: float = 0.0,
        scratch: Path | None = None,
        db_retry_s: float = 0.0,
        early_stop: EarlyStopRule | None = None,
    ) -> None:
        self.db_url = db_url
        self.job_id = job_id
        self.interrupt = interrupt or threading.Event()
        self.lease = lease
        self.storage = storage
        self.checkpoint_every_s = checkpoint_every_s
        self.scratch = scratch
        # A database restart shorter than this does not stop training: writes wait for it.
        self.db_retry_s = db_retry_s
        self.train_images: int | None = None  # per epoch, once the run knows its training split
        self.early_stop = EarlyStopTracker(early_stop)  # its stop_reason is set when the rule asks to stop
        self._last_checkpoint = time.monotonic()
        self._epoch_started = time.monotonic()

    @property
    def cancel_requested(self) -> bool:
        return self.lease is not None and self.lease.cancel_requested.is_set()

    @property
    def lease_lost(self) -> bool:
        return self.lease is not None and self.lease.lost.is_set()

    def _write(self, work: Any, what: str) -> None:
        retry_transaction(self.db_url, work, within=self.db_retry_s, what=f"job {self.job_id}: {what}")

    def on_stage_start(self, stage: int, name: str, epochs: int) -> None:
        def work(session: Any) -> None:
            repo = JobRepository(session)
            job = repo.get(self.job_id)
            assert job is not None
            job.stage, job.stage_name, job.epoch, job.epochs = stage, name, 0, epochs
            repo.add_event(self.job_id, f"stage {stage} ({name}) started: {epochs} epochs")

        self._write(work, "stage start")
        self._epoch_started = time.monotonic()

    def on_epoch_end(self, report: Any) -> None:
        if self.lease_lost:
            return
        now = time.monotonic()
        seconds, self._epoch_started = now - self._epoch_started, now

        def work(session: Any) -> None:
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
                    seconds=seconds,
                    images=self.train_images,
                )
            )
            job.stage, job.stage_name = report.stage, report.stage_name
            job.epoch, job.epochs = report.epoch, report.epochs
            if report.best:
                job.val_metrics = _jsonable(report.val)
            if report.final_stage and report.trainable_params is not None:
                job.trainable_params = report.trainable_params  # also for a trial stopped early

        self._write(work, f"metrics of epoch {report.epoch}")
        self.early_stop.epoch_end(report)

    def on_message(self, message: str) -> None:
        self._write(lambda session: JobRepository(session).add_event(self.job_id, message), "event")

    def on_checkpoint(self, make: Any) -> None:
        """Save ``make()`` to storage (atomically replacing the last one), at most every
        ``checkpoint_every_s``. A failed save is reported and training goes on."""
        if self.storage is None or self.lease_lost:
            return
        now = time.monotonic()
        if now - self._last_checkpoint < self.checkpoint_every_s:
            return
        checkpoint = make()
        try:
            with tempfile.TemporaryDirectory(prefix=f"clipadapt-ckpt-{self.job_id}-", dir=self.scratch) as tmp:
                path = Path(tmp) / "checkpoint.pt"
                checkpoint.save(path)
                self.storage.put_file(checkpoint_key(self.job_id), path)
        except (StorageError, OSError) as e:
            log.warning("job %s: checkpoint not saved: %s", self.job_id, e)
            self.on_message(f"checkpoint after epoch {checkpoint.epoch} not saved: {e}")
            return
        self._last_checkpoint = now
        log.info("job %s: checkpoint saved (stage %d, epoch %d)", self.job_id, checkpoint.stage, checkpoint.epoch)

    def should_stop(self) -> bool:
        # Only flags: the lease thread talks to the database.
        return self.interrupt.is_set() or self.cancel_requested or self.lease_lost or self.early_stop.stop_reason is not None


def _jsonable(value: Any) -> Any:
    """Metrics may hold numpy/torch scalars; the JSON column needs plain Python values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _held_job(repo: JobRepository, job_id: str, worker: str, otherwise: str) -> Job | None:
    """The job row, locked, if this worker still holds its lease; else None (logging `otherwise`)."""
    job = repo.get(job_id, for_update=True)
    assert job is not None
    if job.lease_owner != worker or job.state != JobState.running:
        log.warning("job %s: %s", job_id, otherwise)
        return None
    return job


def run_job(
    job_id: str, *, settings: Settings | None = None, interrupt: threading.Event | None = None
) -> JobState | None:
    """Train job ``job_id`` if it can be claimed; returns its final state (None if not claimed, or
    if this worker lost the job to another one).

    ``interrupt`` (set on process shutdown) stops training and puts the job back in the queue; its
    checkpoint is kept, so the next attempt resumes. Log records carry the job id.
    """
    with job_context(job_id):
        state = _run_job(job_id, settings, interrupt)
        if state is not None and state != JobState.queued:
            _after_sweep_trial(settings or get_settings(), job_id)
        return state


def _after_sweep_trial(settings: Settings, job_id: str) -> None:
    """If the job is a sweep trial: record its outcome with the sweep's pruner and move the sweep
    on (finishing it after its last trial). Failures here are the recovery loop's to retry; the
    job's own result is already stored."""
    try:
        with transaction(settings.resolved_database_url) as session:
            job = JobRepository(session).get(job_id)
            sweep_id = job.sweep_id if job else None
        if sweep_id is None:
            return
        from core.jobs.sweeps import trial_ended

        trial_ended(settings, job_id)
    except Exception:  # noqa: BLE001 - the recovery loop finishes what this could not
        log.exception("job %s: its sweep was not updated; the recovery loop will", job_id)


def _run_job(job_id: str, settings: Settings | None, interrupt: threading.Event | None) -> JobState | None:
    settings = settings or get_settings()
    db_url = settings.resolved_database_url
    worker = worker_name()
    lease = timedelta(seconds=settings.job_lease_s)
    with transaction(db_url) as session:
        repo = JobRepository(session)
        if not repo.claim(job_id, worker=worker, lease=lease, max_attempts=settings.job_max_attempts):
            job = repo.get(job_id)
            log.info("job %s not claimed (state: %s)", job_id, job.state if job else "missing")
            return None
        job = repo.get(job_id)
        assert job is not None
        spec, recipe, dataset_id = job.base_model_spec, job.recipe, job.dataset_id
        archive = job.dataset.archive_key if job.dataset else None
        attempt = job.attempts
        sweep_id, sweep_trial = job.sweep_id, job.sweep_trial
    log.info("job %s started (attempt %d) by %s", job_id, attempt, worker)

    storage = get_storage(settings)
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    early_stop = None
    if sweep_id is not None and sweep_trial is not None:
        from core.jobs.sweeps import trial_stop_rule

        early_stop = trial_stop_rule(settings, sweep_id, sweep_trial)
    with LeaseKeeper(db_url, job_id, worker, lease) as keeper:
        callbacks = JobCallbacks(
            db_url, job_id, interrupt, keeper,
            storage=storage, checkpoint_every_s=settings.checkpoint_every_s, scratch=scratch,
            db_retry_s=settings.job_lease_s, early_stop=early_stop,
        )
        try:
            # A sweep scores the test split of the trial it selects only (no test-set peeking).
            outcome = _train_and_store(
                settings, job_id, spec, recipe, dataset_id, archive, callbacks, worker, score_test=sweep_id is None,
                stage_cache=StorageStageCache(storage, sweep_id, scratch) if sweep_id is not None else None,
            )
        except JobFailure as failure:
            return _finish_failed(db_url, storage, job_id, worker, failure, within=settings.job_lease_s)
        except OperationalError:
            # The database went away: nothing can be recorded, and the job is not at fault. Its
            # lease runs out and the recovery loop re-queues it; the next attempt resumes from the checkpoint.
            log.exception("job %s: database unreachable; leaving the job to the recovery loop", job_id)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must end up on the job row
            return _finish_failed(db_url, storage, job_id, worker, _classify(exc), within=settings.job_lease_s)
    if outcome is not None:
        return outcome

    # Stopped: by a user's cancel, by shutdown (re-queued), or because the lease was lost.
    with transaction(db_url) as session:
        repo = JobRepository(session)
        job = _held_job(repo, job_id, worker, "this worker no longer holds it; leaving it alone")
        if job is None:
            return None
        if job.cancel_requested_at is not None:
            repo.set_state(job, JobState.cancelled, "job cancelled")
        elif callbacks.early_stop.stop_reason is not None:
            repo.set_state(job, JobState.pruned, f"job stopped early: {callbacks.early_stop.stop_reason}")
        else:
            repo.requeue(job, "interrupted by worker shutdown; re-queued")
        state = job.state
    if state in (JobState.cancelled, JobState.pruned):
        _delete_checkpoint(storage, job_id)
    return state


def _train_and_store(
    settings: Settings,
    job_id: str,
    spec: dict[str, Any],
    recipe_data: dict[str, Any],
    dataset_id: str | None,
    archive: str | None,
    callbacks: JobCallbacks,
    worker: str,
    *,
    score_test: bool = True,
    stage_cache: Any = None,
) -> JobState | None:
    from pydantic import ValidationError

    from core.adapt.artifact import save_artifact
    from core.adapt.data import load_dataset, make_splits
    from core.adapt.models import ModelSpec, load_base_model
    from core.adapt.recipe import parse_recipe
    from core.adapt.runtime import configure_torch, resolve_device
    from core.adapt.trainer import TrainingCancelled, train

    db_url = settings.resolved_database_url
    storage = get_storage(settings)
    configure_torch(settings.torch_threads)
    device = str(resolve_device(settings.device))

    if dataset_id is None or archive is None:
        raise JobFailure("dataset_missing", "the job's dataset was deleted")
    try:
        recipe = parse_recipe(recipe_data)
    except ValidationError as e:
        raise JobFailure("recipe_invalid", "the stored recipe is no longer valid", e.errors()) from e

    callbacks.on_message(f"loading dataset {dataset_id}")
    folder = local_dataset(storage, archive, settings.cache_dir, dataset_id, limits=archive_limits(settings))
    # Images were verified when the dataset was uploaded.
    dataset = load_dataset(folder, verify_images=False)

    callbacks.on_message(f"loading base model {spec['name']} on {device}")
    try:
        base = load_base_model(ModelSpec(**spec), device=device)
    except Exception as e:  # noqa: BLE001 - unknown arch, missing weights file, no network...
        raise JobFailure("model_load_failed", f"cannot load base model: {e}") from e

    callbacks.train_images = len(make_splits(dataset, recipe.shots, recipe.seed, recipe.val_per_class).train)
    resume = _load_checkpoint(storage, job_id, callbacks.scratch)
    with transaction(db_url) as session:
        # Epochs after the checkpoint (all of them without one) are trained again: forget their metrics.
        repo = JobRepository(session)
        repo.drop_metrics_after(job_id, *((resume.stage, resume.epoch) if resume else (0, 0)))
        for metric in repo.metrics(job_id):
            callbacks.early_stop.record(metric.stage, metric.val)
    try:
        result = train(base, dataset, recipe, callbacks=callbacks, device=device, resume=resume, score_test=score_test,
                       loader_workers=settings.loader_workers, stage_cache=stage_cache)
    except TrainingCancelled:
        return None

    with tempfile.TemporaryDirectory(prefix=f"clipadapt-{job_id}-", dir=callbacks.scratch) as tmp:
        out = save_artifact(result, Path(tmp) / "artifact")
        packed = pack_artifact(out, Path(tmp) / "artifact.tar.gz", arcname=job_id)
        key = artifact_key(job_id)
        _store_artifact(storage, key, packed, callbacks, within=settings.storage_retry_s)

    def succeed(session: Any) -> bool:
        repo = JobRepository(session)
        job = _held_job(repo, job_id, worker, "finished training but no longer holds the job; result discarded")
        if job is None:
            return False
        job.resolved_recipe = result.recipe.model_dump(mode="json")
        job.auto_decision = _jsonable(result.auto_decision) if result.auto_decision else None
        job.trainable_params = int(result.trainable_params)
        job.val_metrics = _jsonable(result.val_metrics)
        job.test_metrics = _jsonable(result.test_metrics) if result.test_metrics else None
        job.artifact_key = key
        repo.set_state(job, JobState.succeeded, "job succeeded")
        return True

    if not retry_transaction(db_url, succeed, within=settings.job_lease_s, what=f"job {job_id}: success"):
        return None
    _delete_checkpoint(storage, job_id)
    log.info("job %s succeeded", job_id)
    return JobState.succeeded


def _store_artifact(storage: Storage, key: str, packed: Path, callbacks: JobCallbacks, *, within: float) -> None:
    """Upload the artifact, retrying with backoff while storage is unreachable (up to ``within``
    seconds), and check that it is there: a job is marked succeeded only once its artifact is
    stored. The lease thread keeps the job meanwhile; a lost lease stops the retries."""
    deadline = time.monotonic() + within
    delay = 1.0
    while True:
        try:
            storage.put_file(key, packed)
            if not storage.exists(key):
                raise StorageError(f"{key} is missing right after its upload")
            return
        except StorageError as e:
            if callbacks.lease_lost or time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: storing the artifact failed (%s); retrying in %.0fs", callbacks.job_id, e, delay)
            callbacks.on_message(f"storing the artifact failed, retrying in {delay:.0f}s: {e}")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class StorageStageCache:
    """The StageCache (core.adapt.trainer) of one sweep's trials, in object storage: one dataset and
    base model per sweep, so trials on any worker share their LayerNorm-init stages. A stage that
    cannot be read or written is trained (again) rather than failing the trial."""

    def __init__(self, storage: Storage, sweep_id: str, scratch: Path | None) -> None:
        self.storage, self.sweep_id, self.scratch = storage, sweep_id, scratch

    def get(self, key: str) -> Any:
        from core.adapt.trainer import StageOutcome

        stored = stage_cache_key(self.sweep_id, key)
        try:
            if not self.storage.exists(stored):
                return None
            with tempfile.TemporaryDirectory(prefix="clipadapt-stage-", dir=self.scratch) as tmp:
                self.storage.get_file(stored, Path(tmp) / "stage.pt")
                return StageOutcome.load(Path(tmp) / "stage.pt")
        except Exception as e:  # noqa: BLE001 - storage errors, truncated or foreign files
            log.warning("sweep %s: ignoring unreadable stage %s: %s", self.sweep_id, stored, e)
            return None

    def put(self, key: str, outcome: Any) -> None:
        stored = stage_cache_key(self.sweep_id, key)
        try:
            with tempfile.TemporaryDirectory(prefix="clipadapt-stage-", dir=self.scratch) as tmp:
                outcome.save(Path(tmp) / "stage.pt")
                self.storage.put_file(stored, Path(tmp) / "stage.pt")
        except (StorageError, OSError) as e:
            log.warning("sweep %s: stage %s not kept: %s", self.sweep_id, stored, e)


def _load_checkpoint(storage: Storage, job_id: str, scratch: Path | None) -> Any:
    """The job's last checkpoint, or None. An unreadable one is reported and ignored (the job
    trains from the start rather than failing)."""
    from core.adapt.trainer import Checkpoint

    key = checkpoint_key(job_id)
    try:
        if not storage.exists(key):
            return None
        with tempfile.TemporaryDirectory(prefix=f"clipadapt-ckpt-{job_id}-", dir=scratch) as tmp:
            path = Path(tmp) / "checkpoint.pt"
            storage.get_file(key, path)
            return Checkpoint.load(path)
    except Exception as e:  # noqa: BLE001 - storage errors, truncated or foreign files
        log.warning("job %s: ignoring unreadable checkpoint %s: %s", job_id, key, e)
        return None


def _delete_checkpoint(storage: Storage, job_id: str) -> None:
    try:
        storage.delete(checkpoint_key(job_id))
    except StorageError as e:  # an orphaned object, not a wrong result
        log.warning("job %s: checkpoint not deleted: %s", job_id, e)


def _classify(exc: BaseException) -> JobFailure:
    from core.adapt.artifact import ArtifactError
    from core.adapt.data import DatasetError
    from core.adapt.trainer import TrainingDiverged

    tail = traceback.format_exception(exc)[-3:]
    if isinstance(exc, DatasetError):
        return JobFailure("dataset_invalid", str(exc))
    if isinstance(exc, StorageError):
        return JobFailure("storage_error", str(exc))
    if isinstance(exc, ArtifactError):
        return JobFailure("artifact_error", str(exc))
    if isinstance(exc, TrainingDiverged):
        return JobFailure("diverged", f"training diverged: {exc}")
    # torch.cuda.OutOfMemoryError and MPS/CPU allocator failures all say "out of memory".
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return JobFailure(
            "out_of_memory",
            f"out of memory: {exc or type(exc).__name__}; try a smaller batch_size or model",
            {"traceback": tail},
        )
    if isinstance(exc, ValueError):  # core.adapt reports unusable recipe/data combinations so
        return JobFailure("invalid_request", str(exc), {"traceback": tail})
    return JobFailure("internal_error", f"{type(exc).__name__}: {exc}", {"traceback": tail})


def _finish_failed(
    db_url: str, storage: Storage, job_id: str, worker: str, failure: JobFailure, *, within: float = 0.0
) -> JobState | None:
    log.error("job %s failed: %s: %s", job_id, failure.code, failure.message)
    error = {"code": failure.code, "message": failure.message, "detail": failure.detail}

    def fail(session: Any) -> bool:
        repo = JobRepository(session)
        job = _held_job(repo, job_id, worker, "failed after losing the job to another worker; not recorded")
        if job is None:
            return False
        repo.set_state(job, JobState.failed, f"job failed: {failure.message}", error=error)
        return True

    if not retry_transaction(db_url, fail, within=within, what=f"job {job_id}: failure"):
        return None
    _delete_checkpoint(storage, job_id)
    return JobState.failed

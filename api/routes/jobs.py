from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import FileResponse

from api.deps import CatalogDep, DispatcherDep, OwnerDep, PredictionDep, SessionDep, SettingsDep, StorageDep
from api.errors import ERROR_RESPONSES, APIError, field_error, not_found
from api.schemas import (
    MAX_OFFSET,
    JobCreate,
    JobEventPublic,
    JobEventsPublic,
    JobMetricPublic,
    JobMetricsPublic,
    JobPublic,
    JobsPublic,
)
from core.adapt.methods.base import ScheduleError
from core.jobs.dispatch import DispatchError
from core.jobs.estimate import check_schedule
from core.jobs.files import tar_to_zip
from core.jobs.models import Job, JobState
from core.jobs.repository import DatasetRepository, JobRepository
from core.jobs.storage import StorageError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def _get_job(repo: JobRepository, job_id: str, owner: str, *, for_update: bool = False) -> Job:
    """The owner's job; another owner's job is as unknown as a missing one (404)."""
    job = repo.get(job_id, owner=owner, for_update=for_update)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post("", status_code=201, response_model=JobPublic)
def create_job(
    session: SessionDep, catalog: CatalogDep, dispatcher: DispatcherDep, owner: OwnerDep, body: JobCreate
) -> JobPublic:
    """Create a training job; it starts queued."""
    entry = catalog.get(body.base_model)
    if entry is None:
        raise field_error(
            "base_model", f"unknown base model; choose one of: {', '.join(catalog)}", body.base_model
        )
    dataset = DatasetRepository(session).get(body.dataset_id, owner=owner, for_update=True)
    if dataset is None:
        raise field_error("dataset_id", "no dataset with this id", body.dataset_id)
    try:
        check_schedule(body.recipe, dataset.split_counts)
    except ScheduleError as e:  # it could only fail once it ran: refuse it now
        raise field_error("recipe", str(e), body.recipe.model_dump(mode="json")) from e
    repo = JobRepository(session)
    job = repo.add(
        Job(
            owner=owner,
            name=body.name,
            meta=body.metadata,
            state=JobState.queued,
            dataset_id=dataset.id,
            base_model=entry.name,
            base_model_spec=entry.spec(),
            recipe=body.recipe.model_dump(mode="json"),
            dispatch_pending=True,
        )
    )
    # The outbox: the job is stored, marked as not yet dispatched, before the broker is asked. If
    # the broker is down (or this process stops now), the recovery loop dispatches it later.
    session.commit()
    try:
        dispatcher.submit(job.id)
    except DispatchError as e:
        log.warning("job %s stored; dispatch deferred to the recovery loop: %s", job.id, e)
        repo.add_event(job.id, f"not dispatched yet ({e}); it will be once the broker is reachable")
    else:
        repo.mark_dispatched(job.id)
        job.dispatch_pending = False
    session.commit()
    return JobPublic.of(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobsPublic:
    """List jobs, newest first, optionally only those in one state."""
    rows, count = JobRepository(session).list(owner=owner, state=state, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic.of(j) for j in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(session: SessionDep, owner: OwnerDep, job_id: str) -> JobPublic:
    """Get a job: state, progress, resolved recipe, metrics and error."""
    return JobPublic.of(_get_job(JobRepository(session), job_id, owner))


@router.get("/{job_id}/metrics", response_model=JobMetricsPublic)
def get_job_metrics(session: SessionDep, owner: OwnerDep, job_id: str) -> JobMetricsPublic:
    """Per-epoch training loss and validation metrics, in order."""
    repo = JobRepository(session)
    _get_job(repo, job_id, owner)
    rows = [JobMetricPublic.of(m) for m in repo.metrics(job_id)]
    return JobMetricsPublic(data=rows, count=len(rows))


@router.get("/{job_id}/events", response_model=JobEventsPublic)
def get_job_events(session: SessionDep, owner: OwnerDep, job_id: str) -> JobEventsPublic:
    """State changes and progress messages, oldest first."""
    repo = JobRepository(session)
    _get_job(repo, job_id, owner)
    rows = [JobEventPublic.of(e) for e in repo.events(job_id)]
    return JobEventsPublic(data=rows, count=len(rows))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(session: SessionDep, owner: OwnerDep, job_id: str) -> JobPublic:
    """Cancel a queued job, or ask a running one to stop after its current step."""
    repo = JobRepository(session)
    job = _get_job(repo, job_id, owner, for_update=True)
    if not job.state.active:
        raise APIError(409, "job_finished", f"job is already {job.state}")
    repo.request_cancel(job)
    session.commit()
    return JobPublic.of(job)


@router.get(
    "/{job_id}/artifact",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}, "application/zip": {}}}},
)
def download_artifact(
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    owner: OwnerDep,
    prediction: PredictionDep,
    job_id: str,
    format: Annotated[
        Literal["tar.gz", "zip", "open_clip", "onnx"],
        Query(description="tar.gz or zip: the artifact as trained. open_clip: a merged checkpoint for plain "
              "open_clip with the classifier beside it; onnx: images -> logits (both as .tar.gz)."),
    ] = "tar.gz",
) -> FileResponse:
    """Download the trained artifact directory (weights.safetensors, manifest.json), or an export of it."""
    job = _get_job(JobRepository(session), job_id, owner)
    if job.artifact_key is None:
        raise APIError(409, "artifact_unavailable", f"job is {job.state}; only succeeded jobs have an artifact")
    tmp = Path(tempfile.mkdtemp(prefix="clipadapt-download-", dir=_scratch(settings.data_dir)))
    background.add_task(_remove_tree, tmp)
    if format in ("open_clip", "onnx"):
        spec, key = job.base_model_spec, job.artifact_key
        session.close()  # release the connection before the slow part
        try:
            archive = prediction.export(job_id, spec, key, format, tmp)
        except StorageError as e:
            _remove_tree(tmp)
            raise APIError(503, "storage_error", str(e)) from e
        return FileResponse(archive, media_type="application/gzip", filename=archive.name)
    archive = tmp / "artifact.tar.gz"
    try:
        storage.get_file(job.artifact_key, archive)
    except StorageError as e:
        _remove_tree(tmp)
        raise APIError(503, "storage_error", str(e)) from e
    if format == "zip":
        archive = tar_to_zip(archive, tmp / "artifact.zip")
        return FileResponse(archive, media_type="application/zip", filename=f"{job_id}.zip")
    return FileResponse(archive, media_type="application/gzip", filename=f"{job_id}.tar.gz")


def _scratch(data_dir: Path) -> Path:
    path = data_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)

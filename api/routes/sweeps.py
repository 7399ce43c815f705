from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Query

from api.deps import CatalogDep, DispatcherDep, OwnerDep, SessionDep, SettingsDep
from api.errors import ERROR_RESPONSES, APIError, field_error, not_found
from api.schemas import MAX_OFFSET, SweepCreate, SweepPromote, SweepPublic, SweepsPublic, SweepSummary
from core.jobs.dispatch import DispatchError
from core.jobs.models import JobState, Sweep
from core.jobs.repository import DatasetRepository, JobRepository
from core.jobs.sweeps import (
    SweepError, SweepRepository, all_trials_ended, cancel_sweep, create_sweep, drop_stage_cache, leaderboard,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=ERROR_RESPONSES)


def _get_sweep(repo: SweepRepository, sweep_id: str, owner: str, *, for_update: bool = False) -> Sweep:
    """The owner's sweep; another owner's sweep is as unknown as a missing one (404)."""
    sweep = repo.get(sweep_id, owner=owner, for_update=for_update)
    if sweep is None:
        raise not_found("sweep", sweep_id)
    return sweep


def _public(repo: SweepRepository, sweep: Sweep) -> SweepPublic:
    trials = list(repo.trials(sweep.id))
    seconds = repo.trial_seconds(sweep.id)
    return SweepPublic.of(sweep, trials, seconds, leaderboard(trials, seconds))


@router.post("", status_code=201, response_model=SweepPublic)
def create(
    session: SessionDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    dispatcher: DispatcherDep,
    owner: OwnerDep,
    body: SweepCreate,
) -> SweepPublic:
    """Start a sweep: every trial is a queued job on the same dataset, split and seeds."""
    entry = catalog.get(body.base_model)
    if entry is None:
        raise field_error("base_model", f"unknown base model; choose one of: {', '.join(catalog)}", body.base_model)
    dataset = DatasetRepository(session).get(body.dataset_id, owner=owner, for_update=True)
    if dataset is None:
        raise field_error("dataset_id", "no dataset with this id", body.dataset_id)
    try:
        sweep, jobs = create_sweep(
            session, settings, owner=owner, dataset_id=dataset.id, base_model=entry.name,
            base_model_spec=entry.spec(), space=body.space, budget=body.budget, pruner=body.pruner, name=body.name,
        )
    except SweepError as e:
        raise field_error(e.field, e.message, e.value) from e
    # The outbox, as for POST /jobs: trials are stored before the broker is asked; the recovery
    # loop dispatches those it never accepted.
    session.commit()
    repo = JobRepository(session)
    for job in jobs:
        try:
            dispatcher.submit(job.id)
        except DispatchError as e:
            log.warning("sweep %s: trial %s stored; dispatch deferred to the recovery loop: %s", sweep.id, job.id, e)
            break
        repo.mark_dispatched(job.id)
    session.commit()
    return _public(SweepRepository(session), sweep)


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SweepsPublic:
    """List sweeps, newest first."""
    rows, count = SweepRepository(session).list(owner=owner, limit=limit, offset=offset)
    return SweepsPublic(
        data=[
            SweepSummary(
                id=s.id, name=s.name, state=s.state, dataset_id=s.dataset_id, base_model=s.base_model,
                trials=len(s.space["trials"]), best_job_id=s.best_job_id, promoted_job_id=s.promoted_job_id,
                created_at=s.created_at, finished_at=s.finished_at,
            )
            for s in rows
        ],
        count=count,
    )


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(session: SessionDep, owner: OwnerDep, sweep_id: str) -> SweepPublic:
    """Progress and leaderboard (validation accuracy mean +- std over seeds); test metrics of the best only."""
    repo = SweepRepository(session)
    return _public(repo, _get_sweep(repo, sweep_id, owner))


@router.post("/{sweep_id}/promote", response_model=SweepPublic)
def promote(
    session: SessionDep, owner: OwnerDep, sweep_id: str, body: Annotated[SweepPromote | None, Body()] = None
) -> SweepPublic:
    """Make a succeeded trial (default: the selected best) the sweep's model for /predict."""
    repo = SweepRepository(session)
    sweep = _get_sweep(repo, sweep_id, owner, for_update=True)
    job_id = (body.job_id if body else None) or sweep.best_job_id
    if job_id is None:
        raise APIError(409, "sweep_not_finished", f"sweep is {sweep.state} and has no selected best trial yet; name a job_id")
    job = JobRepository(session).get(job_id, owner=owner)
    if job is None or job.sweep_id != sweep.id:
        raise field_error("job_id", "not a trial of this sweep", job_id)
    if job.state != JobState.succeeded or job.artifact_key is None:
        raise APIError(409, "model_unavailable", f"trial {job_id} is {job.state}, not succeeded")
    sweep.promoted_job_id = job.id
    session.commit()
    return _public(repo, sweep)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
def cancel(session: SessionDep, settings: SettingsDep, owner: OwnerDep, sweep_id: str) -> SweepPublic:
    """Cancel the sweep and every trial: queued ones at once, running ones after their current step."""
    repo = SweepRepository(session)
    sweep = _get_sweep(repo, sweep_id, owner, for_update=True)
    if not sweep.state.active:
        raise APIError(409, "sweep_finished", f"sweep is already {sweep.state}")
    cancel_sweep(session, sweep)
    session.commit()
    if all_trials_ended(settings.resolved_database_url, sweep.id):
        drop_stage_cache(settings, sweep.id)  # else the last running trial drops it when it stops
    return _public(repo, sweep)

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from core.jobs.db import transaction
from core.jobs.models import Job, JobState, utcnow
from core.jobs.repository import DatasetRepository, JobRepository
from core.settings import Settings


def test_repositories_do_not_commit(settings: Settings, add_job: Callable[..., str]) -> None:
    url = settings.resolved_database_url
    try:
        with transaction(url) as session:
            JobRepository(session).add(Job(**_job_fields(session, add_job)))
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    with transaction(url) as session:
        assert JobRepository(session).list(limit=10, offset=0)[1] == 1  # only add_job's own job


def _job_fields(session, add_job) -> dict:
    job = JobRepository(session).get(add_job())
    return {
        "dataset_id": job.dataset_id,
        "base_model": job.base_model,
        "base_model_spec": job.base_model_spec,
        "recipe": job.recipe,
    }


def test_claim_is_exclusive_and_recovers_abandoned_jobs(
    settings: Settings, add_job: Callable[..., str]
) -> None:
    url = settings.resolved_database_url
    job_id = add_job()
    with transaction(url) as session:
        assert JobRepository(session).claim(job_id, stale_after=timedelta(minutes=10))
    with transaction(url) as session:
        assert not JobRepository(session).claim(job_id, stale_after=timedelta(minutes=10))
        job = JobRepository(session).get(job_id)
        assert job.state == JobState.running and job.attempts == 1
        job.heartbeat_at = utcnow() - timedelta(minutes=11)  # its worker died
    with transaction(url) as session:
        assert JobRepository(session).claim(job_id, stale_after=timedelta(minutes=10))
        assert JobRepository(session).get(job_id).attempts == 2
        events = [e.state for e in JobRepository(session).events(job_id)]
    assert events == ["queued", "running", "running"]


def test_cancel_queued_is_immediate_running_is_requested(
    settings: Settings, add_job: Callable[..., str]
) -> None:
    url = settings.resolved_database_url
    queued, running = add_job(), add_job()
    with transaction(url) as session:
        JobRepository(session).claim(running, stale_after=timedelta(minutes=10))
    with transaction(url) as session:
        repo = JobRepository(session)
        repo.request_cancel(repo.get(queued))
        repo.request_cancel(repo.get(running))
    with transaction(url) as session:
        repo = JobRepository(session)
        assert repo.get(queued).state == JobState.cancelled
        assert repo.get(queued).finished_at is not None
        assert repo.get(running).state == JobState.running
        assert repo.heartbeat(running) is not None  # the runner sees the request
        assert not repo.claim(queued, stale_after=timedelta(0))


def test_list_filters_by_state_and_paginates(
    settings: Settings, add_job: Callable[..., str]
) -> None:
    url = settings.resolved_database_url
    ids = [add_job(name=f"job {i}") for i in range(5)]
    with transaction(url) as session:
        JobRepository(session).request_cancel(JobRepository(session).get(ids[0]))
    with transaction(url) as session:
        repo = JobRepository(session)
        page, count = repo.list(limit=2, offset=0)
        assert count == 5 and len(page) == 2
        assert {j.id for j in repo.list(limit=10, offset=0)[0]} == set(ids)
        queued, n_queued = repo.list(state=JobState.queued, limit=10, offset=0)
        assert n_queued == 4 and ids[0] not in {j.id for j in queued}
        assert repo.ids_in_state(JobState.cancelled) == [ids[0]]


def test_dataset_in_use_only_by_active_jobs_and_delete_keeps_finished_jobs(
    settings: Settings, dataset_id: str, add_job: Callable[..., str]
) -> None:
    url = settings.resolved_database_url
    job_id = add_job()
    with transaction(url) as session:
        assert DatasetRepository(session).in_use(dataset_id)
        JobRepository(session).request_cancel(JobRepository(session).get(job_id))
    with transaction(url) as session:
        repo = DatasetRepository(session)
        assert not repo.in_use(dataset_id)
        repo.delete(repo.get(dataset_id))
    with transaction(url) as session:
        job = JobRepository(session).get(job_id)
        assert job.dataset_id is None and job.state == JobState.cancelled

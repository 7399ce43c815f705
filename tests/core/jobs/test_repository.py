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
        assert JobRepository(session).list(owner="alice", limit=10, offset=0)[1] == 1  # only add_job's own job


def _job_fields(session, add_job) -> dict:
    job = JobRepository(session).get(add_job())
    return {
        "owner": job.owner,
        "dataset_id": job.dataset_id,
        "base_model": job.base_model,
        "base_model_spec": job.base_model_spec,
        "recipe": job.recipe,
    }


LEASE = timedelta(minutes=1)


def _claim(session, job_id: str, worker: str = "w1", max_attempts: int = 3) -> bool:
    return JobRepository(session).claim(job_id, worker=worker, lease=LEASE, max_attempts=max_attempts)


def _expire(url: str, job_id: str) -> None:
    with transaction(url) as session:
        JobRepository(session).get(job_id).lease_expires_at = utcnow() - timedelta(seconds=1)


def test_claim_is_exclusive_while_the_lease_holds(settings: Settings, add_job: Callable[..., str]) -> None:
    url = settings.resolved_database_url
    job_id = add_job()
    with transaction(url) as session:
        assert _claim(session, job_id, "w1")
    with transaction(url) as session:
        assert not _claim(session, job_id, "w2")  # w1's lease holds
        job = JobRepository(session).get(job_id)
        assert job.state == JobState.running and job.attempts == 1 and job.lease_owner == "w1"
        assert job.lease_expires_at > utcnow()
    with transaction(url) as session:
        assert JobRepository(session).renew_lease(job_id, worker="w1", lease=LEASE) == (True, None)
        assert JobRepository(session).renew_lease(job_id, worker="w2", lease=LEASE)[0] is False
    _expire(url, job_id)  # w1 died
    with transaction(url) as session:
        assert _claim(session, job_id, "w2")
        assert JobRepository(session).get(job_id).attempts == 2
    with transaction(url) as session:  # w1 comes back: it lost the lease and must stop
        assert JobRepository(session).renew_lease(job_id, worker="w1", lease=LEASE)[0] is False
        events = [e.state for e in JobRepository(session).events(job_id)]
    assert events == ["queued", "running", "running"]


def test_recovery_requeues_abandoned_jobs_then_fails_them_after_max_attempts(
    make_settings: Callable[..., Settings], database_url: str, add_job: Callable[..., str]
) -> None:
    from core.jobs.recovery import requeue_expired_leases

    settings = make_settings(database_url=database_url, job_max_attempts=2)
    url = settings.resolved_database_url
    job_id, healthy = add_job(), add_job()
    submitted: list[str] = []
    with transaction(url) as session:
        assert _claim(session, healthy, "w9")
    for attempt in (1, 2):
        with transaction(url) as session:
            assert _claim(session, job_id, f"w{attempt}", max_attempts=2)
        assert requeue_expired_leases(settings, submitted.append) == {}  # the lease still holds
        _expire(url, job_id)
        outcome = requeue_expired_leases(settings, submitted.append)
        assert outcome == {job_id: JobState.queued if attempt == 1 else JobState.failed}
    assert submitted == [job_id]  # dispatched again once, then given up
    with transaction(url) as session:
        repo = JobRepository(session)
        job = repo.get(job_id)
        assert job.state == JobState.failed and job.attempts == 2 and job.lease_owner is None
        assert job.error["code"] == "too_many_attempts" and "2 attempts" in job.error["message"]
        assert repo.get(healthy).state == JobState.running  # a job whose worker lives is left alone
        messages = [e.message for e in repo.events(job_id)]
    assert any("re-queued (attempt 1 of 2 used)" in m for m in messages)


def test_a_failed_dispatch_leaves_the_job_for_the_next_recovery_pass(
    settings: Settings, add_job: Callable[..., str]
) -> None:
    from core.jobs.dispatch import DispatchError
    from core.jobs.recovery import requeue_expired_leases

    url = settings.resolved_database_url
    job_id = add_job()
    with transaction(url) as session:
        _claim(session, job_id)
    _expire(url, job_id)

    def broker_down(_: str) -> None:
        raise DispatchError("broker down")

    assert requeue_expired_leases(settings, broker_down) == {}
    with transaction(url) as session:
        assert JobRepository(session).get(job_id).state == JobState.running  # not silently queued
    assert requeue_expired_leases(settings, lambda _: None) == {job_id: JobState.queued}


def test_cancel_queued_is_immediate_running_is_requested(
    settings: Settings, add_job: Callable[..., str]
) -> None:
    url = settings.resolved_database_url
    queued, running = add_job(), add_job()
    with transaction(url) as session:
        _claim(session, running)
    with transaction(url) as session:
        repo = JobRepository(session)
        repo.request_cancel(repo.get(queued))
        repo.request_cancel(repo.get(running))
    with transaction(url) as session:
        repo = JobRepository(session)
        assert repo.get(queued).state == JobState.cancelled
        assert repo.get(queued).finished_at is not None
        assert repo.get(running).state == JobState.running
        assert repo.renew_lease(running, worker="w1", lease=LEASE)[1] is not None  # the runner sees it
        assert not _claim(session, queued)


def test_list_filters_by_state_and_paginates(
    settings: Settings, add_job: Callable[..., str]
) -> None:
    url = settings.resolved_database_url
    ids = [add_job(name=f"job {i}") for i in range(5)]
    with transaction(url) as session:
        JobRepository(session).request_cancel(JobRepository(session).get(ids[0]))
    with transaction(url) as session:
        repo = JobRepository(session)
        page, count = repo.list(owner="alice", limit=2, offset=0)
        assert count == 5 and len(page) == 2
        assert {j.id for j in repo.list(owner="alice", limit=10, offset=0)[0]} == set(ids)
        assert repo.list(owner="bob", limit=10, offset=0) == ([], 0)
        queued, n_queued = repo.list(owner="alice", state=JobState.queued, limit=10, offset=0)
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

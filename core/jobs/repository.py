"""Repositories: queries and writes for one model each. They never commit; the caller owns the
transaction (``with session.begin(): ...`` or ``core.jobs.db.transaction``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.jobs.models import (
    ACTIVE_STATES,
    Dataset,
    Job,
    JobEvent,
    JobMetric,
    JobState,
    TERMINAL_STATES,
    utcnow,
)


class DatasetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, dataset_id: str, *, owner: str | None = None, for_update: bool = False) -> Dataset | None:
        """The dataset, if it exists and (when ``owner`` is given) belongs to ``owner``."""
        stmt = select(Dataset).where(Dataset.id == dataset_id)
        if owner is not None:
            stmt = stmt.where(Dataset.owner == owner)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).one_or_none()

    def list(self, *, owner: str, limit: int, offset: int) -> tuple[Sequence[Dataset], int]:
        where = Dataset.owner == owner
        count = self.session.scalar(select(func.count()).select_from(Dataset).where(where)) or 0
        rows = self.session.scalars(
            select(Dataset).where(where).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
        ).all()
        return rows, count

    def in_use(self, dataset_id: str) -> bool:
        """True while a queued or running job needs this dataset."""
        stmt = select(Job.id).where(Job.dataset_id == dataset_id, Job.state.in_(ACTIVE_STATES))
        return self.session.scalars(stmt.limit(1)).first() is not None

    def delete(self, dataset: Dataset) -> None:
        self.session.delete(dataset)
        self.session.flush()


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        self.add_event(job.id, f"job created ({job.state})", state=job.state)
        return job

    def get(self, job_id: str, *, owner: str | None = None, for_update: bool = False) -> Job | None:
        """The job, if it exists and (when ``owner`` is given) belongs to ``owner``."""
        stmt = select(Job).where(Job.id == job_id)
        if owner is not None:
            stmt = stmt.where(Job.owner == owner)
        if for_update:
            stmt = stmt.with_for_update(of=Job)
        return self.session.scalars(stmt).one_or_none()

    def list(
        self, *, owner: str, state: JobState | None = None, limit: int, offset: int
    ) -> tuple[Sequence[Job], int]:
        where = [Job.owner == owner] + ([Job.state == state] if state is not None else [])
        count = self.session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = self.session.scalars(
            select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        ).all()
        return rows, count

    def ids_in_state(self, state: JobState) -> list[str]:
        return list(self.session.scalars(select(Job.id).where(Job.state == state).order_by(Job.created_at)))

    def succeeded(self, *, owner: str) -> Sequence[Job]:
        stmt = (
            select(Job)
            .where(Job.state == JobState.succeeded, Job.owner == owner)
            .order_by(Job.finished_at.desc())
        )
        return self.session.scalars(stmt).all()

    def claim(self, job_id: str, *, worker: str, lease: timedelta, max_attempts: int) -> bool:
        """Atomically move a job to running under a lease held by ``worker``.

        A queued job can be claimed; so can a running one whose lease expired (its worker died and
        the task came back before the recovery loop re-queued it) while it has attempts left. Two claims of
        the same job never both succeed: the update is conditional on the row's current values.
        """
        now = utcnow()
        abandoned = (Job.state == JobState.running) & (Job.lease_expires_at < now) & (
            Job.attempts < max_attempts
        )
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, (Job.state == JobState.queued) | abandoned)
            .values(
                state=JobState.running,
                started_at=now,
                heartbeat_at=now,
                updated_at=now,
                lease_owner=worker,
                lease_expires_at=now + lease,
                attempts=Job.attempts + 1,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        claimed = result.rowcount == 1
        if claimed:
            attempts = self.session.scalar(select(Job.attempts).where(Job.id == job_id))
            self.add_event(job_id, f"job started (attempt {attempts}, {worker})", state=JobState.running)
        return claimed

    def renew_lease(self, job_id: str, *, worker: str, lease: timedelta) -> tuple[bool, datetime | None]:
        """Extend ``worker``'s lease; returns whether it still holds the job, and when
        cancellation was requested (if it was)."""
        now = utcnow()
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == worker, Job.state == JobState.running)
            .values(heartbeat_at=now, lease_expires_at=now + lease)
            .execution_options(synchronize_session=False)
        )
        cancel = self.session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id))
        return result.rowcount == 1, cancel

    def pending_dispatch(self, *, older_than: timedelta) -> list[str]:
        """Queued jobs whose task the broker never accepted (the outbox), stored at least
        ``older_than`` ago (younger ones may still be in their API request), oldest first."""
        stmt = (
            select(Job.id)
            .where(Job.state == JobState.queued, Job.dispatch_pending, Job.created_at < utcnow() - older_than)
            .order_by(Job.created_at)
        )
        return list(self.session.scalars(stmt))

    def mark_dispatched(self, job_id: str) -> None:
        self.session.execute(
            update(Job).where(Job.id == job_id).values(dispatch_pending=False).execution_options(synchronize_session=False)
        )

    def expired_leases(self) -> list[str]:
        """Running jobs whose worker stopped renewing its lease, oldest first."""
        stmt = (
            select(Job.id)
            .where(Job.state == JobState.running, Job.lease_expires_at < utcnow())
            .order_by(Job.lease_expires_at)
        )
        return list(self.session.scalars(stmt))

    def requeue_abandoned(
        self, job_id: str, *, reason: str, max_attempts: int, worker_known_dead: bool = False
    ) -> JobState | None:
        """Re-queue a running job whose worker is gone, or fail it once it has used its attempts.

        The worker is gone when its lease expired, or when the caller saw it die
        (``worker_known_dead``). Returns the new state, or None when the job is not abandoned
        (finished, or its lease was renewed meanwhile). The caller dispatches a ``queued`` job again.
        """
        job = self.get(job_id, for_update=True)
        if job is None or job.state != JobState.running:
            return None
        if not worker_known_dead and job.lease_expires_at is not None and job.lease_expires_at >= utcnow():
            return None  # renewed since it was found expired
        if job.attempts >= max_attempts:
            error = {
                "code": "too_many_attempts",
                "message": f"the job's worker stopped {job.attempts} times ({reason}); "
                f"giving up after {max_attempts} attempts",
                "detail": {"attempts": job.attempts, "max_attempts": max_attempts},
            }
            self.set_state(job, JobState.failed, f"job failed: {error['message']}", error=error)
        else:
            self.requeue(job, f"{reason}; re-queued (attempt {job.attempts} of {max_attempts} used)")
        return job.state

    def requeue(self, job: Job, message: str) -> None:
        """Back to queued: progress is cleared, metrics and any checkpoint are kept."""
        job.started_at = job.heartbeat_at = None
        job.stage = job.stage_name = job.epoch = None
        self.set_state(job, JobState.queued, message)

    def set_state(
        self, job: Job, state: JobState, message: str, *, error: dict[str, Any] | None = None
    ) -> None:
        job.state = state
        job.error = error
        if state != JobState.running:
            job.lease_owner = job.lease_expires_at = None
        if state in TERMINAL_STATES:
            job.finished_at = utcnow()
        self.add_event(job.id, message, state=state)

    def request_cancel(self, job: Job) -> None:
        """Cancel a queued job now; ask a running one to stop (its runner finishes the cancel)."""
        if job.state == JobState.queued:
            self.set_state(job, JobState.cancelled, "job cancelled before it started")
        elif job.cancel_requested_at is None:
            job.cancel_requested_at = utcnow()
            self.add_event(job.id, "cancellation requested")

    def add_event(self, job_id: str, message: str, *, state: JobState | None = None) -> JobEvent:
        event = JobEvent(
            job_id=job_id,
            kind="state" if state is not None else "message",
            state=str(state) if state is not None else None,
            message=message,
        )
        self.session.add(event)
        return event

    def events(self, job_id: str) -> Sequence[JobEvent]:
        stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return self.session.scalars(stmt).all()

    def add_metric(self, metric: JobMetric) -> JobMetric:
        self.session.add(metric)
        return metric

    def drop_metrics_after(self, job_id: str, stage: int, epoch: int) -> None:
        """Forget metrics of epochs after (stage, epoch): a resumed run trains them again."""
        self.session.execute(
            delete(JobMetric)
            .where(
                JobMetric.job_id == job_id,
                (JobMetric.stage > stage) | ((JobMetric.stage == stage) & (JobMetric.epoch > epoch)),
            )
            .execution_options(synchronize_session=False)
        )

    def metrics(self, job_id: str) -> Sequence[JobMetric]:
        stmt = select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id)
        return self.session.scalars(stmt).all()

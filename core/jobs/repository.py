"""Repositories: queries and writes for one model each. They never commit; the caller owns the
transaction (``with session.begin(): ...`` or ``core.jobs.db.transaction``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.jobs.models import (
    ACTIVE_STATES,
    Dataset,
    Job,
    JobEvent,
    JobMetric,
    JobState,
    utcnow,
)


class DatasetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, dataset_id: str, *, for_update: bool = False) -> Dataset | None:
        stmt = select(Dataset).where(Dataset.id == dataset_id)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).one_or_none()

    def list(self, *, limit: int, offset: int) -> tuple[Sequence[Dataset], int]:
        count = self.session.scalar(select(func.count()).select_from(Dataset)) or 0
        rows = self.session.scalars(
            select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
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

    def get(self, job_id: str, *, for_update: bool = False) -> Job | None:
        stmt = select(Job).where(Job.id == job_id)
        if for_update:
            stmt = stmt.with_for_update(of=Job)
        return self.session.scalars(stmt).one_or_none()

    def list(
        self, *, state: JobState | None = None, limit: int, offset: int
    ) -> tuple[Sequence[Job], int]:
        where = [Job.state == state] if state is not None else []
        count = self.session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = self.session.scalars(
            select(Job).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        ).all()
        return rows, count

    def ids_in_state(self, state: JobState) -> list[str]:
        return list(self.session.scalars(select(Job.id).where(Job.state == state).order_by(Job.created_at)))

    def succeeded(self) -> Sequence[Job]:
        stmt = select(Job).where(Job.state == JobState.succeeded).order_by(Job.finished_at.desc())
        return self.session.scalars(stmt).all()

    def claim(self, job_id: str, *, stale_after: timedelta) -> bool:
        """Atomically move a job to running. A job left running by a worker that stopped
        heartbeating (it died; the broker redelivered the task) may be claimed again."""
        now = utcnow()
        stale = Job.state == JobState.running
        stale = stale & ((Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < now - stale_after))
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, (Job.state == JobState.queued) | stale)
            .values(
                state=JobState.running,
                started_at=now,
                heartbeat_at=now,
                updated_at=now,
                attempts=Job.attempts + 1,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        claimed = result.rowcount == 1
        if claimed:
            self.add_event(job_id, "job started", state=JobState.running)
        return claimed

    def set_state(
        self, job: Job, state: JobState, message: str, *, error: dict[str, Any] | None = None
    ) -> None:
        job.state = state
        job.error = error
        if state in (JobState.succeeded, JobState.failed, JobState.cancelled):
            job.finished_at = utcnow()
        self.add_event(job.id, message, state=state)

    def request_cancel(self, job: Job) -> None:
        """Cancel a queued job now; ask a running one to stop (its runner finishes the cancel)."""
        if job.state == JobState.queued:
            self.set_state(job, JobState.cancelled, "job cancelled before it started")
        elif job.cancel_requested_at is None:
            job.cancel_requested_at = utcnow()
            self.add_event(job.id, "cancellation requested")

    def heartbeat(self, job_id: str) -> datetime | None:
        """Record that the runner is alive; returns when cancellation was requested, if it was."""
        now = utcnow()
        self.session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=now).execution_options(
                synchronize_session=False
            )
        )
        return self.session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id))

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

    def metrics(self, job_id: str) -> Sequence[JobMetric]:
        stmt = select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.id)
        return self.session.scalars(stmt).all()

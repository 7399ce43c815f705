"""Celery tasks: a job id in, run_job does the rest."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from core.jobs.dispatch import RUN_JOB_TASK
from core.jobs.runner import run_job
from worker.app import app


# The database being away (restarting, a network blip) is retried with backoff rather than
# dropping the task: the job is still queued and nothing was claimed.
@app.task(
    name=RUN_JOB_TASK,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=20,
)
def run_job_task(job_id: str) -> str | None:
    """Train one job; the final state is on the job row (returned here for logs)."""
    state = run_job(job_id)
    return str(state) if state is not None else None

"""Celery tasks: a job id in, run_job does the rest."""

from __future__ import annotations

from core.jobs.dispatch import RUN_JOB_TASK
from core.jobs.runner import run_job
from worker.app import app


@app.task(name=RUN_JOB_TASK)
def run_job_task(job_id: str) -> str | None:
    """Train one job; the final state is on the job row (returned here for logs)."""
    state = run_job(job_id)
    return str(state) if state is not None else None

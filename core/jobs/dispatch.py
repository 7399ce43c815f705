"""Getting a queued job to a runner: Celery (broker configured) or the embedded runner.

Only the dispatch differs; both end in ``core.jobs.runner.run_job(job_id)``. The embedded runner
trains each job in a child process (``python -m core.jobs <job_id>``) so the API's event loop and
GIL stay free, a crash or out-of-memory kill takes down only that job, and torch is never imported
into the API process for training.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from core.jobs.db import transaction
from core.jobs.models import JobState
from core.jobs.repository import JobRepository
from core.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "clipadapt.run_job"


class DispatchError(RuntimeError):
    """The job could not be handed to a runner (broker down, runner closed)."""


class Dispatcher(Protocol):
    def submit(self, job_id: str) -> None: ...
    def check(self) -> str:
        """Raise unless jobs can be dispatched; return a short description."""
        ...
    def close(self) -> None: ...


class CeleryDispatcher:
    """Sends ``clipadapt.run_job`` by name to the training queue; the API never imports worker/."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        self.queue = settings.job_queue
        self.app = Celery("clipadapt-api", broker=settings.broker_url)
        self.app.conf.broker_connection_timeout = 5
        self.app.conf.broker_connection_retry_on_startup = False

    def submit(self, job_id: str) -> None:
        try:
            self.app.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=self.queue,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as e:  # noqa: BLE001 - kombu raises many connection error types
            raise DispatchError(f"cannot reach the broker: {e}") from e

    def check(self) -> str:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return f"celery, queue {self.queue!r}"

    def close(self) -> None:
        self.app.close()


class EmbeddedRunner:
    """Runs jobs in child processes, at most ``settings.embedded_workers`` at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.embedded_workers, thread_name_prefix="job-runner")
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._closed = False

    def recover(self) -> None:
        """Re-queue what a previous process left behind: its children died with it."""
        with transaction(self.settings.resolved_database_url) as session:
            repo = JobRepository(session)
            for job_id in repo.ids_in_state(JobState.running):
                job = repo.get(job_id)
                assert job is not None
                repo.requeue(job, "runner restarted; re-queued")
            queued = repo.ids_in_state(JobState.queued)
        for job_id in queued:
            self.submit(job_id)
        with transaction(self.settings.resolved_database_url) as session:
            for job_id in queued:
                JobRepository(session).mark_dispatched(job_id)

    def submit(self, job_id: str) -> None:
        if self._closed:
            raise DispatchError("the embedded runner is shut down")
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        if self._closed:
            return
        env = os.environ | self.settings.to_env()
        if not self.settings.torch_threads:  # leave a core to the API so it stays responsive
            env["CLIPADAPT_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 2) - 1))
        cmd = [sys.executable, "-m", "core.jobs", job_id]
        with self._lock:
            child = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT)
            self._children.add(child)
        try:
            code = child.wait()
        finally:
            with self._lock:
                self._children.discard(child)
        if code != 0 and not self._closed:
            self._mark_crashed(job_id, code)

    def _mark_crashed(self, job_id: str, code: int) -> None:
        """The child died without finishing the job: re-queue it (it resumes from its checkpoint)
        or, once it has used its attempts, fail it."""
        reason = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        with transaction(self.settings.resolved_database_url) as session:
            state = JobRepository(session).requeue_abandoned(
                job_id,
                reason=f"training process died ({reason})",
                max_attempts=self.settings.job_max_attempts,
                worker_known_dead=True,
            )
        if state == JobState.queued:
            self.submit(job_id)

    def check(self) -> str:
        if self._closed:
            raise DispatchError("the embedded runner is shut down")
        return f"embedded, {self.settings.embedded_workers} worker(s)"

    def close(self, timeout: float = 30) -> None:
        """Stop children (they re-queue their jobs) and wait for them."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            children = list(self._children)
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()


def dispatcher_from_settings(settings: Settings) -> Dispatcher:
    return EmbeddedRunner(settings) if settings.embedded else CeleryDispatcher(settings)

"""The Celery app: ``celery -A worker.app worker -Q gpu --concurrency 1``.

The broker only carries job ids; the job row is the source of truth. Tasks are acknowledged after
they finish (``acks_late``) and returned to the queue if the worker process dies
(``task_reject_on_worker_lost``), and a worker takes one task at a time (prefetch 1): a GPU trains
one job, and a long job does not hold others hostage in a busy worker's prefetch buffer.

A worker waits for the database before it consumes anything (retrying with backoff), and runs the
job recovery loop (core.jobs.recovery): a job whose worker died, machine and all, is re-queued once its lease
expires and resumes on another worker from its last checkpoint.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging, worker_init, worker_process_init, worker_ready, worker_shutdown

from core.jobs.db import wait_for_database
from core.jobs.dispatch import RUN_JOB_TASK
from core.jobs.recovery import RecoveryLoop
from core.logs import configure_logging
from core.settings import get_settings

log = logging.getLogger(__name__)


def create_celery() -> Celery:
    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError("CLIPADAPT_BROKER_URL is empty: the worker needs a broker")
    app = Celery("clipadapt", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_routes={RUN_JOB_TASK: {"queue": settings.job_queue}},
        task_default_queue=settings.job_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # state lives on the job row
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # Redis delivers an unacknowledged task again after this long, also while its job is still
        # training (a job longer than the timeout); the recovery loop re-queues a dead worker's job
        # well before that. The copy finds the job running under a live lease, or finished, and
        # run_job's claim skips it: a redelivery never trains a job twice.
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        # A running job goes on when the broker connection drops: its lease, not the broker,
        # decides who owns it (and its acknowledgement, if lost, only causes a skipped redelivery).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # a broker that drops the connection is reconnected
        worker_hijack_root_logger=False,
    )
    return app


app = create_celery()


@setup_logging.connect
def _logging(**_: object) -> None:
    """Our format (CLIPADAPT_LOG_FORMAT: plain or JSON with job ids) instead of Celery's."""
    configure_logging(get_settings(), "worker")


@worker_process_init.connect
def _limit_threads(**_: object) -> None:
    from core.adapt.runtime import configure_torch

    configure_torch(get_settings().torch_threads)


@worker_init.connect
def _wait_for_database(**_: object) -> None:
    wait_for_database(get_settings().resolved_database_url)


_recovery: RecoveryLoop | None = None


@worker_ready.connect
def _start_recovery(**_: object) -> None:
    global _recovery
    settings = get_settings()

    def submit(job_id: str) -> None:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=settings.job_queue)

    _recovery = RecoveryLoop(settings, submit).start()
    log.info("job recovery every %.0fs", settings.recovery_every_s)


@worker_shutdown.connect
def _stop_recovery(**_: object) -> None:
    if _recovery is not None:
        _recovery.stop()

"""The Celery app: ``celery -A worker.app worker -Q gpu --concurrency 1``.

The broker only carries job ids; the job row is the source of truth. Tasks are acknowledged after
they finish (``acks_late``) and returned to the queue if the worker process dies
(``task_reject_on_worker_lost``), and a worker takes one task at a time (prefetch 1): a GPU trains
one job, and a long job does not hold others hostage in a busy worker's prefetch buffer.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from core.jobs.dispatch import RUN_JOB_TASK
from core.settings import get_settings


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
        # Redis redelivers an unacknowledged task after this long (a worker machine vanished).
        # A copy delivered while the job still heartbeats is skipped by run_job's claim.
        broker_transport_options={"visibility_timeout": 6 * 3600},
        worker_hijack_root_logger=False,
    )
    return app


app = create_celery()


@worker_process_init.connect
def _limit_threads(**_: object) -> None:
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)

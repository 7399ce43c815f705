"""A Celery worker killed with SIGKILL mid-training (the machine vanished): its lease expires, the
recovery loop re-queues the job, and a second worker, started before the database is reachable,
resumes it from its last epoch checkpoint and finishes it."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.jobs.catalog import load_catalog
from core.jobs.datasets import create_dataset
from core.jobs.db import get_engine, get_sessionmaker, transaction
from core.jobs.dispatch import CeleryDispatcher
from core.jobs.files import checkpoint_key
from core.jobs.models import Job, JobState
from core.jobs.repository import JobRepository
from core.jobs.storage import get_storage
from core.settings import Settings
from tests.conftest import TABLES
from tests.e2e.conftest import Processes, wait_until
from tests.helpers.tcp_proxy import DelayedProxy

EPOCHS = 40


def _worker_cmd(queue: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "--concurrency", "1",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def test_sigkilled_worker_job_is_resumed_by_another_worker(
    processes: Processes, tmp_path: Path, example_zip: Path, postgres_url: str, redis_url: str
) -> None:
    with get_engine(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    queue = f"gpu-crash-{uuid.uuid4().hex[:8]}"
    env = {
        "CLIPADAPT_BROKER_URL": redis_url,
        "CLIPADAPT_JOB_QUEUE": queue,
        "CLIPADAPT_STORAGE_URL": str(tmp_path / "storage"),  # shared by both workers (stands in for S3)
        "CLIPADAPT_DEVICE": "cpu",
        "CLIPADAPT_TORCH_THREADS": "1",
        "CLIPADAPT_CHECKPOINT_EVERY_S": "0",
        "CLIPADAPT_JOB_LEASE_S": "3",
        "CLIPADAPT_RECOVERY_EVERY_S": "1",
    }
    settings = Settings(data_dir=tmp_path / "client", database_url=postgres_url, broker_url=redis_url,
                        job_queue=queue, storage_url=env["CLIPADAPT_STORAGE_URL"])
    storage = get_storage(settings)
    with get_sessionmaker(postgres_url)() as session:
        dataset = create_dataset(session, storage, example_zip, filename="digits.zip", owner="e2e")
    entry = load_catalog()["clipadapt-tiny"]
    with transaction(postgres_url) as session:
        job_id = JobRepository(session).add(Job(
            owner="e2e", dataset_id=dataset.id, base_model=entry.name, base_model_spec=entry.spec(),
            recipe={"method": "layernorm", "layernorm": "none", "epochs": EPOCHS, "batch_size": 4, "seed": 3},
        )).id
    dispatcher = CeleryDispatcher(settings)
    dispatcher.submit(job_id)
    dispatcher.close()

    def job_and_metrics():
        with transaction(postgres_url) as session:
            repo = JobRepository(session)
            return repo.get(job_id), [m.epoch for m in repo.metrics(job_id)], [e.message for e in repo.events(job_id)]

    first, first_log = processes.start(
        "worker-1", _worker_cmd(queue),
        env | {"CLIPADAPT_DATABASE_URL": postgres_url, "CLIPADAPT_DATA_DIR": str(tmp_path / "w1")}, new_session=True,
    )
    wait_until(lambda: len(job_and_metrics()[1]) >= 3 and storage.exists(checkpoint_key(job_id)), 120,
               "worker 1 to train a few epochs", first_log)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, with no chance to clean up
    first.wait(10)
    job, epochs_before, _ = job_and_metrics()
    assert job.state == JobState.running and job.attempts == 1 and max(epochs_before) < EPOCHS

    # The second worker starts while its database is still unreachable: it waits, then runs.
    url = make_url(postgres_url)
    proxy = DelayedProxy((url.host, url.port or 5432))
    late_url = url.set(port=proxy.port).render_as_string(hide_password=False)
    _, second_log = processes.start(
        "worker-2", _worker_cmd(queue),
        env | {"CLIPADAPT_DATABASE_URL": late_url, "CLIPADAPT_DATA_DIR": str(tmp_path / "w2")},
    )
    proxy.open_after(3)
    try:
        wait_until(lambda: not job_and_metrics()[0].state.active, 180, "worker 2 to finish the job", second_log)
    finally:
        proxy.close()

    job, epochs, events = job_and_metrics()
    assert job.state == JobState.succeeded, job.error
    assert job.attempts == 2
    assert epochs == list(range(1, EPOCHS + 1))  # every epoch exactly once: none lost, none repeated
    resumed = [m for m in events if m.startswith("resuming stage 0 after epoch")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= 2, events  # not restarted from epoch 1
    assert any("stopped renewing the lease; re-queued (attempt 1 of 3 used)" in m for m in events)
    assert not storage.exists(checkpoint_key(job_id))
    assert "database not reachable" in second_log.read_text()

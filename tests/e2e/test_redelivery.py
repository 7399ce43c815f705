"""A job that trains longer than Redis's visibility timeout: Redis delivers its task again to a second
worker while the first still trains it; the copy finds the job running under a live lease and does
nothing. The job is trained once: one attempt, one start, every epoch's metrics once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from core.jobs.catalog import load_catalog
from core.jobs.datasets import create_dataset
from core.jobs.db import get_engine, get_sessionmaker, transaction
from core.jobs.dispatch import CeleryDispatcher
from core.jobs.models import Job, JobState
from core.jobs.repository import JobRepository
from core.jobs.storage import get_storage
from core.settings import Settings
from tests.conftest import TABLES
from tests.e2e.conftest import Processes, wait_until
from tests.e2e.test_worker_crash import _worker_cmd

EPOCHS = 60


def test_a_redelivered_task_never_trains_twice(
    processes: Processes, tmp_path: Path, example_zip: Path, postgres_url: str, redis_url: str
) -> None:
    with get_engine(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    queue = f"gpu-redeliver-{uuid.uuid4().hex[:8]}"
    env = {
        "CLIPADAPT_DATABASE_URL": postgres_url,
        "CLIPADAPT_BROKER_URL": redis_url,
        "CLIPADAPT_JOB_QUEUE": queue,
        "CLIPADAPT_STORAGE_URL": str(tmp_path / "storage"),
        "CLIPADAPT_DEVICE": "cpu",
        "CLIPADAPT_TORCH_THREADS": "1",
        "CLIPADAPT_BROKER_VISIBILITY_TIMEOUT_S": "2",  # far shorter than the job
        "CLIPADAPT_JOB_LEASE_S": "120",  # outlives worker 1's pause below
    }
    settings = Settings(data_dir=tmp_path / "client", database_url=postgres_url, broker_url=redis_url,
                        job_queue=queue, storage_url=env["CLIPADAPT_STORAGE_URL"])
    with get_sessionmaker(postgres_url)() as session:
        dataset = create_dataset(session, get_storage(settings), example_zip, filename="digits.zip", owner="e2e")
    entry = load_catalog()["clipadapt-tiny"]
    with transaction(postgres_url) as session:
        job_id = JobRepository(session).add(Job(
            owner="e2e", dataset_id=dataset.id, base_model=entry.name, base_model_spec=entry.spec(),
            recipe={"method": "layernorm", "layernorm": "none", "epochs": EPOCHS, "batch_size": 4, "seed": 5},
        )).id

    def job_and_metrics():
        with transaction(postgres_url) as session:
            repo = JobRepository(session)
            return repo.get(job_id), [m.epoch for m in repo.metrics(job_id)], [e.message for e in repo.events(job_id)]

    first, first_log = processes.start("worker-1", _worker_cmd(queue), env | {"CLIPADAPT_DATA_DIR": str(tmp_path / "w1")},
                                       new_session=True)
    wait_until(lambda: "ready." in first_log.read_text(), 60, "worker 1 to start", first_log)
    dispatcher = CeleryDispatcher(settings)
    dispatcher.submit(job_id)
    dispatcher.close()
    wait_until(lambda: len(job_and_metrics()[1]) >= 1, 60, "worker 1 to start training", first_log)
    _, second_log = processes.start("worker-2", _worker_cmd(queue), env | {"CLIPADAPT_DATA_DIR": str(tmp_path / "w2")})

    # Worker 1 is paused mid-job (SIGSTOP: alive, lease valid, task unacknowledged), so that the job
    # outlasts the redelivery however fast this machine trains. Redis restores unacknowledged tasks
    # older than the timeout every 10 s; worker 2 gets the copy.
    os.killpg(first.pid, signal.SIGSTOP)
    redelivered = f"job {job_id} not claimed (state: running)"
    deadline = time.monotonic() + 60
    try:
        while redelivered not in second_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    # (If worker 1 was paused holding the job row's lock, worker 2's claim completes only now.)
    wait_until(lambda: redelivered in second_log.read_text(), 60, "the redelivered task to reach worker 2", second_log)
    wait_until(lambda: not job_and_metrics()[0].state.active, 180, "worker 1 to finish", first_log)

    job, epochs, events = job_and_metrics()
    assert job.state == JobState.succeeded, job.error
    assert job.attempts == 1
    assert epochs == list(range(1, EPOCHS + 1))
    assert sum(m.startswith("job started") for m in events) == 1

"""A broker that drops its connection: the worker reconnects by itself and the next job runs; a
dispatch while the broker is away fails promptly (the API then leaves the job in its outbox)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.jobs.catalog import load_catalog
from core.jobs.datasets import create_dataset
from core.jobs.db import get_engine, get_sessionmaker, transaction
from core.jobs.dispatch import CeleryDispatcher, DispatchError
from core.jobs.models import Job, JobState
from core.jobs.repository import JobRepository
from core.jobs.storage import get_storage
from core.settings import Settings
from tests.conftest import TABLES
from tests.e2e.conftest import Processes, wait_until
from tests.helpers.tcp_proxy import DelayedProxy


def test_worker_survives_a_broker_connection_drop(
    processes: Processes, tmp_path: Path, example_zip: Path, postgres_url: str, redis_url: str
) -> None:
    with get_engine(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    redis = make_url(redis_url)
    proxy = DelayedProxy((redis.host, redis.port or 6379))
    proxy.open()
    via_proxy = f"redis://127.0.0.1:{proxy.port}/{redis.database}"
    queue = f"gpu-drop-{uuid.uuid4().hex[:8]}"
    storage_url = str(tmp_path / "storage")
    _, log = processes.start(
        "worker",
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue, "--concurrency", "1",
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        {"CLIPADAPT_DATABASE_URL": postgres_url, "CLIPADAPT_BROKER_URL": via_proxy, "CLIPADAPT_JOB_QUEUE": queue,
         "CLIPADAPT_STORAGE_URL": storage_url, "CLIPADAPT_DATA_DIR": str(tmp_path / "w"),
         "CLIPADAPT_DEVICE": "cpu", "CLIPADAPT_TORCH_THREADS": "1"},
    )
    try:
        wait_until(lambda: "ready." in log.read_text(), 60, "the worker to start", log)
        proxy.close()  # the broker goes away: every connection cut, nothing listening
        wait_until(lambda: "Trying to re-establish the connection" in log.read_text(), 30, "the worker to notice", log)

        down = Settings(data_dir=tmp_path / "client", database_url=postgres_url, broker_url=via_proxy,
                        job_queue=queue, storage_url=storage_url)
        unreachable = CeleryDispatcher(down)
        started = time.monotonic()
        try:
            unreachable.submit("no-such-job")
            raise AssertionError("submit succeeded without a broker")
        except DispatchError as e:
            assert "broker" in str(e)
        finally:
            unreachable.close()
        assert time.monotonic() - started < 30  # refused promptly, so POST /jobs answers without waiting long

        time.sleep(2)
        proxy.open()  # the broker is back

        settings = Settings(data_dir=tmp_path / "client", database_url=postgres_url, broker_url=redis_url,
                            job_queue=queue, storage_url=storage_url)
        with get_sessionmaker(postgres_url)() as session:
            dataset = create_dataset(session, get_storage(settings), example_zip, filename="digits.zip", owner="e2e")
        entry = load_catalog()["clipadapt-tiny"]
        with transaction(postgres_url) as session:
            job_id = JobRepository(session).add(Job(
                owner="e2e", dataset_id=dataset.id, base_model=entry.name, base_model_spec=entry.spec(),
                recipe={"method": "layernorm", "layernorm": "none", "epochs": 2, "batch_size": 8},
            )).id
        dispatcher = CeleryDispatcher(settings)
        dispatcher.submit(job_id)
        dispatcher.close()

        def state() -> JobState:
            with transaction(postgres_url) as session:
                return JobRepository(session).get(job_id).state

        wait_until(lambda: not state().active, 120, "the reconnected worker to run the job", log)
        assert state() == JobState.succeeded
    finally:
        proxy.close()

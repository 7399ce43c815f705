"""Outages of the services a running job needs: a database restart does not cost the job an attempt,
an S3 outage while the artifact is stored is retried, and a job never succeeds without its artifact."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.jobs.catalog import load_catalog
from core.jobs.datasets import create_dataset
from core.jobs.db import get_sessionmaker, transaction
from core.jobs.files import artifact_key
from core.jobs.models import Job, JobState
from core.jobs.repository import JobRepository
from core.jobs.runner import run_job
from core.jobs.storage import Storage, StorageError, get_storage
from core.settings import Settings
from tests.conftest import migrate

RECIPE = {"method": "layernorm", "epochs": 3, "batch_size": 8}


def _add_job(settings: Settings, example_zip: Path, recipe: dict = RECIPE) -> str:
    url = settings.resolved_database_url
    with get_sessionmaker(url)() as session:
        dataset = create_dataset(session, get_storage(settings), example_zip, filename="digits.zip", owner="alice")
    entry = load_catalog()["clipadapt-tiny"]
    with transaction(url) as session:
        return JobRepository(session).add(Job(owner="alice", dataset_id=dataset.id, base_model=entry.name,
                                              base_model_spec=entry.spec(), recipe=recipe)).id


def _job(url: str, job_id: str):
    with transaction(url) as session:
        repo = JobRepository(session)
        return repo.get(job_id), [m.epoch for m in repo.metrics(job_id)], [e.message for e in repo.events(job_id)]


class FlakyUploads:
    """A storage whose artifact uploads fail ``failures`` times (an S3 outage), then work."""

    def __init__(self, inner: Storage, failures: int) -> None:
        self.inner, self.failures, self.attempts = inner, failures, 0

    def put_file(self, key: str, source: Path) -> None:
        if key.startswith("artifacts/"):
            self.attempts += 1
            if self.attempts <= self.failures:
                raise StorageError("upload failed: could not connect to the endpoint URL")
        self.inner.put_file(key, source)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.mark.parametrize("failures, succeeds", [(2, True), (100, False)])
def test_artifact_upload_is_retried_and_never_skipped(
    make_settings: Callable[..., Settings], example_zip: Path, monkeypatch: pytest.MonkeyPatch, failures: int, succeeds: bool
) -> None:
    settings = make_settings(storage_retry_s=4)
    migrate(settings.resolved_database_url)
    job_id = _add_job(settings, example_zip)
    flaky = FlakyUploads(get_storage(settings), failures)
    monkeypatch.setattr("core.jobs.runner.get_storage", lambda _: flaky)

    state = run_job(job_id, settings=settings)
    job, epochs, events = _job(settings.resolved_database_url, job_id)
    retries = [m for m in events if m.startswith("storing the artifact failed, retrying")]
    assert epochs == [1, 2, 3]
    if succeeds:
        assert state == JobState.succeeded and job.attempts == 1
        assert len(retries) == 2 and flaky.attempts == 3
        assert job.artifact_key == artifact_key(job_id) and flaky.inner.exists(job.artifact_key)
    else:  # the outage outlasts storage_retry_s (1 + 2 s of backoff, then the next wait would pass 4 s)
        assert state == JobState.failed and job.error["code"] == "storage_error"
        assert len(retries) == 2 and job.artifact_key is None
        assert not flaky.inner.exists(artifact_key(job_id))


@pytest.mark.slow
def test_a_database_restart_mid_job_costs_no_attempt(
    make_settings: Callable[..., Settings], example_zip: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from core.jobs.db import get_engine
    from tests.conftest import TABLES
    from tests.helpers.tcp_proxy import DelayedProxy

    with get_engine(postgres_url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    url = make_url(postgres_url)
    proxy = DelayedProxy((url.host, url.port or 5432))
    proxy.open()
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    epochs = 30
    settings = make_settings(database_url=proxied, job_lease_s=20, checkpoint_every_s=0)
    job_id = _add_job(settings, example_zip, {"method": "layernorm", "epochs": epochs, "batch_size": 4})

    # Training waits after epoch 3 until the database is gone, so that the outage falls mid-job however
    # fast this machine trains 30 epochs.
    from core.jobs.runner import JobCallbacks

    third_epoch_written, database_gone = threading.Event(), threading.Event()
    on_epoch_end = JobCallbacks.on_epoch_end

    def pausing_on_epoch_end(self: JobCallbacks, report: object) -> None:
        on_epoch_end(self, report)
        if report.epoch == 3:  # type: ignore[attr-defined]
            third_epoch_written.set()
            database_gone.wait(60)

    monkeypatch.setattr(JobCallbacks, "on_epoch_end", pausing_on_epoch_end)
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", run_job(job_id, settings=settings)))
    thread.start()
    try:
        assert third_epoch_written.wait(120), _job(postgres_url, job_id)
        proxy.close()  # the database goes away: every connection cut, nothing listening
        database_gone.set()
        time.sleep(3)
        during = len(_job(postgres_url, job_id)[1])
        proxy.open()
        thread.join(180)
    finally:
        proxy.close()
    job, done, events = _job(postgres_url, job_id)
    assert result["state"] == JobState.succeeded and job.state == JobState.succeeded, job.error
    assert during < epochs  # the outage happened mid-job
    assert job.attempts == 1  # the same attempt went on: nothing re-queued, nothing trained again
    assert done == list(range(1, epochs + 1))
    assert not any(m.startswith("resuming") for m in events)

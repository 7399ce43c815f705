"""Faults in run_job: shutdown and resume from a checkpoint, a lost lease, cancellation, divergence,
out of memory, a database that comes up late."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from core.jobs.db import transaction
from core.jobs.dispatch import EmbeddedRunner
from core.jobs.files import checkpoint_key
from core.jobs.models import JobState
from core.jobs.repository import JobRepository
from core.jobs.runner import run_job
from core.jobs.storage import get_storage
from core.settings import Settings

SLOW = {"method": "layernorm", "epochs": 500, "batch_size": 4}


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    # A checkpoint after every epoch, a short lease.
    return make_settings(database_url=database_url, checkpoint_every_s=0, job_lease_s=4)


def _job(settings: Settings, job_id: str):
    with transaction(settings.resolved_database_url) as session:
        repo = JobRepository(session)
        return repo.get(job_id), list(repo.metrics(job_id)), list(repo.events(job_id))


def _start(settings: Settings, job_id: str, *, epochs_done: int = 1, interrupt: threading.Event | None = None):
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("state", run_job(job_id, settings=settings, interrupt=interrupt)))
    thread.start()
    deadline = time.monotonic() + 60
    while len(_job(settings, job_id)[1]) < epochs_done:
        job = _job(settings, job_id)[0]
        assert job.state in (JobState.queued, JobState.running), job.error
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    return thread, result


def test_interrupted_job_resumes_from_its_last_checkpoint(settings: Settings, add_job: Callable[..., str]) -> None:
    job_id = add_job({"method": "layernorm", "epochs": 8, "batch_size": 4})
    storage = get_storage(settings)
    interrupt = threading.Event()
    thread, result = _start(settings, job_id, epochs_done=2, interrupt=interrupt)
    interrupt.set()
    thread.join(60)
    job, metrics, _ = _job(settings, job_id)
    assert result["state"] == JobState.queued and job.state == JobState.queued
    assert storage.exists(checkpoint_key(job_id))  # kept for the next attempt
    done_before = max(m.epoch for m in metrics)

    assert run_job(job_id, settings=settings) == JobState.succeeded
    job, metrics, events = _job(settings, job_id)
    assert job.attempts == 2
    assert [m.epoch for m in metrics] == list(range(1, 9))  # each epoch once: none lost, none repeated
    resumed = [e.message for e in events if e.message.startswith("resuming stage 0 after epoch")]
    assert len(resumed) == 1
    resumed_after = int(resumed[0].rsplit(" ", 1)[1])
    assert 1 <= resumed_after <= done_before  # continued, not restarted from epoch 1
    assert not storage.exists(checkpoint_key(job_id))  # removed once the job ended


def test_a_worker_that_loses_its_lease_stops_and_writes_nothing(settings: Settings, add_job: Callable[..., str]) -> None:
    job_id = add_job(SLOW)
    thread, result = _start(settings, job_id)
    with transaction(settings.resolved_database_url) as session:  # the recovery loop gave the job to another worker
        JobRepository(session).get(job_id).lease_owner = "another-worker"
    thread.join(30)
    assert not thread.is_alive()
    job, _, events = _job(settings, job_id)
    assert result["state"] is None
    assert job.state == JobState.running and job.lease_owner == "another-worker"
    assert [e.state for e in events if e.kind == "state"] == ["queued", "running"]


def test_cancelling_a_running_job_ends_it_within_seconds(settings: Settings, add_job: Callable[..., str]) -> None:
    job_id = add_job(SLOW)
    thread, result = _start(settings, job_id, epochs_done=2)
    assert get_storage(settings).exists(checkpoint_key(job_id))
    requested = time.monotonic()
    with transaction(settings.resolved_database_url) as session:
        repo = JobRepository(session)
        repo.request_cancel(repo.get(job_id))
    thread.join(30)
    elapsed = time.monotonic() - requested
    job, metrics, _ = _job(settings, job_id)
    assert result["state"] == JobState.cancelled and job.state == JobState.cancelled
    assert elapsed < 5, f"cancel took {elapsed:.1f}s"
    assert len(metrics) < 500 and job.artifact_key is None
    assert not get_storage(settings).exists(checkpoint_key(job_id))


def test_diverging_training_fails_with_code_diverged(
    settings: Settings, add_job: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    job_id = add_job()
    assert run_job(job_id, settings=settings) == JobState.failed
    job, _, _ = _job(settings, job_id)
    assert job.error["code"] == "diverged" and "nan" in job.error["message"].lower()


@pytest.mark.parametrize(
    "error",
    [
        lambda: __import__("torch").cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        lambda: MemoryError(),
    ],
    ids=["cuda", "host"],
)
def test_out_of_memory_fails_with_code_out_of_memory(
    settings: Settings, add_job: Callable[..., str], monkeypatch: pytest.MonkeyPatch, error
) -> None:
    import core.adapt.trainer

    def train(*args, **kwargs):
        raise error()

    monkeypatch.setattr(core.adapt.trainer, "train", train)
    job_id = add_job()
    assert run_job(job_id, settings=settings) == JobState.failed
    job, _, _ = _job(settings, job_id)
    assert job.error["code"] == "out_of_memory" and "batch_size" in job.error["message"]
    assert job.lease_owner is None and job.finished_at is not None


def test_wait_for_database_retries_until_it_is_up(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy.engine import make_url

    from core.jobs.db import wait_for_database
    from tests.helpers.tcp_proxy import DelayedProxy

    url = make_url(postgres_url)
    proxy = DelayedProxy((url.host, url.port or 5432))
    late = url.set(port=proxy.port).render_as_string(hide_password=False)
    started = time.monotonic()
    proxy.open_after(1.5)
    try:
        with caplog.at_level(logging.WARNING, logger="core.jobs.db"):
            wait_for_database(late, timeout=30, first_delay=0.2)
    finally:
        proxy.close()
    assert time.monotonic() - started >= 1.5
    assert any("retrying in" in r.message for r in caplog.records)
    never = url.set(port=DelayedProxy((url.host, 1)).port).render_as_string(hide_password=False)
    with pytest.raises(Exception, match="refused|connect"):
        wait_for_database(never, timeout=0.5, first_delay=0.1)  # gives up after its timeout


class _RecordingRunner(EmbeddedRunner):
    """The embedded runner, recording the ids it is given instead of starting training processes."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.submitted: list[str] = []

    def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)


def test_embedded_runner_restart_requeues_and_resubmits(settings: Settings, add_job: Callable[..., str]) -> None:
    from datetime import timedelta

    running, queued = add_job(), add_job()
    with transaction(settings.resolved_database_url) as session:  # the previous API process died mid-job
        JobRepository(session).claim(running, worker="old-api", lease=timedelta(minutes=5), max_attempts=3)
    runner = _RecordingRunner(settings)
    try:
        runner.recover()
    finally:
        runner.close()
    assert sorted(runner.submitted) == sorted([running, queued])
    job, _, events = _job(settings, running)
    assert job.state == JobState.queued and job.lease_owner is None
    assert events[-1].message == "runner restarted; re-queued"


def test_embedded_training_process_that_keeps_dying_fails_after_max_attempts(
    make_settings: Callable[..., Settings], database_url: str, add_job: Callable[..., str]
) -> None:
    from datetime import timedelta

    settings = make_settings(database_url=database_url, job_max_attempts=2)
    job_id = add_job()
    runner = _RecordingRunner(settings)
    try:
        for attempt in (1, 2):
            with transaction(settings.resolved_database_url) as session:
                assert JobRepository(session).claim(job_id, worker=f"child-{attempt}", lease=timedelta(minutes=5),
                                                    max_attempts=2)
            runner._mark_crashed(job_id, -9)  # the OOM killer, say
    finally:
        runner.close()
    assert runner.submitted == [job_id]  # re-queued once, then given up
    job, _, _ = _job(settings, job_id)
    assert job.state == JobState.failed and job.attempts == 2
    assert job.error["code"] == "too_many_attempts" and "killed by signal 9" in job.error["message"]

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import pytest

from core.jobs.dispatch import RUN_JOB_TASK
from core.settings import get_settings

BROKER = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="module")
def tasks() -> Iterator[ModuleType]:
    """worker.tasks, imported once with a broker configured (the app reads settings at import)."""
    previous = os.environ.get("CLIPADAPT_BROKER_URL")
    os.environ["CLIPADAPT_BROKER_URL"] = BROKER
    get_settings.cache_clear()
    try:
        yield importlib.import_module("worker.tasks")
    finally:
        if previous is None:
            os.environ.pop("CLIPADAPT_BROKER_URL", None)
        else:
            os.environ["CLIPADAPT_BROKER_URL"] = previous
        get_settings.cache_clear()


def test_training_task_is_named_routed_and_acknowledged_late(tasks: ModuleType) -> None:
    app = tasks.app
    assert tasks.run_job_task.name == RUN_JOB_TASK and RUN_JOB_TASK in app.tasks
    assert app.amqp.router.route({}, RUN_JOB_TASK)["queue"].name == "gpu"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_url == BROKER


def test_task_calls_run_job_with_the_id_only(tasks: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.jobs.models import JobState

    calls = []
    monkeypatch.setattr(tasks, "run_job", lambda job_id: calls.append(job_id) or JobState.succeeded)
    assert tasks.run_job_task.apply(args=["abc"]).get() == "succeeded"
    assert calls == ["abc"]


def test_worker_refuses_to_start_without_a_broker(tasks: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.app import create_celery

    monkeypatch.delenv("CLIPADAPT_BROKER_URL", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="CLIPADAPT_BROKER_URL"):
            create_celery()
    finally:
        get_settings.cache_clear()

"""Logging for every process (API, Celery worker, embedded training process): plain text for a
developer's terminal, or one JSON object per line (``CLIPADAPT_LOG_FORMAT=json``, what the compose
deployment uses) for a log collector. Records logged while a job runs carry its ``job_id``."""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from core.settings import Settings

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("clipadapt_job_id", default=None)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Log records made inside (in this thread or task) carry ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = _job_id.get()
        return True


HANDLER_NAME = "clipadapt"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _formatter(fmt: str, process: str) -> logging.Formatter:
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(job_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"process": process},
        )
    return logging.Formatter(PLAIN_FORMAT if process != "job-runner" else PLAIN_FORMAT.replace("%(name)s", "[job-runner] %(name)s"))


def configure_logging(settings: Settings, process: str) -> None:
    """One handler on the root logger, in the settings' format and level. ``process`` names the
    kind of process (api, worker, job-runner) in JSON records. In JSON mode uvicorn's and Celery's
    loggers are routed to it too, so every line of the process is JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(settings.log_format, process))
    handler.addFilter(JobIdFilter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others' (pytest's capture) stay
        if old.get_name() == HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    if settings.log_format == "json":
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True

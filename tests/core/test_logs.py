"""Log format: plain text by default, JSON lines with the job id when CLIPADAPT_LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from core.logs import configure_logging, job_context
from core.settings import Settings


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"), "worker")
    log = logging.getLogger("core.jobs.runner")
    with job_context("abc123"):
        log.info("job %s started", "abc123")
    log.warning("between jobs")
    logging.getLogger("uvicorn.access").info("GET /healthz 200")  # routed to the same handler
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines[0] | {"time": None} == {"time": None, "level": "INFO", "logger": "core.jobs.runner",
                                         "message": "job abc123 started", "job_id": "abc123", "process": "worker"}
    assert lines[1]["job_id"] is None and lines[1]["level"] == "WARNING"
    assert lines[2]["logger"] == "uvicorn.access" and lines[2]["message"] == "GET /healthz 200"


def test_plain_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(), "api")
    logging.getLogger("api").info("hello")
    line = capsys.readouterr().err.strip()
    assert line.endswith(" INFO api: hello") and not line.startswith("{")

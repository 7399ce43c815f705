"""``python -m core.jobs <job_id>``: run one job; the embedded runner's child process."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from core.jobs.runner import run_job
from core.logs import configure_logging
from core.settings import get_settings


def _watch_parent(interrupt: threading.Event) -> None:
    parent = os.getppid()
    while not interrupt.wait(1.0):
        if os.getppid() != parent:  # the API process died: stop and re-queue rather than orphan
            interrupt.set()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m core.jobs <job_id>", file=sys.stderr)
        return 2
    settings = get_settings()
    configure_logging(settings, "job-runner")
    interrupt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: interrupt.set())
    signal.signal(signal.SIGINT, lambda *_: interrupt.set())
    threading.Thread(target=_watch_parent, args=(interrupt,), daemon=True).start()
    started = time.monotonic()
    state = run_job(argv[0], settings=settings, interrupt=interrupt)
    logging.getLogger(__name__).info("job %s: %s after %.1fs", argv[0], state, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Recovery: jobs whose worker died are re-queued and dispatched again (or failed once they have
used their attempts), and jobs stored while the broker was down (the outbox, ``dispatch_pending``)
are dispatched once it is back, and sweeps whose last step a dead worker never took are finished
(``core.jobs.sweeps.advance_sweeps``). Every Celery worker and the API run the loop; running it twice at
once is harmless: re-queueing is a conditional update of the job row, and a task delivered twice is
skipped by run_job's claim.

The broker's own redelivery is not relied on: a long job would need a visibility timeout longer
than the job, and would then wait that long after a crash. The lease expires within
``job_lease_s`` of the worker's death instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import OperationalError

from core.jobs.db import transaction
from core.jobs.files import checkpoint_key
from core.jobs.models import JobState
from core.jobs.repository import JobRepository
from core.jobs.storage import StorageError, get_storage
from core.settings import Settings

log = logging.getLogger(__name__)


def requeue_expired_leases(settings: Settings, submit: Callable[[str], None]) -> dict[str, JobState]:
    """Re-queue and ``submit`` every job whose lease expired; fail those out of attempts.

    ``submit`` runs before the re-queue commits: if it raises, the job stays as it was and the
    next pass tries again, so a job is never left queued without a dispatch.
    """
    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        expired = JobRepository(session).expired_leases()
    outcome: dict[str, JobState] = {}
    for job_id in expired:
        try:
            with transaction(db_url) as session:
                state = JobRepository(session).requeue_abandoned(
                    job_id, reason="its worker stopped renewing the lease", max_attempts=settings.job_max_attempts
                )
                if state == JobState.queued:
                    submit(job_id)
        except Exception as e:  # noqa: BLE001 - one job's trouble must not stop the others
            log.warning("recovery: job %s not re-queued this time: %s", job_id, e)
            continue
        if state is None:
            continue
        outcome[job_id] = state
        log.warning("recovery: job %s abandoned by its worker: %s", job_id, state)
        if state == JobState.failed:
            try:
                get_storage(settings).delete(checkpoint_key(job_id))
            except StorageError as e:
                log.warning("recovery: checkpoint of job %s not deleted: %s", job_id, e)
    return outcome


# A job younger than this may still be inside the POST /jobs that stored it, dispatching it.
DISPATCH_GRACE = timedelta(seconds=10)


def dispatch_pending(settings: Settings, submit: Callable[[str], None]) -> list[str]:
    """Dispatch queued jobs the broker never accepted; returns those dispatched now. A job whose
    ``submit`` raises stays pending for the next pass."""
    db_url = settings.resolved_database_url
    with transaction(db_url) as session:
        pending = JobRepository(session).pending_dispatch(older_than=DISPATCH_GRACE)
    dispatched = []
    for job_id in pending:
        try:
            submit(job_id)
        except Exception as e:  # noqa: BLE001 - broker still away: the next pass tries again
            log.warning("recovery: job %s still not dispatched: %s", job_id, e)
            break
        with transaction(db_url) as session:
            repo = JobRepository(session)
            repo.mark_dispatched(job_id)
            repo.add_event(job_id, "dispatched by the recovery loop")
        dispatched.append(job_id)
        log.info("recovery: job %s dispatched", job_id)
    return dispatched


class RecoveryLoop:
    """Runs the recovery every ``settings.recovery_every_s`` in a daemon thread."""

    def __init__(self, settings: Settings, submit: Callable[[str], None]) -> None:
        self.settings = settings
        self.submit = submit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-recovery", daemon=True)

    def start(self) -> RecoveryLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.recovery_every_s):
            self.run_once()

    def run_once(self) -> None:
        from core.jobs.sweeps import advance_sweeps

        for step in (requeue_expired_leases, dispatch_pending, advance_sweeps):
            try:
                step(self.settings, self.submit)
            except OperationalError as e:  # the database is away (a restart): try again next period
                log.warning("job recovery (%s): database unreachable: %s", step.__name__, str(e).splitlines()[0])
            except Exception:  # noqa: BLE001 - anything else is a bug worth a traceback; keep looping
                log.exception("job recovery (%s) failed", step.__name__)

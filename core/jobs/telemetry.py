"""Prometheus metrics, served by the API on ``GET /metrics`` (prometheus-client).

Where each number comes from, so that it is right however many API and worker processes there are:

- Jobs by state, queue depth, the outbox, job durations and training throughput are read from the
  database at scrape time (``JobStatsCollector``): workers write each epoch's duration and image
  count on its metrics row, so no worker needs a port of its own and every API process reports the
  same values (scrape any one).
- Prediction latency, predicted images and uploaded bytes are counted in the API process that
  served the request. With several API processes (``uvicorn --workers N``) set
  ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory shared by them: prometheus-client's
  multiprocess mode then adds up every process's values on each scrape.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from core.jobs.db import transaction
from core.jobs.models import Job, JobMetric, JobState

log = logging.getLogger(__name__)

PREDICT_SECONDS = Histogram(
    "clipadapt_predict_seconds", "Time to answer a /predict request.", ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PREDICT_IMAGES = Counter("clipadapt_predict_images", "Images classified by /predict.", ["kind"])
UPLOAD_BYTES = Counter("clipadapt_upload_bytes", "Bytes of dataset archives accepted by POST /datasets.")

JOB_DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600)


def observe_prediction(kind: str, images: int, seconds: float) -> None:
    PREDICT_SECONDS.labels(kind).observe(seconds)
    PREDICT_IMAGES.labels(kind).inc(images)


class JobStatsCollector:
    """Job metrics computed from the database at scrape time."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("clipadapt_metrics_database_up", "1 if the job metrics could be read from the database.")
        try:
            with transaction(self.db_url) as session:
                families = list(self._families(session))
        except SQLAlchemyError as e:
            log.warning("metrics: database unreachable: %s", str(e).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session: Any) -> Iterator[Metric]:
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        jobs = GaugeMetricFamily("clipadapt_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        queue = GaugeMetricFamily("clipadapt_queue_depth", "Jobs waiting for a worker (state queued).")
        queue.add_metric([], counts.get(JobState.queued, 0))
        yield queue
        pending = session.scalar(select(func.count()).where(Job.state == JobState.queued, Job.dispatch_pending))
        outbox = GaugeMetricFamily(
            "clipadapt_jobs_dispatch_pending", "Queued jobs not yet handed to the broker (it was unreachable)."
        )
        outbox.add_metric([], pending or 0)
        yield outbox
        yield self._durations(session)
        yield from self._throughput(session)

    def _durations(self, session: Any) -> Metric:
        """From submission to the end, per final state: what a user waits for a result."""
        rows = session.execute(
            select(Job.state, Job.created_at, Job.finished_at).where(Job.finished_at.is_not(None))
        ).all()
        by_state: dict[str, list[float]] = defaultdict(list)
        for state, created, finished in rows:
            by_state[str(state)].append(max(0.0, (finished - created).total_seconds()))
        family = HistogramMetricFamily(
            "clipadapt_job_duration_seconds", "Time from a job's submission to its end, by final state.",
            labels=["state"],
        )
        for state, values in sorted(by_state.items()):
            buckets = [(str(b), sum(v <= b for v in values)) for b in JOB_DURATION_BUCKETS]
            family.add_metric([state], buckets + [("+Inf", len(values))], sum(values))
        return family

    def _throughput(self, session: Any) -> Iterator[Metric]:
        images = session.scalar(select(func.coalesce(func.sum(JobMetric.images), 0)))
        total = CounterMetricFamily(
            "clipadapt_training_images", "Training images processed by all workers (rate(): images/s)."
        )
        total.add_metric([], float(images or 0))
        yield total
        running = GaugeMetricFamily(
            "clipadapt_training_images_per_second", "Training throughput of each running job's last epoch.",
            labels=["job_id"],
        )
        latest = (
            select(JobMetric.job_id, func.max(JobMetric.id).label("last"))
            .join(Job, Job.id == JobMetric.job_id)
            .where(Job.state == JobState.running)
            .group_by(JobMetric.job_id)
            .subquery()
        )
        for job_id, seconds, count in session.execute(
            select(JobMetric.job_id, JobMetric.seconds, JobMetric.images).join(latest, JobMetric.id == latest.c.last)
        ):
            if seconds and count:
                running.add_metric([job_id], count / seconds)
        yield running


class _ThisProcess:
    """The metrics of this process's default registry (predictions, uploads, process stats)."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render_metrics(db_url: str) -> bytes:
    """The Prometheus text exposition: the database's job metrics and the API processes' own."""
    registry = CollectorRegistry()
    registry.register(JobStatsCollector(db_url))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    return generate_latest(registry)

"""ORM models: API keys, datasets, jobs, job events, per-epoch job metrics and sweeps.

Datasets and jobs belong to an ``owner`` (the owner named on the API key that created them); with
authentication disabled everything belongs to ``LOCAL_OWNER``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Enum, ForeignKey, Integer, MetaData, String, Text, false
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use core.jobs.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    # A sweep trial its pruner stopped early (successive halving): it ended on purpose, with the
    # validation metrics of its best epoch so far, and no artifact.
    pruned = "pruned"

    @property
    def active(self) -> bool:
        return self in (JobState.queued, JobState.running)


TERMINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled, JobState.pruned)


class SweepState(enum.StrEnum):
    running = "running"  # trials queued or training
    finishing = "finishing"  # every trial ended, the best is chosen; its test split is being scored
    succeeded = "succeeded"
    failed = "failed"  # no trial succeeded
    cancelled = "cancelled"

    @property
    def active(self) -> bool:
        return self in (SweepState.running, SweepState.finishing)


ACTIVE_STATES = (JobState.queued, JobState.running)

LOCAL_OWNER = "local"  # the single owner when authentication is disabled


class ApiKey(Base):
    """An API key: only a SHA-256 hash of the secret is stored (keys are random, 256-bit)."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Dataset(Base):
    __tablename__ = "dataset"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    archive_key: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    class_ids: Mapped[list[str]] = mapped_column(JSONType)
    classnames: Mapped[list[str]] = mapped_column(JSONType)
    split_counts: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "job"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, name="job_state", native_enum=False, length=16, validate_strings=True),
        default=JobState.queued,
        index=True,
    )
    # Nulled when a dataset is deleted; finished jobs keep their results.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset.id", ondelete="SET NULL"), index=True
    )
    base_model: Mapped[str] = mapped_column(String(255))
    # The catalog entry as it was when the job was created (name, model, pretrained, quick_gelu).
    base_model_spec: Mapped[dict[str, Any]] = mapped_column()
    recipe: Mapped[dict[str, Any]] = mapped_column()
    resolved_recipe: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    auto_decision: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    stage: Mapped[int | None] = mapped_column(Integer)
    stage_name: Mapped[str | None] = mapped_column(String(64))
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    val_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    artifact_key: Mapped[str | None] = mapped_column(String(512))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The outbox: true from the moment the job is stored until the broker accepted its task. The
    # recovery loop dispatches queued jobs still marked (the broker was down, or the API stopped).
    dispatch_pending: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The worker holding the job while it runs, and until when; heartbeats push the expiry forward.
    # A running job whose lease expired was abandoned and may be re-queued.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    cancel_requested_at: Mapped[datetime | None] = mapped_column()

    # The sweep this job is a trial of, and its Optuna trial number there.
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweep.id", ondelete="SET NULL"), index=True)
    sweep_trial: Mapped[int | None] = mapped_column(Integer)

    dataset: Mapped[Dataset | None] = relationship(lazy="joined")


class JobEvent(Base):
    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "state" | "message"
    state: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobMetric(Base):
    __tablename__ = "job_metric"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    stage: Mapped[int] = mapped_column(Integer)
    stage_name: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float]
    val: Mapped[dict[str, Any]] = mapped_column()
    best: Mapped[bool]
    # Wall time of the epoch (training and validation) and the training images it saw.
    seconds: Mapped[float | None] = mapped_column()
    images: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sweep(Base):
    """A hyperparameter sweep: a grid of recipes, each an ordinary job (a trial) on the same
    dataset, split and seeds; weak trials are pruned by successive halving (core.jobs.sweeps)."""

    __tablename__ = "sweep"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[SweepState] = mapped_column(
        Enum(SweepState, name="sweep_state", native_enum=False, length=16, validate_strings=True),
        default=SweepState.running,
        index=True,
    )
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset.id", ondelete="SET NULL"), index=True)
    base_model: Mapped[str] = mapped_column(String(255))
    base_model_spec: Mapped[dict[str, Any]] = mapped_column()
    # What was asked: {"preset": ..., "space": {...}, "recipe": {...}} and the expanded grid.
    space: Mapped[dict[str, Any]] = mapped_column()
    # {"max_trials": int | None, "max_device_minutes": float | None}
    budget: Mapped[dict[str, Any]] = mapped_column()
    # SuccessiveHalvingPruner arguments: {"min_resource", "reduction_factor", "min_early_stopping_rate"}
    pruner: Mapped[dict[str, Any]] = mapped_column()
    # Job ids, not foreign keys: job.sweep_id already points here, and a cycle of foreign keys
    # would make inserts and drops order-dependent.
    best_job_id: Mapped[str | None] = mapped_column(String(32))
    promoted_job_id: Mapped[str | None] = mapped_column(String(32))
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

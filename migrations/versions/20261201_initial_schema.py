"""initial schema: dataset, job, job_event, job_metric

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "dataset",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("archive_key", sa.String(512), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("class_ids", JSON, nullable=False),
        sa.Column("classnames", JSON, nullable=False),
        sa.Column("split_counts", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset")),
    )
    op.create_table(
        "job",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column(
            "state",
            sa.Enum(*JOB_STATES, name="job_state", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("base_model_spec", JSON, nullable=False),
        sa.Column("recipe", JSON, nullable=False),
        sa.Column("resolved_recipe", JSON, nullable=True),
        sa.Column("auto_decision", JSON, nullable=True),
        sa.Column("stage", sa.Integer(), nullable=True),
        sa.Column("stage_name", sa.String(64), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("trainable_params", sa.BigInteger(), nullable=True),
        sa.Column("val_metrics", JSON, nullable=True),
        sa.Column("test_metrics", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("artifact_key", sa.String(512), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=True),
        sa.Column("cancel_requested_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset.id"],
            name=op.f("fk_job_dataset_id_dataset"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job")),
    )
    op.create_index(op.f("ix_job_created_at"), "job", ["created_at"])
    op.create_index(op.f("ix_job_dataset_id"), "job", ["dataset_id"])
    op.create_index(op.f("ix_job_state"), "job", ["state"])

    op.create_table(
        "job_event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_job_event_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_event")),
    )
    op.create_index(op.f("ix_job_event_job_id"), "job_event", ["job_id"])

    op.create_table(
        "job_metric",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("stage_name", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Double(), nullable=False),
        sa.Column("val", JSON, nullable=False),
        sa.Column("best", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_job_metric_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_metric")),
    )
    op.create_index(op.f("ix_job_metric_job_id"), "job_metric", ["job_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_metric_job_id"), table_name="job_metric")
    op.drop_table("job_metric")
    op.drop_index(op.f("ix_job_event_job_id"), table_name="job_event")
    op.drop_table("job_event")
    op.drop_index(op.f("ix_job_state"), table_name="job")
    op.drop_index(op.f("ix_job_dataset_id"), table_name="job")
    op.drop_index(op.f("ix_job_created_at"), table_name="job")
    op.drop_table("job")
    op.drop_table("dataset")

"""sweeps: a sweep table, job.sweep_id / job.sweep_trial, and the job state ``pruned``

A sweep runs a grid of recipes as ordinary jobs (its trials) and stops weak ones early
(successive halving); a stopped trial ends in the new job state ``pruned`` (job.state is a
non-native enum, a VARCHAR(16): the new value needs no DDL). Optuna keeps its own tables (the
pruner's bookkeeping) in the Postgres schema ``clipadapt_optuna``, created on first use; the
downgrade drops it. On SQLite Optuna uses a sibling file instead (``<db>-optuna.db``), which the
downgrade deletes.

Revision ID: 0004_sweeps
Revises: 0003_outbox_epoch_seconds
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_sweeps"
down_revision: str | None = "0003_outbox_epoch_seconds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SWEEP_STATES = ("running", "finishing", "succeeded", "failed", "cancelled")
OPTUNA_SCHEMA = "clipadapt_optuna"


def upgrade() -> None:
    op.create_table(
        "sweep",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("state", sa.Enum(*SWEEP_STATES, name="sweep_state", native_enum=False, length=16), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=True),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("base_model_spec", JSON, nullable=False),
        sa.Column("space", JSON, nullable=False),
        sa.Column("budget", JSON, nullable=False),
        sa.Column("pruner", JSON, nullable=False),
        sa.Column("best_job_id", sa.String(32), nullable=True),
        sa.Column("promoted_job_id", sa.String(32), nullable=True),
        sa.Column("test_metrics", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["dataset.id"], name=op.f("fk_sweep_dataset_id_dataset"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep")),
    )
    op.create_index(op.f("ix_sweep_owner"), "sweep", ["owner"])
    op.create_index(op.f("ix_sweep_state"), "sweep", ["state"])
    op.create_index(op.f("ix_sweep_dataset_id"), "sweep", ["dataset_id"])
    op.create_index(op.f("ix_sweep_created_at"), "sweep", ["created_at"])
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("sweep_trial", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_job_sweep_id_sweep"), "sweep", ["sweep_id"], ["id"], ondelete="SET NULL")
        batch.create_index(op.f("ix_job_sweep_id"), ["sweep_id"])


def downgrade() -> None:
    # Pruned trials become 'cancelled' (the closest state the old schema knows): they stopped
    # on purpose and have no artifact.
    op.execute("UPDATE job SET state = 'cancelled' WHERE state = 'pruned'")
    with op.batch_alter_table("job") as batch:
        batch.drop_index(op.f("ix_job_sweep_id"))
        batch.drop_constraint(op.f("fk_job_sweep_id_sweep"), type_="foreignkey")
        batch.drop_column("sweep_trial")
        batch.drop_column("sweep_id")
    op.drop_index(op.f("ix_sweep_created_at"), table_name="sweep")
    op.drop_index(op.f("ix_sweep_dataset_id"), table_name="sweep")
    op.drop_index(op.f("ix_sweep_state"), table_name="sweep")
    op.drop_index(op.f("ix_sweep_owner"), table_name="sweep")
    op.drop_table("sweep")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(f"DROP SCHEMA IF EXISTS {OPTUNA_SCHEMA} CASCADE")
    elif bind.dialect.name == "sqlite" and bind.engine.url.database not in (None, "", ":memory:"):
        # The same name core.jobs.sweeps gives it (a migration keeps its own copy: it must not change
        # when the application does).
        database = Path(bind.engine.url.database)
        database.with_name(f"{database.stem}-optuna.db").unlink(missing_ok=True)

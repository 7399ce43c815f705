"""job dispatch outbox; epoch durations

``job.dispatch_pending`` is true from the moment a job is stored until the broker accepted its
task; the recovery loop dispatches queued jobs that still have it (the broker was down at POST
/jobs, or the API stopped in between). ``job_metric.seconds`` and ``images`` record how long each
epoch took and how many training images it saw (training throughput, exported on /metrics).

Revision ID: 0003_outbox_epoch_seconds
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_outbox_epoch_seconds"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("dispatch_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("job_metric") as batch:
        batch.add_column(sa.Column("seconds", sa.Double(), nullable=True))
        batch.add_column(sa.Column("images", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_metric") as batch:
        batch.drop_column("images")
        batch.drop_column("seconds")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("dispatch_pending")

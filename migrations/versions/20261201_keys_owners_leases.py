"""api keys, owners of datasets and jobs, job leases

Rows that exist before this revision belong to the owner ``local`` (what a deployment without
authentication uses); give them to a key's owner with an UPDATE if needed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
LOCAL_OWNER = "local"


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
    )
    op.create_index(op.f("ix_api_key_owner"), "api_key", ["owner"])

    for table in ("dataset", "job"):
        with op.batch_alter_table(table) as batch:
            # The server default fills existing rows; new rows always name their owner.
            batch.add_column(sa.Column("owner", sa.String(255), nullable=False, server_default=LOCAL_OWNER))
        with op.batch_alter_table(table) as batch:
            batch.alter_column("owner", server_default=None)
            batch.create_index(op.f(f"ix_{table}_owner"), ["owner"])

    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(255), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", TIMESTAMP, nullable=True))
        batch.create_index(op.f("ix_job_lease_expires_at"), ["lease_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index(op.f("ix_job_lease_expires_at"))
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
    for table in ("job", "dataset"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(op.f(f"ix_{table}_owner"))
            batch.drop_column("owner")
    op.drop_index(op.f("ix_api_key_owner"), table_name="api_key")
    op.drop_table("api_key")

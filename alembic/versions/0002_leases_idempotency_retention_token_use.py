"""job delivery times, idempotency keys, photo retention, photo sizes, token last use

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("photos_purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_jobs_owner_id_idempotency_key", ["owner_id", "idempotency_key"])
    # note: jobs made before this revision count as just enqueued, so the reaper re-sends them later.
    op.execute("UPDATE jobs SET enqueued_at = created_at")
    with op.batch_alter_table("photos") as batch:
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("last_used_at")
    with op.batch_alter_table("photos") as batch:
        batch.drop_column("size_bytes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_owner_id_idempotency_key", type_="unique")
        batch.drop_column("photos_purged_at")
        batch.drop_column("idempotency_key")
        batch.drop_column("enqueued_at")
        batch.drop_column("claimed_at")

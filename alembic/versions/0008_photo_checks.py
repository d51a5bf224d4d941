"""photo crop boxes, checks and captions (filled in by the photo work)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("photos") as batch:
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("crop_box", JSON, nullable=True))
        batch.add_column(sa.Column("checks", JSON, nullable=True))
        batch.add_column(sa.Column("caption", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("photos") as batch:
        for column in ("caption", "checks", "crop_box", "name"):
            batch.drop_column(column)

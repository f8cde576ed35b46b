"""Checksums of ingested data: sha256 and size of each upload's Parquet object under
data/ (the same bytes after retention copies it to archive/), so the integrity check
can compare the store with the catalog. Nullable: uploads ingested before this revision
get theirs on a `verify --record` pass (trust on first verify).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("data_sha256", sa.String(64)))
        batch.add_column(sa.Column("data_size", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("data_size")
        batch.drop_column("data_sha256")

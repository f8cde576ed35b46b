"""Row-hash index for exact row deduplication across a tenant's dataset.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("dataset", sa.String(63), nullable=False),
        sa.UniqueConstraint("tenant", "dataset", name="uq_datasets_name"),
    )
    op.create_table(
        "row_hashes",
        sa.Column("dataset_id", sa.BigInteger, primary_key=True),
        sa.Column("row_hash", sa.BigInteger, primary_key=True),
        sa.Column("upload_id", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,  # the primary key is the table: one B-tree fewer per insert
    )
    op.create_index("ix_row_hashes_upload", "row_hashes", ["upload_id"])


def downgrade() -> None:
    op.drop_table("row_hashes")
    op.drop_table("datasets")

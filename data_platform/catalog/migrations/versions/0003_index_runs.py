"""Persistent indexes as immutable runs in the object store; a quality score per upload.

The row-hash index leaves the catalog: a row per kept row made every claim a B-tree
insert per row (1.5 s per 200 MB on SQLite, growing with the index). An index is now a
set of runs, one sorted object per fresh upload under _platform/indexes/, registered
here in the transaction that makes the upload fresh. No data is carried over: the
table existed only in pre-release development catalogs.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.drop_index("ix_row_hashes_upload", "row_hashes")
    op.drop_table("row_hashes")
    op.create_table(
        "index_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), nullable=False),
        sa.Column("object_key", sa.String(1024), nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("kind", "upload_id", name="uq_index_runs_kind_upload"),
    )
    op.create_index("ix_index_runs_dataset_kind", "index_runs", ["dataset_id", "kind", "id"])
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("quality", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("quality")
    op.drop_index("ix_index_runs_dataset_kind", "index_runs")
    op.drop_table("index_runs")
    op.create_table(
        "row_hashes",
        sa.Column("dataset_id", sa.BigInteger, primary_key=True),
        sa.Column("row_hash", sa.BigInteger, primary_key=True),
        sa.Column("upload_id", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_row_hashes_upload", "row_hashes", ["upload_id"])

"""Lifecycle: training sets and their claims, usage lineage, tombstones, and the
timestamps retention needs.

`uploads.uses` counts usages (training-set builds and recorded reads) so the cleanup
planner reads one row per file; `ingested_at` (when it became fresh) and `state_since`
(when it entered its state) are the clocks of the retention policy. Both are filled
from `updated_at` for existing rows: until now the last update of a settled upload was
the transition into its state.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("uses", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("ingested_at", sa.DateTime))
        batch.add_column(sa.Column("state_since", sa.DateTime))
    op.execute("UPDATE uploads SET state_since = updated_at")
    op.execute("UPDATE uploads SET ingested_at = updated_at WHERE state IN ('fresh', 'used', 'archived', 'deprecated')")

    op.create_table(
        "training_sets",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("filters", sa.Text, nullable=False),
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", sa.DateTime),
        sa.Column("sample", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("prefix", sa.String(1024), nullable=False),
        sa.Column("manifest_sha256", sa.String(64)),
        sa.Column("files", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows", sa.BigInteger),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("completed_at", sa.DateTime),
        sa.Column("detail", sa.Text),
        sa.UniqueConstraint("tenant", "name", "version", name="uq_training_sets_version"),
    )
    op.create_index("ix_training_sets_state", "training_sets", ["state"])
    op.create_table(
        "training_set_files",
        sa.Column("training_set_id", sa.BigInteger, sa.ForeignKey("training_sets.id"), primary_key=True),
        sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), primary_key=True),
        sa.Column("rows", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_training_set_files_upload", "training_set_files", ["upload_id"])
    op.create_table(
        "usages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), nullable=False),
        sa.Column("training_set_id", sa.BigInteger, sa.ForeignKey("training_sets.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(128)),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_usages_upload", "usages", ["upload_id"])
    op.create_index("ix_usages_training_set", "usages", ["training_set_id"])
    op.create_table(
        "tombstones",
        sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), primary_key=True),
        sa.Column("tenant", sa.String(63)),
        sa.Column("dataset", sa.String(63)),
        sa.Column("landing_key", sa.String(1024), nullable=False),
        sa.Column("object_key", sa.String(1024)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("deleted_at", sa.DateTime, nullable=False),
        sa.Column("deleted_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tombstones")
    op.drop_index("ix_usages_training_set", "usages")
    op.drop_index("ix_usages_upload", "usages")
    op.drop_table("usages")
    op.drop_index("ix_training_set_files_upload", "training_set_files")
    op.drop_table("training_set_files")
    op.drop_index("ix_training_sets_state", "training_sets")
    op.drop_table("training_sets")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("state_since")
        batch.drop_column("ingested_at")
        batch.drop_column("uses")

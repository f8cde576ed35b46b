"""Upload ledger, content index and audit trail.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("landing_key", sa.String(1024), nullable=False),
        sa.Column("etag", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("last_modified", sa.DateTime, nullable=False),
        sa.Column("tenant", sa.String(63)),
        sa.Column("dataset", sa.String(63)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("rows", sa.BigInteger),
        sa.Column("quarantined_rows", sa.BigInteger),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("object_key", sa.String(1024)),
        sa.Column("duplicate_of", BigId, sa.ForeignKey("uploads.id")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", sa.DateTime),
        sa.Column("detected_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("landing_key", "etag", "last_modified", name="uq_uploads_identity"),
    )
    op.create_index("ix_uploads_partition_state", "uploads", ["tenant", "dataset", "state"])
    op.create_index("ix_uploads_state", "uploads", ["state"])
    op.create_table(
        "contents",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("upload_id", BigId, sa.ForeignKey("uploads.id"), nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("upload_id", BigId, sa.ForeignKey("uploads.id")),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64)),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_audit_log_upload", "audit_log", ["upload_id"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("contents")
    op.drop_table("uploads")

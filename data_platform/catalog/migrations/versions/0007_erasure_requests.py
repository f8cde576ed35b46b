"""Erasure requests (GDPR art. 17): one row per request, and one per object it changes,
so that a retried request resumes where it stopped and never counts an object twice.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("subject_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("completed_at", sa.DateTime),
        sa.Column("receipt_key", sa.String(1024)),
        sa.Column("receipt_sha256", sa.String(64)),
    )
    op.create_index("ix_erasure_requests_tenant", "erasure_requests", ["tenant", "state"])
    op.create_table(
        "erasure_steps",
        sa.Column("request_id", sa.String(64), sa.ForeignKey("erasure_requests.request_id"), primary_key=True),
        sa.Column("object_key", sa.String(1024), primary_key=True),
        sa.Column("what", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("upload_id", sa.BigInteger),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erasure_steps")
    op.drop_index("ix_erasure_requests_tenant", "erasure_requests")
    op.drop_table("erasure_requests")

"""Erasure, continued: the suppression list (a tenant's erased subjects, by pseudonym, so
that uploads ingested after an erasure do not bring them back) and a lease on each
erasure request (one run of a request at a time; a crashed run's lease expires).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "erasure_suppressions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("column_name", sa.String(1024), nullable=False, server_default=""),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("tenant", "kind", "column_name", "pseudonym", name="uq_erasure_suppressions_subject"),
    )
    op.create_index("ix_erasure_suppressions_tenant", "erasure_suppressions", ["tenant", "id"])
    with op.batch_alter_table("erasure_requests") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(128)))
        batch.add_column(sa.Column("claimed_until", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("erasure_requests") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
    op.drop_index("ix_erasure_suppressions_tenant", "erasure_suppressions")
    op.drop_table("erasure_suppressions")

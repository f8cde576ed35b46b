"""Feature store: feature definitions per tenant (append-only revisions), immutable
feature versions, and the source files each version was built from.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "feature_definitions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("definition_sha256", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("description", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("tenant", "name", "revision", name="uq_feature_definitions_revision"),
    )
    op.create_table(
        "feature_versions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("definition_id", sa.BigInteger, sa.ForeignKey("feature_definitions.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(1024), nullable=False),
        sa.Column("code_version", sa.String(256), nullable=False),
        sa.Column("rows", sa.BigInteger),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("schema", sa.Text),
        sa.Column("manifest_sha256", sa.String(64)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("completed_at", sa.DateTime),
        sa.Column("detail", sa.Text),
        sa.UniqueConstraint("tenant", "name", "version", name="uq_feature_versions_version"),
    )
    op.create_index("ix_feature_versions_state", "feature_versions", ["tenant", "name", "state"])
    op.create_table(
        "feature_version_sources",
        sa.Column("version_id", sa.BigInteger, sa.ForeignKey("feature_versions.id"), primary_key=True),
        sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), primary_key=True),
        sa.Column("sha256", sa.String(64)),
        sa.Column("object_key", sa.String(1024), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_feature_version_sources_upload", "feature_version_sources", ["upload_id"])


def downgrade() -> None:
    op.drop_index("ix_feature_version_sources_upload", "feature_version_sources")
    op.drop_table("feature_version_sources")
    op.drop_index("ix_feature_versions_state", "feature_versions")
    op.drop_table("feature_versions")
    op.drop_table("feature_definitions")

"""Catalog tables (SQLAlchemy Core). The migrations in `migrations/versions/` create
them; this module is what the code queries. Keep the two in step: a test compares
the migrated database with this metadata."""

import sqlalchemy as sa

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so it autoincrements) on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

# Alembic's revision table for the catalog. Not the default `alembic_version`: Dagster's
# PostgreSQL storage keeps its own there, and the two may share a database.
VERSION_TABLE = "data_platform_schema_version"

# One row per upload: an object version seen in landing. The unique identity makes
# registration idempotent whatever the sensor or a retry does.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("landing_key", sa.String(1024), nullable=False),
    sa.Column("etag", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("last_modified", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("tenant", sa.String(63)),  # null only for keys quarantined as invalid_key
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
    sa.Index("ix_uploads_partition_state", "tenant", "dataset", "state"),
    sa.Index("ix_uploads_state", "state"),
)

# First ingested upload per (tenant, content hash): the unique key makes "same bytes
# ingested once per tenant" hold even when two runs race.
contents = sa.Table(
    "contents",
    metadata,
    sa.Column("tenant", sa.String(63), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("upload_id", BigId, sa.ForeignKey("uploads.id"), nullable=False),
)

# Every state change, written in the same transaction as the change itself.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("upload_id", BigId, sa.ForeignKey("uploads.id")),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64)),
    sa.Column("detail", sa.Text),
    sa.Index("ix_audit_log_upload", "upload_id"),
)

# Datasets by number, so the row-hash index stays narrow.
datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("dataset", sa.String(63), nullable=False),
    sa.UniqueConstraint("tenant", "dataset", name="uq_datasets_name"),
)

# One row per distinct row content kept in a dataset (64-bit content hash),
# owned by the upload that first kept it. The primary key makes "first one wins" hold
# across concurrent runs; re-running the same upload finds its own rows again. No
# foreign keys: two checks per inserted row made bulk claims five times slower.
row_hashes = sa.Table(
    "row_hashes",
    metadata,
    sa.Column("dataset_id", sa.BigInteger, primary_key=True),
    sa.Column("row_hash", sa.BigInteger, primary_key=True),
    sa.Column("upload_id", sa.BigInteger, nullable=False),
    sa.Index("ix_row_hashes_upload", "upload_id"),
    sqlite_with_rowid=False,  # the primary key is the table: one B-tree fewer per insert
)

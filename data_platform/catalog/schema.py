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
    sa.Column("quality", sa.Float),  # 0..1, the upload's quality score (fresh uploads)
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

# Datasets by number, for the index runs.
datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("dataset", sa.String(63), nullable=False),
    sa.UniqueConstraint("tenant", "dataset", name="uq_datasets_name"),
)

# Persistent per-dataset indexes (row hashes, near-duplicate bands, erasure subjects)
# are immutable sorted objects in the store, one "run" per fresh upload, registered here
# in the same transaction that makes the upload fresh: a run not listed here (a crashed
# attempt's) is ignored. Runs are read in id order, which is commit order.
index_runs = sa.Table(
    "index_runs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), nullable=False),
    sa.Column("object_key", sa.String(1024), nullable=False),
    sa.Column("entries", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("kind", "upload_id", name="uq_index_runs_kind_upload"),
    sa.Index("ix_index_runs_dataset_kind", "dataset_id", "kind", "id"),
)

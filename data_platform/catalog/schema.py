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
    # Retention's inputs: usages so far, when the upload became fresh, when it entered its state.
    sa.Column("uses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("ingested_at", sa.DateTime),
    sa.Column("state_since", sa.DateTime),
    # The data object's sha256 and size (data/, then the same bytes in archive/), for the
    # integrity check; null until ingestion or a `verify --record` pass fills them.
    sa.Column("data_sha256", sa.String(64)),
    sa.Column("data_size", sa.BigInteger),
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

# A training set: one versioned snapshot under training_sets/{tenant}/{name}/{version}/.
# `building` holds its files' claim (they are `used` from the claim on) under a lease;
# `complete` once manifest.json is written; `released` when a build failed and gave its
# files back. A build that crashed is completed by the next one, after its lease.
training_sets = sa.Table(
    "training_sets",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("filters", sa.Text, nullable=False),  # JSON
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
    sa.Index("ix_training_sets_state", "state"),
)

# The files a training set holds (its claim): fresh files are claimed by one set only.
training_set_files = sa.Table(
    "training_set_files",
    metadata,
    sa.Column("training_set_id", sa.BigInteger, sa.ForeignKey("training_sets.id"), primary_key=True),
    sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), primary_key=True),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Index("ix_training_set_files_upload", "upload_id"),
)

# Usage lineage: every time a file's data went into a training set (`build`, `sample`)
# or a consumer recorded reading one (`read`). `uploads.uses` counts these rows.
usages = sa.Table(
    "usages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), nullable=False),
    sa.Column("training_set_id", sa.BigInteger, sa.ForeignKey("training_sets.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("consumer", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(128)),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Index("ix_usages_upload", "upload_id"),
    sa.Index("ix_usages_training_set", "training_set_id"),
)

# What is left of a deleted upload's data: who deleted it, when, why, and what it was.
tombstones = sa.Table(
    "tombstones",
    metadata,
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

# -- feature store ----------------------------------------------------------------------

# A feature table's definition, per tenant and name. Append-only: registering a changed
# definition adds the next revision; registering the latest one again changes nothing.
feature_definitions = sa.Table(
    "feature_definitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("name", sa.String(63), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("definition", sa.Text, nullable=False),  # canonical JSON
    sa.Column("definition_sha256", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(128)),
    sa.Column("description", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.UniqueConstraint("tenant", "name", "revision", name="uq_feature_definitions_revision"),
)

# One immutable materialisation of a feature table under features/{tenant}/{name}/v{version}/.
# `building` while its parts are written, `complete` once manifest.json is, `failed`
# when a build gave up. Numbers are never reused, so a prefix has one writer, ever.
feature_versions = sa.Table(
    "feature_versions",
    metadata,
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
    sa.Column("schema", sa.Text),  # JSON: [{name, type}]
    sa.Column("manifest_sha256", sa.String(64)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("detail", sa.Text),
    sa.UniqueConstraint("tenant", "name", "version", name="uq_feature_versions_version"),
    sa.Index("ix_feature_versions_state", "tenant", "name", "state"),
)

# The uploads a complete version was built from (lineage; erasure finds versions by upload).
feature_version_sources = sa.Table(
    "feature_version_sources",
    metadata,
    sa.Column("version_id", sa.BigInteger, sa.ForeignKey("feature_versions.id"), primary_key=True),
    sa.Column("upload_id", sa.BigInteger, sa.ForeignKey("uploads.id"), primary_key=True),
    sa.Column("sha256", sa.String(64)),
    sa.Column("object_key", sa.String(1024), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Index("ix_feature_version_sources_upload", "upload_id"),
)

# -- erasure (GDPR art. 17) -------------------------------------------------------------

# One erasure request: `started` until every object is dealt with and the receipt is
# written, then `done`. The id derives from (tenant, subject, client id or day), so a
# retry finds its row and resumes, and a finished request returns its receipt.
erasure_requests = sa.Table(
    "erasure_requests",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("subject_sha256", sa.String(64), nullable=False),  # sha256 of the pseudonyms, never a raw value
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),  # JSON: kinds, column
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("receipt_key", sa.String(1024)),
    sa.Column("receipt_sha256", sa.String(64)),
    # One run of a request at a time: the run holding it renews the lease with every step;
    # a crashed run's lease runs out and the next run takes the request over (0008).
    sa.Column("claimed_by", sa.String(128)),
    sa.Column("claimed_until", sa.DateTime),
    sa.Index("ix_erasure_requests_tenant", "tenant", "state"),
)

# Each object a request changes, written before its new bytes are (state `writing`: the
# before/after checksums, a write-ahead record) and marked `done` in the transaction that
# points the catalog at the new bytes. The receipt is built from these rows.
erasure_steps = sa.Table(
    "erasure_steps",
    metadata,
    sa.Column("request_id", sa.String(64), sa.ForeignKey("erasure_requests.request_id"), primary_key=True),
    sa.Column("object_key", sa.String(1024), primary_key=True),
    sa.Column("what", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # rewritten | deleted | not_rewritten
    sa.Column("state", sa.String(16), nullable=False),  # writing | written | done
    sa.Column("upload_id", sa.BigInteger),
    sa.Column("detail", sa.Text, nullable=False),  # JSON: before, after, reason
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# The suppression list: a tenant's erased subjects, so that uploads ingested after the
# erasure (those waiting in landing, those still to come) do not bring them back.
# Ingestion drops a row whose personal-data column of `kind` (any column with
# column_name '', else that one) holds `pseudonym`, the keyed pseudonym already written
# to data/ (never a raw value). Recorded before the request looks for the subject; the
# ingestion commit checks that no entry newer than those it applied was added (0008).
erasure_suppressions = sa.Table(
    "erasure_suppressions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(63), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # email | phone | ip | name
    sa.Column("column_name", sa.String(1024), nullable=False, server_default=""),
    sa.Column("pseudonym", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),  # the first request that erased it
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("tenant", "kind", "column_name", "pseudonym", name="uq_erasure_suppressions_subject"),
    sa.Index("ix_erasure_suppressions_tenant", "tenant", "id"),
)

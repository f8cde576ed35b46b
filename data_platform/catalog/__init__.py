"""The catalog: source of truth for the state of every upload.

SQLite on the embedded default, PostgreSQL in production, chosen by the SQLAlchemy
URL. Every state change is one transaction: a conditional UPDATE (the row must still
be in the state, and held by the claimer, that the caller expects) plus its audit row.
"""

import fcntl
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from data_platform import layout
from data_platform.catalog.schema import tombstones  # retention
from data_platform.catalog.schema import feature_definitions, feature_version_sources, feature_versions  # features
from data_platform.catalog.schema import erasure_requests, erasure_steps, erasure_suppressions  # erasure
from data_platform.catalog.schema import (
    VERSION_TABLE, audit_log, contents, datasets, index_runs, metadata, training_set_files, training_sets, uploads,
    usages,
)

# The states of PRODUCT.md's "life of a file", plus `duplicate` (same bytes as an
# earlier upload of the tenant) and `quarantined`.
LANDING = "landing"
FRESH = "fresh"
USED = "used"
ARCHIVED = "archived"
DEPRECATED = "deprecated"
DELETED = "deleted"
QUARANTINED = "quarantined"
DUPLICATE = "duplicate"
STATES = (LANDING, FRESH, USED, ARCHIVED, DEPRECATED, DELETED, QUARANTINED, DUPLICATE)
# States whose upload has been dealt with: its landing object may go.
SETTLED = frozenset(STATES) - {LANDING}
# States whose data counts as ingested content of the tenant.
INGESTED = frozenset({FRESH, USED, ARCHIVED, DEPRECATED})

MIGRATIONS = Path(__file__).parent / "migrations"
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


@dataclass(frozen=True)
class Upload:
    id: int
    landing_key: str
    etag: str
    size: int
    last_modified: datetime
    tenant: str | None
    dataset: str | None
    state: str
    sha256: str | None
    rows: int | None
    quarantined_rows: int | None
    reason: str | None
    detail: str | None
    object_key: str | None
    duplicate_of: int | None
    attempts: int
    claimed_by: str | None
    claimed_until: datetime | None
    detected_at: datetime
    updated_at: datetime
    quality: float | None = None
    uses: int = 0
    ingested_at: datetime | None = None
    state_since: datetime | None = None
    data_sha256: str | None = None  # of the data object (integrity); null until recorded
    data_size: int | None = None

    @classmethod
    def from_row(cls, row: sa.Row) -> "Upload":
        return cls(**row._mapping)

    @property
    def report(self) -> dict:
        """`detail` as a dict: the ingestion report of an ingested upload; {} when absent
        or when it holds the text of a failed attempt."""
        value = _json_or_text(self.detail)
        return value if isinstance(value, dict) else {}

    def as_status(self) -> dict[str, Any]:
        """The `data-platform status --json` entry (PRODUCT.md's fields first)."""
        return {
            "key": self.landing_key,
            "tenant": self.tenant,
            "dataset": self.dataset,
            "state": self.state,
            "sha256": self.sha256,
            "rows": self.rows,
            "quarantined_rows": self.quarantined_rows,
            "quality": self.quality,
            "reason": self.reason,
            "object_key": self.object_key,
            "upload_id": self.id,
            "size": self.size,
            "duplicate_of": self.duplicate_of,
            "uses": self.uses,
            "detected_at": _iso(self.detected_at),
            "ingested_at": _iso(self.ingested_at),
            "state_since": _iso(self.state_since),
            "updated_at": _iso(self.updated_at),
            "detail": _json_or_text(self.detail),
        }


@dataclass(frozen=True)
class Identity:
    """What makes an upload unique: one version of one landing key."""

    landing_key: str
    etag: str
    size: int
    last_modified: datetime  # any timezone; stored as naive UTC

    @property
    def db_key(self) -> tuple[str, str, datetime]:
        return (self.landing_key, self.etag, to_naive_utc(self.last_modified))


class TransitionConflict(RuntimeError):
    """The upload was not in the expected state or no longer held by this claimer."""


@dataclass(frozen=True)
class IndexRun:
    """One registered run of a dataset's persistent index (see schema.index_runs)."""
    id: int
    dataset_id: int
    kind: str
    upload_id: int
    object_key: str
    entries: int


@dataclass(frozen=True)
class StagedRun:
    """A run written to the store, to register with the upload that becomes fresh."""
    kind: str
    object_key: str
    entries: int


class IndexChanged(Exception):
    """Runs the caller had not seen were registered meanwhile (a concurrent run of the
    same dataset committed first): check them, then commit again with them seen."""

    def __init__(self, runs: list[IndexRun]):
        super().__init__(f"{len(runs)} index run(s) registered meanwhile")
        self.runs = runs


# Training-set states (see schema.training_sets).
BUILDING = "building"
COMPLETE = "complete"
RELEASED = "released"


@dataclass(frozen=True)
class TrainingSet:
    id: int
    tenant: str
    name: str
    version: int
    state: str
    filters: dict
    consumer: str
    created_by: str
    claimed_by: str | None
    claimed_until: datetime | None
    sample: bool
    prefix: str
    manifest_sha256: str | None
    files: int
    rows: int | None
    bytes: int | None
    created_at: datetime
    completed_at: datetime | None
    detail: str | None

    @classmethod
    def from_row(cls, row: sa.Row) -> "TrainingSet":
        values = dict(row._mapping)
        values["filters"] = json.loads(values["filters"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": self.tenant, "name": self.name, "version": self.version, "state": self.state,
            "sample": self.sample, "prefix": self.prefix, "manifest_key": f"{self.prefix}manifest.json",
            "manifest_sha256": self.manifest_sha256, "files": self.files, "rows": self.rows, "bytes": self.bytes,
            "filters": self.filters, "consumer": self.consumer, "created_by": self.created_by,
            "created_at": _iso(self.created_at), "completed_at": _iso(self.completed_at),
            "detail": _json_or_text(self.detail),
        }


class NoFreshData(LookupError):
    """Nothing fresh matched a training set's filters (or it was all claimed meanwhile)."""


@dataclass(frozen=True)
class Suppressions:
    """A tenant's suppression list (see schema.erasure_suppressions): kind -> column ('' for
    any column of the kind) -> pseudonyms; `seen` is the newest entry's id (0: none)."""
    seen: int
    by_kind: dict[str, dict[str, frozenset[str]]]

    def __bool__(self) -> bool:
        return bool(self.by_kind)


class SuppressionsChanged(Exception):
    """An erasure added subjects to the tenant's suppression list after this ingestion
    read it: ingest again with the new list."""


# Erasure-request states (see schema.erasure_requests).
ERASURE_STARTED = "started"
ERASURE_DONE = "done"


class ErasureLeaseLost(RuntimeError):
    """Another run took the erasure request over (this run's lease ran out): the
    transaction that found it recorded nothing."""


class DuplicateContent(Exception):
    def __init__(self, first_upload_id: int):
        super().__init__(first_upload_id)
        self.first_upload_id = first_upload_id


def _json_or_text(value: str | None):
    """`detail` holds JSON written by a transition, or the text of a failed attempt."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class RetentionRow(NamedTuple):
    """What cleanup reads of an upload (see `Catalog.retention_rows`)."""
    id: int
    tenant: str | None
    dataset: str | None
    landing_key: str
    state: str
    object_key: str | None
    uses: int
    ingested_at: datetime | None
    state_since: datetime | None
    size: int
    rows: int | None
    quarantined_rows: int | None
    tombstoned: bool
    held: bool  # by a training set still `building`: its build reads the data/ object


@dataclass(frozen=True)
class RetentionMove:
    """One retention transition to make; reason and detail go to the audit log."""
    upload_id: int
    from_state: str
    reason: str
    detail: dict | None = None


@dataclass(frozen=True)
class DeletedUpload:
    """An upload the delete transaction took to `deleted`: what its bytes were."""
    upload_id: int
    tenant: str | None
    dataset: str | None
    from_state: str
    object_key: str | None
    quarantined_rows: int | None
    index_keys: tuple[str, ...]


# Feature-version states (see schema.feature_versions); BUILDING and COMPLETE as above.
FAILED = "failed"


@dataclass(frozen=True)
class FeatureDefinitionRecord:
    """One revision of a feature table's definition, as registered (see data_platform.features)."""
    id: int
    tenant: str
    name: str
    revision: int
    definition: dict
    definition_sha256: str
    owner: str | None
    description: str | None
    created_at: datetime
    created_by: str

    @classmethod
    def from_row(cls, row: sa.Row) -> "FeatureDefinitionRecord":
        values = dict(row._mapping)
        values["definition"] = json.loads(values["definition"])
        return cls(**values)


@dataclass(frozen=True)
class FeatureVersion:
    """One materialisation of a feature table (see schema.feature_versions)."""
    id: int
    tenant: str
    name: str
    version: int
    definition_id: int
    revision: int
    state: str
    prefix: str
    code_version: str
    rows: int | None
    bytes: int | None
    schema: list | None
    manifest_sha256: str | None
    created_at: datetime
    created_by: str
    completed_at: datetime | None
    detail: str | None

    @classmethod
    def from_row(cls, row: sa.Row) -> "FeatureVersion":
        values = dict(row._mapping)
        values["schema"] = json.loads(values["schema"]) if values["schema"] else None
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "name": self.name, "version": self.version, "revision": self.revision,
            "state": self.state, "prefix": self.prefix, "manifest_key": f"{self.prefix}manifest.json",
            "manifest_sha256": self.manifest_sha256, "rows": self.rows, "bytes": self.bytes, "schema": self.schema,
            "code_version": self.code_version, "created_by": self.created_by, "created_at": _iso(self.created_at),
            "completed_at": _iso(self.completed_at), "detail": _json_or_text(self.detail),
        }


class Catalog:
    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = _make_engine(url)
        self._upsert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        self.migrate()

    # -- schema -------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision (once per process and URL)."""
        with _migrate_lock:
            if self.url in _migrated:
                return
            from alembic import command
            from alembic.config import Config

            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            with self._migration_lock() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            _migrated.add(self.url)

    @contextmanager
    def _migration_lock(self):
        # Several processes (webserver, daemon, runs) may open a new catalog at once.
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_lock(740310)"))
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(740310)"))
                    conn.commit()
            elif self.engine.url.database and self.engine.url.database != ":memory:":
                with open(f"{self.engine.url.database}.migrate.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    yield conn
            else:
                yield conn

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- registration (the sensor) ---------------------------------------------------

    def known_uploads(self, identities: Sequence[Identity]) -> dict[tuple, Upload]:
        """Ledger rows for the given identities, keyed by `Identity.db_key`."""
        with self.engine.connect() as conn:
            return {(u.landing_key, u.etag, u.last_modified): u for u in self._select_identities(conn, identities)}

    def register(self, new: Sequence[tuple[Identity, str | None, str | None]], actor: str) -> list[Upload]:
        """Add uploads in state `landing`; identities already present are left alone.

        `new` holds (identity, tenant, dataset). Returns the rows that now exist for
        them (newly inserted or not), so callers need no second lookup.
        """
        if not new:
            return []
        now = utcnow()
        inserted_ids: list[int] = []
        with self.engine.begin() as conn:
            for chunk in _chunks(list(new), 500):
                rows = [
                    {
                        "landing_key": ident.landing_key, "etag": ident.etag, "size": ident.size,
                        "last_modified": to_naive_utc(ident.last_modified), "tenant": tenant,
                        "dataset": dataset, "state": LANDING, "detected_at": now, "updated_at": now,
                        "state_since": now, "attempts": 0,
                    }
                    for ident, tenant, dataset in chunk
                ]
                stmt = self._upsert(uploads).on_conflict_do_nothing(
                    index_elements=["landing_key", "etag", "last_modified"]
                ).returning(uploads.c.id)
                inserted_ids += conn.execute(stmt, rows).scalars().all()
            if inserted_ids:
                conn.execute(audit_log.insert(), [
                    {"upload_id": i, "at": now, "actor": actor, "from_state": None, "to_state": LANDING}
                    for i in inserted_ids
                ])
            registered = self._select_identities(conn, [ident for ident, _, _ in new])
        return registered

    def _select_identities(self, conn: Connection, identities: Sequence[Identity]) -> list[Upload]:
        wanted = {i.db_key for i in identities}
        out = []
        for chunk in _chunks(sorted({i.landing_key for i in identities}), 500):
            for row in conn.execute(sa.select(uploads).where(uploads.c.landing_key.in_(chunk))):
                upload = Upload.from_row(row)
                if (upload.landing_key, upload.etag, upload.last_modified) in wanted:
                    out.append(upload)
        return out

    def pending_partitions(self, now: datetime | None = None) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, dataset) -> (newest pending upload id, total attempts) for uploads in
        landing that no live claim holds. The pair changes whenever there is new work or
        a failed attempt, so it makes a run key that retries without repeating itself."""
        now = now or utcnow()
        query = (
            sa.select(uploads.c.tenant, uploads.c.dataset, sa.func.max(uploads.c.id), sa.func.sum(uploads.c.attempts))
            .where(uploads.c.state == LANDING, uploads.c.tenant.is_not(None))
            .where(sa.or_(uploads.c.claimed_until.is_(None), uploads.c.claimed_until < now))
            .group_by(uploads.c.tenant, uploads.c.dataset)
        )
        with self.engine.connect() as conn:
            return {(t, d): (int(m), int(a or 0)) for t, d, m, a in conn.execute(query)}

    # -- claims (ingestion runs) -----------------------------------------------------

    def claim(self, tenant: str, dataset: str, claimer: str, *, lease: timedelta, limit: int,
              now: datetime | None = None) -> list[Upload]:
        """Take up to `limit` pending uploads of a dataset for `claimer`, oldest first.

        Each claim is a conditional UPDATE, so two runs never hold the same upload; an
        expired lease (a crashed run) can be taken over. Attempts count up per claim.
        """
        now = now or utcnow()
        free = sa.or_(uploads.c.claimed_until.is_(None), uploads.c.claimed_until < now)
        with self.engine.connect() as conn:
            candidates = conn.execute(
                sa.select(uploads.c.id)
                .where(uploads.c.tenant == tenant, uploads.c.dataset == dataset, uploads.c.state == LANDING, free)
                .order_by(uploads.c.id).limit(limit)
            ).scalars().all()
        claimed = []
        with self.engine.begin() as conn:
            for upload_id in candidates:
                result = conn.execute(
                    uploads.update()
                    .where(uploads.c.id == upload_id, uploads.c.state == LANDING, free)
                    .values(claimed_by=claimer, claimed_until=now + lease, attempts=uploads.c.attempts + 1)
                )
                if result.rowcount == 1:
                    claimed.append(upload_id)
            rows = conn.execute(sa.select(uploads).where(uploads.c.id.in_(claimed)).order_by(uploads.c.id))
            return [Upload.from_row(r) for r in rows]

    def release(self, upload_id: int, claimer: str, error: str) -> None:
        """Give a claimed upload back after a failed attempt; the next run retries it."""
        with self.engine.begin() as conn:
            conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id, uploads.c.claimed_by == claimer, uploads.c.state == LANDING)
                .values(claimed_by=None, claimed_until=None, detail=error[:2000], updated_at=utcnow())
            )

    # -- transitions -------------------------------------------------------------------

    def _transition(self, conn: Connection, upload_id: int, *, from_state: str, to_state: str, actor: str,
                    claimer: str | None, reason: str | None = None, detail: dict | None = None,
                    now: datetime | None = None, **values: Any) -> None:
        now = now or utcnow()
        where = [uploads.c.id == upload_id, uploads.c.state == from_state]
        if claimer is not None:
            where.append(uploads.c.claimed_by == claimer)
        result = conn.execute(
            uploads.update().where(*where).values(
                state=to_state, reason=reason, updated_at=now, state_since=now, claimed_by=None, claimed_until=None,
                detail=json.dumps(detail, sort_keys=True) if detail else None, **values,
            )
        )
        if result.rowcount != 1:
            raise TransitionConflict(f"upload {upload_id} is not {from_state} (held by {claimer})")
        conn.execute(audit_log.insert().values(
            upload_id=upload_id, at=now, actor=actor, from_state=from_state, to_state=to_state, reason=reason,
            detail=json.dumps(detail, sort_keys=True) if detail else None,
        ))

    def _name_lock(self, conn: Connection, what: str, *, shared: bool = False) -> None:
        """PostgreSQL: writers of one name (a training set's or feature table's next
        version) take turns until commit; held only for a short insert (`shared`: with
        each other, only not with an exclusive holder). SQLite needs none: its writers are
        serialised by the database lock."""
        if self.engine.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(what.encode()).digest()[:8], "big", signed=True)
            lock = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
            conn.execute(sa.text(f"SELECT {lock}(:key)"), {"key": key})

    def _move(self, conn: Connection, upload_ids: Sequence[int], *, from_state: str, to_state: str, actor: str,
              reason: str | None = None, detail: dict | None = None, now: datetime | None = None,
              **values: Any) -> list[int]:
        """Lifecycle transitions of many uploads at once (no claimer): each one moves only
        if it is still in `from_state`; returns the ids that moved. Unlike `_transition`,
        the upload's own reason and detail (its ingestion report) are kept; the reason
        and detail of the move go to the audit log."""
        now = now or utcnow()
        moved: list[int] = []
        for chunk in _chunks(list(upload_ids), 500):
            moved += conn.execute(
                uploads.update().where(uploads.c.id.in_(chunk), uploads.c.state == from_state)
                .values(state=to_state, updated_at=now, state_since=now, **values).returning(uploads.c.id)
            ).scalars().all()
        if moved:
            text = json.dumps(detail, sort_keys=True) if detail else None
            conn.execute(audit_log.insert(), [
                {"upload_id": i, "at": now, "actor": actor, "from_state": from_state, "to_state": to_state,
                 "reason": reason, "detail": text} for i in moved])
        return sorted(moved)

    def mark_fresh(self, upload: Upload, claimer: str, *, sha256: str, rows: int, quarantined_rows: int,
                   object_key: str, detail: dict | None = None, quality: float | None = None,
                   dataset_id: int | None = None, runs: Sequence[StagedRun] = (),
                   seen_runs: dict[str, int] | None = None, data_sha256: str | None = None,
                   data_size: int | None = None, suppressions_seen: int | None = None) -> None:
        """landing -> fresh, record the content as the tenant's first copy and register
        the upload's index runs, all in one transaction.

        Raises `DuplicateContent` (and changes nothing) when the same bytes were
        ingested for the tenant meanwhile, by a run that committed first; raises
        `IndexChanged` (and changes nothing) when runs of a kind in `seen_runs` newer
        than the id given there were registered for the dataset: commits of one dataset
        are serialised on its row, so of two racing runs the second always sees the first.
        Raises `SuppressionsChanged` (changing nothing) when `suppressions_seen` is given and
        an erasure added to the tenant's suppression list since.
        """
        with self.engine.begin() as conn:
            # The UPDATE comes first: on SQLite it takes the write lock, so what is read
            # below is the latest commit.
            self._transition(conn, upload.id, from_state=LANDING, to_state=FRESH, actor=claimer, claimer=claimer,
                             detail=detail, sha256=sha256, rows=rows, quarantined_rows=quarantined_rows,
                             object_key=object_key, quality=quality, ingested_at=utcnow(),
                             data_sha256=data_sha256, data_size=data_size)
            if suppressions_seen is not None:
                self._check_suppressions(conn, upload.tenant, suppressions_seen)
            if seen_runs:
                conn.execute(sa.select(datasets.c.id).where(datasets.c.id == dataset_id).with_for_update())
                newer = conn.execute(
                    sa.select(index_runs).where(
                        index_runs.c.dataset_id == dataset_id,
                        sa.or_(*[sa.and_(index_runs.c.kind == kind, index_runs.c.id > seen)
                                 for kind, seen in seen_runs.items()]))
                    .order_by(index_runs.c.id)
                ).all()
                if newer:
                    raise IndexChanged([_index_run(r) for r in newer])
            try:
                with conn.begin_nested():  # a savepoint, so the lookup below can still run
                    conn.execute(contents.insert().values(tenant=upload.tenant, sha256=sha256, upload_id=upload.id))
            except sa.exc.IntegrityError:
                first = conn.execute(
                    sa.select(contents.c.upload_id).where(contents.c.tenant == upload.tenant,
                                                          contents.c.sha256 == sha256)
                ).scalar_one()
                raise DuplicateContent(first) from None  # rolls the transition back too
            if runs:
                now = utcnow()
                conn.execute(index_runs.insert(), [
                    {"dataset_id": dataset_id, "kind": run.kind, "upload_id": upload.id,
                     "object_key": run.object_key, "entries": run.entries, "created_at": now} for run in runs])

    def mark_duplicate(self, upload: Upload, claimer: str, *, sha256: str, first: Upload | None,
                       reason: str = "duplicate_content", detail: dict | None = None) -> None:
        """Nothing new in the upload: the same bytes as `first`, or (first=None) only rows
        that earlier uploads of the dataset already hold."""
        with self.engine.begin() as conn:
            self._transition(conn, upload.id, from_state=LANDING, to_state=DUPLICATE, actor=claimer, claimer=claimer,
                             reason=reason, detail={"duplicate_of": first.id if first else None, **(detail or {})},
                             sha256=sha256, rows=0, quarantined_rows=0,
                             object_key=first.object_key if first else None,
                             duplicate_of=first.id if first else None)

    def mark_quarantined(self, upload: Upload, actor: str, *, claimer: str | None, reason: str, object_key: str,
                         sha256: str | None = None, quarantined_rows: int | None = None,
                         detail: dict | None = None, suppressions_seen: int | None = None) -> None:
        with self.engine.begin() as conn:
            self._transition(conn, upload.id, from_state=LANDING, to_state=QUARANTINED, actor=actor, claimer=claimer,
                             reason=reason, detail=detail, sha256=sha256, rows=0,
                             quarantined_rows=quarantined_rows, object_key=object_key)
            if suppressions_seen is not None:
                self._check_suppressions(conn, upload.tenant, suppressions_seen)

    def mark_erased(self, upload: Upload, claimer: str, *, sha256: str, detail: dict | None = None) -> None:
        """Every row of the upload was a subject on the tenant's suppression list (an erased
        one): landing -> deleted, reason `erased_subject`; nothing of it is kept."""
        with self.engine.begin() as conn:
            self._transition(conn, upload.id, from_state=LANDING, to_state=DELETED, actor=claimer, claimer=claimer,
                             reason="erased_subject", detail=detail, sha256=sha256, rows=0, quarantined_rows=0)

    # -- erasure: the suppression list -----------------------------------------------------

    def suppressions(self, tenant: str) -> Suppressions:
        """The tenant's suppression list, as ingestion applies it."""
        es = erasure_suppressions
        by_kind: dict[str, dict[str, set[str]]] = {}
        seen = 0
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(es.c.id, es.c.kind, es.c.column_name, es.c.pseudonym)
                                    .where(es.c.tenant == tenant)):
                by_kind.setdefault(row.kind, {}).setdefault(row.column_name, set()).add(row.pseudonym)
                seen = max(seen, row.id)
        return Suppressions(seen, {k: {c: frozenset(v) for c, v in cols.items()} for k, cols in by_kind.items()})

    def record_suppressions(self, tenant: str, request_id: str, entries: Sequence[tuple[str, str | None, str]],
                            now: datetime | None = None) -> None:
        """Add (kind, column or None for any, pseudonym) to the tenant's suppression list;
        entries already there are kept as they are. Serialised with the ingestion commits
        of the tenant (`_check_suppressions`): a commit either sees them or came first."""
        es = erasure_suppressions
        now = now or utcnow()
        rows = [{"tenant": tenant, "kind": kind, "column_name": column or "", "pseudonym": pseudonym,
                 "request_id": request_id, "created_at": now} for kind, column, pseudonym in entries]
        if not rows:
            return
        with self.engine.begin() as conn:
            self._name_lock(conn, f"erasure_suppressions/{tenant}")
            conn.execute(self._upsert(es).on_conflict_do_nothing(
                index_elements=["tenant", "kind", "column_name", "pseudonym"]), rows)

    def _check_suppressions(self, conn: Connection, tenant: str | None, seen: int) -> None:
        """Inside an ingestion commit: refuse it if the tenant's suppression list grew since
        the ingestion read it (PostgreSQL: a shared lock, so ingestion commits do not wait for
        each other, only for `record_suppressions`; SQLite: the commit's first statement
        already holds the write lock)."""
        self._name_lock(conn, f"erasure_suppressions/{tenant}", shared=True)
        es = erasure_suppressions
        newest = conn.execute(sa.select(sa.func.max(es.c.id)).where(es.c.tenant == tenant)).scalar()
        if (newest or 0) > seen:
            raise SuppressionsChanged(f"the suppression list of {tenant!r} changed during the ingestion")

    def mark_vanished(self, upload: Upload, claimer: str) -> None:
        """The landing object went away (or was replaced) before it could be read."""
        with self.engine.begin() as conn:
            self._transition(conn, upload.id, from_state=LANDING, to_state=DELETED, actor=claimer, claimer=claimer,
                             reason="vanished_before_ingestion")

    # -- training sets: the exactly-once claim of fresh data, and usage lineage ------

    def claim_training_set(self, *, tenant: str, name: str, prefix_of: Callable[[int], str], filters: dict,
                           consumer: str, actor: str, run_id: str | None, lease: timedelta,
                           now: datetime | None = None) -> tuple[TrainingSet, list[Upload]]:
        """Create the next version of a training set holding fresh files that match
        `filters` (datasets, min_quality, max_rows), oldest first, and make them `used`,
        in one transaction. Raises `NoFreshData` (changing nothing) if none matched.

        Exactly once: a file moves fresh -> used only in the transaction that claims
        it. On PostgreSQL candidates are locked with SKIP LOCKED, so concurrent builds
        take disjoint files without waiting; on SQLite the first statement is a write,
        which serialises claims. The set starts `building` under a lease.
        """
        now = now or utcnow()
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    ts = self._insert_training_set(conn, tenant=tenant, name=name, prefix_of=prefix_of,
                                                   filters=filters, consumer=consumer, actor=actor,
                                                   claimed_until=now + lease, sample=False, now=now)
                    chosen = self._lock_fresh_candidates(conn, tenant, filters)
                    moved = set(self._move(conn, [u.id for u in chosen], from_state=FRESH, to_state=USED,
                                           actor=actor, reason="training_set",
                                           detail={"training_set": f"{name}/v{ts.version}", "run_id": run_id},
                                           now=now, uses=uploads.c.uses + 1))
                    claimed = [u for u in chosen if u.id in moved]
                    if not claimed:
                        raise NoFreshData(_no_fresh_message(tenant, filters))
                    self._record_usage(conn, ts, claimed, kind="build", consumer=consumer, run_id=run_id, now=now)
                    return self._training_set(conn, ts.id), [self._upload(conn, u.id) for u in claimed]
            except sa.exc.IntegrityError:
                if attempt == 4:
                    raise  # the version number kept colliding: not a race any more
        raise AssertionError("unreachable")

    def record_sample_training_set(self, *, tenant: str, name: str, prefix_of: Callable[[int], str],
                                   filters: dict, consumer: str, actor: str, run_id: str | None,
                                   files: Sequence[tuple[Upload, int]], lease: timedelta,
                                   now: datetime | None = None) -> TrainingSet:
        """A training set that samples already-used files (only when explicitly asked
        for, with no fresh data): nothing changes state, each file records a use."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            ts = self._insert_training_set(conn, tenant=tenant, name=name, prefix_of=prefix_of, filters=filters,
                                           consumer=consumer, actor=actor, claimed_until=now + lease, sample=True,
                                           now=now)
            conn.execute(uploads.update().where(uploads.c.id.in_([u.id for u, _ in files]))
                         .values(uses=uploads.c.uses + 1))
            self._record_usage(conn, ts, [u for u, _ in files], kind="sample", consumer=consumer, run_id=run_id,
                               now=now, rows={u.id: n for u, n in files})
            return self._training_set(conn, ts.id)

    def _insert_training_set(self, conn: Connection, *, tenant: str, name: str, prefix_of, filters: dict,
                             consumer: str, actor: str, claimed_until: datetime, sample: bool,
                             now: datetime) -> TrainingSet:
        # INSERT ... SELECT: the version is computed by the writing statement itself, so on
        # SQLite the write lock comes first. On PostgreSQL builds of one name take turns on
        # an advisory lock until commit (the claim is short), so versions never collide.
        self._name_lock(conn, f"training_set/{tenant}/{name}")
        next_version = (sa.select(sa.func.coalesce(sa.func.max(training_sets.c.version), 0) + 1)
                        .where(training_sets.c.tenant == tenant, training_sets.c.name == name).scalar_subquery())
        source = sa.select(
            sa.literal(tenant), sa.literal(name), next_version, sa.literal(BUILDING), sa.literal(json.dumps(filters)),
            sa.literal(consumer), sa.literal(actor), sa.literal(actor), sa.literal(claimed_until),
            sa.literal(sample), sa.literal(""), sa.literal(now))
        cols = ["tenant", "name", "version", "state", "filters", "consumer", "created_by", "claimed_by",
                "claimed_until", "sample", "prefix", "created_at"]
        set_id, version = conn.execute(
            training_sets.insert().from_select(cols, source).returning(training_sets.c.id, training_sets.c.version)
        ).one()
        conn.execute(training_sets.update().where(training_sets.c.id == set_id).values(prefix=prefix_of(version)))
        return self._training_set(conn, set_id)

    def _lock_fresh_candidates(self, conn: Connection, tenant: str, filters: dict) -> list[Upload]:
        """Fresh files matching the filters, oldest first, as many as fit in max_rows
        (whole files, stopping at the first that does not fit), locked on PostgreSQL."""
        query = (sa.select(uploads).where(uploads.c.tenant == tenant, uploads.c.state == FRESH)
                 .order_by(uploads.c.id))
        if filters.get("datasets"):
            query = query.where(uploads.c.dataset.in_(filters["datasets"]))
        if filters.get("min_quality") is not None:
            query = query.where(uploads.c.quality >= filters["min_quality"])
        budget = filters.get("max_rows")
        chosen: list[Upload] = []
        total, after = 0, 0
        while True:
            page = query.where(uploads.c.id > after).limit(200)
            if self.engine.dialect.name == "postgresql":
                page = page.with_for_update(skip_locked=True)
            found = [Upload.from_row(r) for r in conn.execute(page)]
            for upload in found:
                if budget is not None and total + (upload.rows or 0) > budget:
                    if not chosen:
                        raise NoFreshData(f"max_rows={budget} is smaller than the oldest matching fresh file "
                                          f"(upload {upload.id}, {upload.rows} rows); files are taken whole")
                    return chosen
                chosen.append(upload)
                total += upload.rows or 0
            if len(found) < 200:
                return chosen
            after = found[-1].id

    def _record_usage(self, conn: Connection, ts: TrainingSet, files: Sequence[Upload], *, kind: str,
                      consumer: str, run_id: str | None, now: datetime, rows: dict[int, int] | None = None) -> None:
        conn.execute(training_set_files.insert(), [
            {"training_set_id": ts.id, "upload_id": u.id, "rows": (rows or {}).get(u.id, u.rows or 0)}
            for u in files])
        conn.execute(usages.insert(), [
            {"upload_id": u.id, "training_set_id": ts.id, "kind": kind, "consumer": consumer, "run_id": run_id,
             "at": now} for u in files])
        conn.execute(training_sets.update().where(training_sets.c.id == ts.id).values(
            files=len(files), rows=sum((rows or {}).get(u.id, u.rows or 0) for u in files)))

    def take_over_stale_training_sets(self, tenant: str, claimer: str, *, lease: timedelta,
                                      now: datetime | None = None) -> list[TrainingSet]:
        """Builds of the tenant whose lease ran out (their builder crashed), now held by
        `claimer`, which must complete them: their files stay claimed, never orphaned."""
        now = now or utcnow()
        taken = []
        with self.engine.begin() as conn:
            stale = conn.execute(sa.select(training_sets.c.id, training_sets.c.claimed_by).where(
                training_sets.c.tenant == tenant, training_sets.c.state == BUILDING,
                training_sets.c.claimed_until < now)).all()
            for set_id, held_by in stale:
                result = conn.execute(training_sets.update().where(
                    training_sets.c.id == set_id, training_sets.c.state == BUILDING,
                    training_sets.c.claimed_by == held_by, training_sets.c.claimed_until < now,
                ).values(claimed_by=claimer, claimed_until=now + lease))
                if result.rowcount == 1:
                    taken.append(set_id)
            return [self._training_set(conn, i) for i in taken]

    def renew_training_set(self, set_id: int, claimer: str, *, lease: timedelta) -> None:
        """Extend a build's lease (called as parts are written); raises if it was lost."""
        with self.engine.begin() as conn:
            result = conn.execute(training_sets.update().where(
                training_sets.c.id == set_id, training_sets.c.state == BUILDING,
                training_sets.c.claimed_by == claimer).values(claimed_until=utcnow() + lease))
        if result.rowcount != 1:
            raise TransitionConflict(f"training set {set_id} is no longer built by {claimer}")

    def complete_training_set(self, set_id: int, claimer: str, *, manifest_sha256: str, rows: int, size: int,
                              detail: dict, now: datetime | None = None) -> TrainingSet:
        with self.engine.begin() as conn:
            result = conn.execute(training_sets.update().where(
                training_sets.c.id == set_id, training_sets.c.state == BUILDING,
                training_sets.c.claimed_by == claimer,
            ).values(state=COMPLETE, manifest_sha256=manifest_sha256, rows=rows, bytes=size,
                     completed_at=now or utcnow(), claimed_by=None, claimed_until=None,
                     detail=json.dumps(detail, sort_keys=True)))
            if result.rowcount != 1:
                raise TransitionConflict(f"training set {set_id} is no longer built by {claimer}")
            return self._training_set(conn, set_id)

    def release_training_set(self, set_id: int, claimer: str, *, error: str, actor: str,
                             now: datetime | None = None) -> None:
        """A build that failed for a reason a retry would not cure: its files go back to
        fresh (their use is undone), in one transaction with the set becoming `released`."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            result = conn.execute(training_sets.update().where(
                training_sets.c.id == set_id, training_sets.c.state == BUILDING,
                training_sets.c.claimed_by == claimer,
            ).values(state=RELEASED, claimed_by=None, claimed_until=None, completed_at=now,
                     detail=json.dumps({"error": error[:2000]})))
            if result.rowcount != 1:
                raise TransitionConflict(f"training set {set_id} is no longer built by {claimer}")
            ts = self._training_set(conn, set_id)
            ids = conn.execute(sa.select(training_set_files.c.upload_id)
                               .where(training_set_files.c.training_set_id == set_id)).scalars().all()
            if not ts.sample:
                self._move(conn, ids, from_state=USED, to_state=FRESH, actor=actor, reason="training_set_released",
                           detail={"training_set": f"{ts.name}/v{ts.version}"}, now=now, uses=uploads.c.uses - 1)
            else:
                conn.execute(uploads.update().where(uploads.c.id.in_(ids)).values(uses=uploads.c.uses - 1))
            conn.execute(usages.delete().where(usages.c.training_set_id == set_id))
            conn.execute(training_set_files.delete().where(training_set_files.c.training_set_id == set_id))

    def record_read(self, set_id: int, *, consumer: str, run_id: str | None,
                    now: datetime | None = None) -> int:
        """A consumer read a complete training set: one more use of each of its files."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            ts = self._training_set(conn, set_id)
            if ts.state != COMPLETE:
                raise TransitionConflict(f"training set {ts.name}/v{ts.version} is {ts.state}, not complete")
            ids = conn.execute(sa.select(training_set_files.c.upload_id)
                               .where(training_set_files.c.training_set_id == set_id)).scalars().all()
            conn.execute(uploads.update().where(uploads.c.id.in_(ids)).values(uses=uploads.c.uses + 1))
            conn.execute(usages.insert(), [
                {"upload_id": i, "training_set_id": set_id, "kind": "read", "consumer": consumer, "run_id": run_id,
                 "at": now} for i in ids])
            return len(ids)

    def training_set_uploads(self, set_id: int) -> list[tuple[Upload, int]]:
        """The files a training set holds, with the rows it takes from each, by id."""
        query = (sa.select(uploads, training_set_files.c.rows.label("taken"))
                 .join(training_set_files, training_set_files.c.upload_id == uploads.c.id)
                 .where(training_set_files.c.training_set_id == set_id).order_by(uploads.c.id))
        with self.engine.connect() as conn:
            out = []
            for row in conn.execute(query):
                values = dict(row._mapping)
                taken = values.pop("taken")
                out.append((Upload(**values), int(taken)))
            return out

    def training_sets(self, *, tenant: str | None = None, name: str | None = None,
                      state: str | None = None) -> list[TrainingSet]:
        query = sa.select(training_sets).order_by(training_sets.c.id)
        for column, value in ((training_sets.c.tenant, tenant), (training_sets.c.name, name),
                              (training_sets.c.state, state)):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as conn:
            return [TrainingSet.from_row(r) for r in conn.execute(query)]

    def usage_lineage(self, upload_ids: Sequence[int] | None = None, *,
                      tenant: str | None = None) -> dict[int, list[dict[str, Any]]]:
        """upload id -> its usages, oldest first: which training set, when, kind, run, consumer."""
        query = (sa.select(usages.c.upload_id, usages.c.kind, usages.c.consumer, usages.c.run_id, usages.c.at,
                           training_sets.c.name, training_sets.c.version, training_sets.c.id.label("set_id"))
                 .join(training_sets, training_sets.c.id == usages.c.training_set_id).order_by(usages.c.id))
        if tenant is not None:
            query = query.where(training_sets.c.tenant == tenant)
        out: dict[int, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            chunks = _chunks(list(upload_ids), 500) if upload_ids is not None else [None]
            for chunk in chunks:
                q = query if chunk is None else query.where(usages.c.upload_id.in_(chunk))
                for r in conn.execute(q):
                    out.setdefault(r.upload_id, []).append({
                        "training_set": r.name, "version": r.version, "training_set_id": r.set_id,
                        "kind": r.kind, "consumer": r.consumer, "run_id": r.run_id, "at": _iso(r.at)})
        return out

    def _training_set(self, conn: Connection, set_id: int) -> TrainingSet:
        return TrainingSet.from_row(conn.execute(sa.select(training_sets).where(training_sets.c.id == set_id)).one())

    def _upload(self, conn: Connection, upload_id: int) -> Upload:
        return Upload.from_row(conn.execute(sa.select(uploads).where(uploads.c.id == upload_id)).one())

    # -- datasets and their index runs ----------------------------------------------

    def dataset_id(self, tenant: str, dataset: str) -> int:
        query = sa.select(datasets.c.id).where(datasets.c.tenant == tenant, datasets.c.dataset == dataset)
        with self.engine.begin() as conn:
            found = conn.execute(query).scalar()
            if found is None:
                conn.execute(self._upsert(datasets).on_conflict_do_nothing(index_elements=["tenant", "dataset"]),
                             {"tenant": tenant, "dataset": dataset})
                found = conn.execute(query).scalar_one()
        return int(found)

    def index_runs(self, dataset_id: int, kind: str, *, after_id: int = 0) -> list[IndexRun]:
        """The dataset's registered runs of one index, in commit order."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(index_runs).where(index_runs.c.dataset_id == dataset_id, index_runs.c.kind == kind,
                                            index_runs.c.id > after_id)
                .order_by(index_runs.c.id)
            ).all()
        return [_index_run(r) for r in found]

    def tenant_index_runs(self, tenant: str, kind: str) -> list[IndexRun]:
        """Every registered run of one index kind across the tenant's datasets."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(index_runs).join(datasets, datasets.c.id == index_runs.c.dataset_id)
                .where(datasets.c.tenant == tenant, index_runs.c.kind == kind).order_by(index_runs.c.id)
            ).all()
        return [_index_run(r) for r in found]

    # -- retention -------------------------------------------------------------------

    def retention_rows(self, tenant: str | None = None) -> list[RetentionRow]:
        """Every upload (of one tenant) with only what cleanup reads: state, object key,
        clocks, uses, whether a tombstone exists and whether a building training set
        holds it. The uploads in other states are there for the orphan sweep (a data/
        object of a deleted upload). Plain tuples: 100,000 uploads read in ~0.5 s."""
        query = (
            sa.select(uploads.c.id, uploads.c.tenant, uploads.c.dataset, uploads.c.landing_key, uploads.c.state,
                      uploads.c.object_key, uploads.c.uses, uploads.c.ingested_at, uploads.c.state_since,
                      uploads.c.size, uploads.c.rows, uploads.c.quarantined_rows,
                      tombstones.c.upload_id.is_not(None))
            .outerjoin(tombstones, tombstones.c.upload_id == uploads.c.id)
            .order_by(uploads.c.id)
        )
        if tenant is not None:
            query = query.where(uploads.c.tenant == tenant)
        with self.engine.connect() as conn:
            held = set(conn.execute(_held_by_building_sets()).scalars())
            return [RetentionRow(*r[:12], bool(r[12]), r[0] in held) for r in conn.execute(query)]

    def registered_index_keys(self, tenant: str | None = None) -> set[str]:
        query = sa.select(index_runs.c.object_key)
        if tenant is not None:
            query = query.join(datasets, datasets.c.id == index_runs.c.dataset_id).where(datasets.c.tenant == tenant)
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def released_training_set_prefixes(self, tenant: str | None = None) -> list[str]:
        """Prefixes of training sets whose build was given up: their objects are leftovers."""
        query = sa.select(training_sets.c.prefix).where(training_sets.c.state == RELEASED)
        if tenant is not None:
            query = query.where(training_sets.c.tenant == tenant)
        with self.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())

    def failed_feature_version_prefixes(self, tenant: str | None = None) -> list[str]:
        """Prefixes of feature versions whose build failed: their objects are leftovers
        (the number is never reused, so nothing will write there again)."""
        query = sa.select(feature_versions.c.prefix).where(feature_versions.c.state == FAILED)
        if tenant is not None:
            query = query.where(feature_versions.c.tenant == tenant)
        with self.engine.connect() as conn:
            return sorted(conn.execute(query).scalars())

    def referenced_keys(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` that the catalog still points at: the object of an ingested
        upload or a registered index run (checked again just before an orphan goes)."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(keys)), 500):
                out.update(conn.execute(sa.select(uploads.c.object_key).where(
                    uploads.c.object_key.in_(chunk), uploads.c.state.in_(sorted(INGESTED)))).scalars())
                out.update(conn.execute(sa.select(index_runs.c.object_key).where(
                    index_runs.c.object_key.in_(chunk))).scalars())
        return out

    def record_data_checksum(self, upload_id: int, sha256: str, size: int) -> None:
        """The sha256 and size of the upload's data object, for the integrity check. The
        archive copy holds the same bytes, so the values follow the upload there."""
        with self.engine.begin() as conn:
            conn.execute(uploads.update().where(uploads.c.id == upload_id).values(data_sha256=sha256, data_size=size))

    def archive(self, moves: Sequence[RetentionMove], *, actor: str, now: datetime | None = None) -> list[int]:
        """fresh/used -> archived, object_key data/... -> archive/..., in one transaction.
        An upload moves only if it is still in its `from_state`, still at its data/ key
        and held by no building training set; returns the ids that moved."""
        now = now or utcnow()
        data, archive = f"{layout.DATA}/", f"{layout.ARCHIVE}/"
        moved: list[int] = []
        with self.engine.begin() as conn:
            for (from_state, reason, detail), ids in _move_groups(moves):
                for chunk in _chunks(ids, 500):
                    # The first write (SQLite's write lock, PostgreSQL's row locks), so what
                    # follows sees the latest commit.
                    rekeyed = conn.execute(
                        uploads.update()
                        .where(uploads.c.id.in_(chunk), uploads.c.state == from_state,
                               uploads.c.object_key.startswith(data), uploads.c.id.not_in(_held_by_building_sets()))
                        .values(object_key=sa.literal(archive)
                                + sa.func.substr(uploads.c.object_key, len(data) + 1, type_=sa.String))
                        .returning(uploads.c.id)
                    ).scalars().all()
                    moved += self._move(conn, rekeyed, from_state=from_state, to_state=ARCHIVED, actor=actor,
                                        reason=reason, detail=detail, now=now)
        return sorted(moved)

    def deprecate(self, moves: Sequence[RetentionMove], *, actor: str, now: datetime | None = None) -> list[int]:
        """archived -> deprecated (catalog only: the data stays readable), in one transaction."""
        now = now or utcnow()
        moved: list[int] = []
        with self.engine.begin() as conn:
            for (from_state, reason, detail), ids in _move_groups(moves):
                movable = self._lock_movable(conn, ids, from_state, now)
                moved += self._move(conn, movable, from_state=from_state, to_state=DEPRECATED, actor=actor,
                                    reason=reason, detail=detail, now=now)
        return sorted(moved)

    def delete_uploads(self, moves: Sequence[RetentionMove], *, actor: str,
                       now: datetime | None = None) -> list[DeletedUpload]:
        """deprecated or quarantined -> deleted, in one transaction: the state (object_key
        cleared), a tombstone each (who, when, why, what the bytes were), the upload's
        index runs and content-index entry dropped (the same bytes uploaded again are new
        data). Returns what deleting the bytes needs; the caller deletes them after."""
        now = now or utcnow()
        out: list[DeletedUpload] = []
        with self.engine.begin() as conn:
            for (from_state, reason, detail), ids in _move_groups(moves):
                movable = self._lock_movable(conn, ids, from_state, now)
                for chunk in _chunks(movable, 500):
                    rows = conn.execute(sa.select(uploads).where(uploads.c.id.in_(chunk))).all()
                    moved = set(self._move(conn, chunk, from_state=from_state, to_state=DELETED, actor=actor,
                                           reason=reason, detail=detail, now=now, object_key=None))
                    rows = [r for r in rows if r.id in moved]
                    if not rows:
                        continue
                    conn.execute(tombstones.insert(), [
                        {"upload_id": r.id, "tenant": r.tenant, "dataset": r.dataset, "landing_key": r.landing_key,
                         "object_key": r.object_key, "sha256": r.sha256, "size": r.size, "rows": r.rows,
                         "from_state": from_state, "deleted_at": now, "deleted_by": actor, "reason": reason}
                        for r in rows])
                    ids_moved = [r.id for r in rows]
                    runs: dict[int, list[str]] = {}
                    for upload_id, key in conn.execute(sa.select(index_runs.c.upload_id, index_runs.c.object_key)
                                                       .where(index_runs.c.upload_id.in_(ids_moved))):
                        runs.setdefault(upload_id, []).append(key)
                    conn.execute(index_runs.delete().where(index_runs.c.upload_id.in_(ids_moved)))
                    conn.execute(contents.delete().where(contents.c.upload_id.in_(ids_moved)))
                    out += [DeletedUpload(r.id, r.tenant, r.dataset, from_state, r.object_key, r.quarantined_rows,
                                          tuple(sorted(runs.get(r.id, ())))) for r in rows]
        return sorted(out, key=lambda d: d.upload_id)

    def _lock_movable(self, conn: Connection, ids: Sequence[int], from_state: str, now: datetime) -> list[int]:
        """Those of `ids` still in `from_state` and held by no building training set,
        locked by a first write (as in `archive`)."""
        out: list[int] = []
        for chunk in _chunks(list(ids), 500):
            out += conn.execute(
                uploads.update()
                .where(uploads.c.id.in_(chunk), uploads.c.state == from_state,
                       uploads.c.id.not_in(_held_by_building_sets()))
                .values(updated_at=now).returning(uploads.c.id)
            ).scalars().all()
        return sorted(out)

    def tombstones(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """What is left of deleted uploads: who deleted each, when, why, and what it was."""
        query = sa.select(tombstones).order_by(tombstones.c.upload_id)
        if tenant is not None:
            query = query.where(tombstones.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def recent_in_state(self, state: str, *, tenant: str | None = None, limit: int = 200) -> list[Upload]:
        """The uploads that entered `state` most recently (a bounded table for the UI)."""
        query = sa.select(uploads).where(uploads.c.state == state).order_by(
            uploads.c.state_since.desc(), uploads.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(uploads.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [Upload.from_row(r) for r in conn.execute(query)]

    # -- feature store ------------------------------------------------------------------
    # Every read takes the tenant: a name is only ever looked up within one tenant.

    def register_feature_definition(self, *, tenant: str, name: str, definition: dict, owner: str | None,
                                    description: str | None, actor: str,
                                    now: datetime | None = None) -> tuple[FeatureDefinitionRecord, bool]:
        """Add `definition` as the next revision of (tenant, name), unless it equals the
        latest revision already: returns (the latest revision, whether it was added).

        One INSERT ... SELECT decides and numbers (SQLite: the write lock comes first);
        on PostgreSQL registrations of one name also take turns on an advisory lock, and
        the unique (tenant, name, revision) is the last guard (a collision retries)."""
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        now = now or utcnow()
        fd = feature_definitions
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    self._name_lock(conn, f"feature_definition/{tenant}/{name}")
                    of_name = (fd.c.tenant == tenant, fd.c.name == name)
                    latest = (sa.select(fd.c.definition_sha256).where(*of_name).order_by(fd.c.revision.desc())
                              .limit(1).scalar_subquery())
                    next_revision = (sa.select(sa.func.coalesce(sa.func.max(fd.c.revision), 0) + 1)
                                     .where(*of_name).scalar_subquery())
                    source = sa.select(
                        sa.literal(tenant, sa.String), sa.literal(name, sa.String), next_revision,
                        sa.literal(text, sa.Text), sa.literal(digest, sa.String), sa.literal(owner, sa.String),
                        sa.literal(description, sa.Text), sa.literal(now, sa.DateTime), sa.literal(actor, sa.String),
                    ).where(sa.or_(latest.is_(None), latest != digest))
                    cols = ["tenant", "name", "revision", "definition", "definition_sha256", "owner", "description",
                            "created_at", "created_by"]
                    added = conn.execute(fd.insert().from_select(cols, source).returning(fd.c.id)).scalar()
                    row = conn.execute(sa.select(fd).where(*of_name).order_by(fd.c.revision.desc()).limit(1)).one()
                    return FeatureDefinitionRecord.from_row(row), added is not None
            except sa.exc.IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def feature_definition(self, tenant: str, name: str, revision: int | None = None,
                           ) -> FeatureDefinitionRecord | None:
        """The latest revision of the tenant's definition (or the one asked for)."""
        fd = feature_definitions
        query = sa.select(fd).where(fd.c.tenant == tenant, fd.c.name == name)
        query = (query.where(fd.c.revision == revision) if revision is not None
                 else query.order_by(fd.c.revision.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return FeatureDefinitionRecord.from_row(row) if row else None

    def feature_definitions(self, tenant: str) -> list[FeatureDefinitionRecord]:
        """The latest revision of each of the tenant's feature tables, by name."""
        fd = feature_definitions
        newest = (sa.select(fd.c.name, sa.func.max(fd.c.revision).label("revision"))
                  .where(fd.c.tenant == tenant).group_by(fd.c.name).subquery())
        query = (sa.select(fd).join(newest, sa.and_(fd.c.name == newest.c.name, fd.c.revision == newest.c.revision))
                 .where(fd.c.tenant == tenant).order_by(fd.c.name))
        with self.engine.connect() as conn:
            return [FeatureDefinitionRecord.from_row(r) for r in conn.execute(query)]

    def feature_table_heads(self) -> list[tuple[FeatureDefinitionRecord, int | None]]:
        """Every tenant's feature tables (latest revision) with the revision their newest
        building or complete version was built from (None: never built). For the
        platform's sensor only; tenant-facing reads go through the methods above."""
        fd, fv = feature_definitions, feature_versions
        newest = (sa.select(fd.c.tenant, fd.c.name, sa.func.max(fd.c.revision).label("revision"))
                  .group_by(fd.c.tenant, fd.c.name).subquery())
        heads = (sa.select(fd).join(newest, sa.and_(fd.c.tenant == newest.c.tenant, fd.c.name == newest.c.name,
                                                    fd.c.revision == newest.c.revision))
                 .order_by(fd.c.tenant, fd.c.name))
        built = (sa.select(fv.c.tenant, fv.c.name, sa.func.max(fd.c.revision))
                 .join(fd, fd.c.id == fv.c.definition_id).where(fv.c.state.in_([BUILDING, COMPLETE]))
                 .group_by(fv.c.tenant, fv.c.name))
        with self.engine.connect() as conn:
            revisions = {(t, n): r for t, n, r in conn.execute(built)}
            return [(FeatureDefinitionRecord.from_row(r), revisions.get((r.tenant, r.name)))
                    for r in conn.execute(heads)]

    def start_feature_version(self, definition: FeatureDefinitionRecord, *, prefix_of: Callable[[int], str],
                              code_version: str, actor: str, now: datetime | None = None) -> FeatureVersion:
        """The next version of the feature table, `building`. Numbered by the inserting
        statement itself (as training sets are), so two builds never share a number."""
        now = now or utcnow()
        fv = feature_versions
        tenant, name = definition.tenant, definition.name
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    self._name_lock(conn, f"feature_version/{tenant}/{name}")
                    next_version = (sa.select(sa.func.coalesce(sa.func.max(fv.c.version), 0) + 1)
                                    .where(fv.c.tenant == tenant, fv.c.name == name).scalar_subquery())
                    source = sa.select(
                        sa.literal(tenant, sa.String), sa.literal(name, sa.String), next_version,
                        sa.literal(definition.id, sa.BigInteger), sa.literal(BUILDING, sa.String),
                        sa.literal("", sa.String), sa.literal(code_version, sa.String), sa.literal(now, sa.DateTime),
                        sa.literal(actor, sa.String))
                    cols = ["tenant", "name", "version", "definition_id", "state", "prefix", "code_version",
                            "created_at", "created_by"]
                    version_id, number = conn.execute(
                        fv.insert().from_select(cols, source).returning(fv.c.id, fv.c.version)).one()
                    conn.execute(fv.update().where(fv.c.id == version_id).values(prefix=prefix_of(number)))
                    return self._feature_version(conn, tenant, version_id=version_id)
            except sa.exc.IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def complete_feature_version(self, version: FeatureVersion, *, rows: int, size: int, schema: list,
                                 manifest_sha256: str, sources: Sequence[dict], detail: dict | None = None,
                                 now: datetime | None = None) -> FeatureVersion:
        """`building` -> `complete` with its figures and source files, in one transaction
        (refused if the version is not building: a complete version never changes)."""
        now = now or utcnow()
        fv = feature_versions
        with self.engine.begin() as conn:
            done = conn.execute(
                fv.update().where(fv.c.id == version.id, fv.c.tenant == version.tenant, fv.c.state == BUILDING)
                .values(state=COMPLETE, rows=rows, bytes=size, schema=json.dumps(schema),
                        manifest_sha256=manifest_sha256, completed_at=now,
                        detail=json.dumps(detail, sort_keys=True) if detail is not None else None)
                .returning(fv.c.id)).scalar()
            if done is None:
                raise TransitionConflict(f"feature version {version.name}/v{version.version} is not building")
            if sources:
                conn.execute(feature_version_sources.insert(), [
                    {"version_id": version.id, "upload_id": s["upload_id"], "sha256": s["sha256"],
                     "object_key": s["object_key"], "rows": s["rows"]} for s in sources])
            return self._feature_version(conn, version.tenant, version_id=version.id)

    def fail_feature_version(self, version: FeatureVersion, *, error: str, now: datetime | None = None) -> None:
        """`building` -> `failed`: the number stays used; its objects are leftovers."""
        fv = feature_versions
        with self.engine.begin() as conn:
            conn.execute(fv.update().where(fv.c.id == version.id, fv.c.state == BUILDING).values(
                state=FAILED, completed_at=now or utcnow(), detail=json.dumps({"error": error})))

    def abandon_feature_builds(self, *, started_before: datetime, now: datetime | None = None) -> list[tuple[str, str, int]]:
        """Builds still `building` that started before `started_before` (their builder
        died: a build takes minutes) -> `failed`, so cleanup sweeps their objects.
        Returns (tenant, name, version) of each."""
        fv = feature_versions
        detail = json.dumps({"error": f"abandoned: still building at {_iso(now or utcnow())}, "
                                      f"started before {_iso(started_before)}"})
        with self.engine.begin() as conn:
            return [tuple(r) for r in conn.execute(
                fv.update().where(fv.c.state == BUILDING, fv.c.created_at < started_before)
                .values(state=FAILED, completed_at=now or utcnow(), detail=detail)
                .returning(fv.c.tenant, fv.c.name, fv.c.version))]

    def feature_version(self, tenant: str, name: str, version: int | None = None) -> FeatureVersion | None:
        """Version `version` of the tenant's feature table in any state, or with None the
        latest complete one."""
        with self.engine.connect() as conn:
            if version is None:
                return self._feature_version(conn, tenant, name=name, state=COMPLETE)
            return self._feature_version(conn, tenant, name=name, version=version)

    def feature_versions(self, tenant: str, name: str | None = None,
                         state: str | None = None) -> list[FeatureVersion]:
        query = _feature_version_query().where(feature_versions.c.tenant == tenant)
        if name is not None:
            query = query.where(feature_versions.c.name == name)
        if state is not None:
            query = query.where(feature_versions.c.state == state)
        with self.engine.connect() as conn:
            return [FeatureVersion.from_row(r) for r in conn.execute(
                query.order_by(feature_versions.c.name, feature_versions.c.version))]

    def feature_version_sources(self, version: FeatureVersion) -> list[dict[str, Any]]:
        fvs, fv = feature_version_sources, feature_versions
        query = (sa.select(fvs.c.upload_id, fvs.c.sha256, fvs.c.object_key, fvs.c.rows)
                 .join(fv, fv.c.id == fvs.c.version_id)
                 .where(fv.c.id == version.id, fv.c.tenant == version.tenant).order_by(fvs.c.upload_id))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def _feature_version(self, conn: Connection, tenant: str, *, version_id: int | None = None,
                         name: str | None = None, version: int | None = None,
                         state: str | None = None) -> FeatureVersion | None:
        fv = feature_versions
        query = _feature_version_query().where(fv.c.tenant == tenant)
        if version_id is not None:
            query = query.where(fv.c.id == version_id)
        if name is not None:
            query = query.where(fv.c.name == name)
        if version is not None:
            query = query.where(fv.c.version == version)
        if state is not None:
            query = query.where(fv.c.state == state)
        row = conn.execute(query.order_by(fv.c.version.desc()).limit(1)).first()
        return FeatureVersion.from_row(row) if row else None

    # -- erasure: requests, their steps, and the rows they rewrite ----------------------
    # Every method is attributed to the tenant (`tenant`, or ids of its rows) and filters
    # by it, so a tenant-scoped erasure can call them (see data_platform.tenancy). A step
    # is {"key", "what", "action", "state", "upload_id", "detail" (a dict)}; a method that
    # records steps renews the run's lease on the request in its transaction first, and
    # raises ErasureLeaseLost (nothing recorded) when another run holds the request.

    def erasure_request(self, request_id: str, tenant: str | None = None) -> sa.Row | None:
        """An erasure request's row (of `tenant`, when given), or None."""
        er = erasure_requests
        query = sa.select(er).where(er.c.request_id == request_id)
        if tenant is not None:
            query = query.where(er.c.tenant == tenant)
        with self.engine.connect() as conn:
            return conn.execute(query).first()

    def start_erasure_request(self, tenant: str, request_id: str, *, subject_sha256: str, scope: dict,
                              actor: str) -> sa.Row:
        """Create the request `started` with its scope, unless a concurrent first attempt
        created it; returns the row that exists (the first attempt's scope wins)."""
        er = erasure_requests
        stamp = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(er.insert().values(
                    request_id=request_id, tenant=tenant, subject_sha256=subject_sha256, state=ERASURE_STARTED,
                    scope=json.dumps(scope, sort_keys=True), created_by=actor, created_at=stamp, updated_at=stamp))
        except sa.exc.IntegrityError:
            pass  # a concurrent first attempt inserted it: use its row
        with self.engine.connect() as conn:
            return conn.execute(sa.select(er).where(er.c.request_id == request_id, er.c.tenant == tenant)).one()

    def claim_erasure_request(self, tenant: str, request_id: str, owner: str, *,
                              lease: timedelta) -> tuple[bool, sa.Row]:
        """Hold the request for `owner` if it is free (held by nobody, or its holder's lease
        ran out) or already its own; whether it was taken, and the row, in one transaction."""
        er = erasure_requests
        stamp = utcnow()
        mine = (er.c.request_id == request_id, er.c.tenant == tenant)
        with self.engine.begin() as conn:
            taken = conn.execute(er.update().where(
                *mine, sa.or_(er.c.claimed_by.is_(None), er.c.claimed_until < stamp, er.c.claimed_by == owner))
                .values(claimed_by=owner, claimed_until=stamp + lease)).rowcount
            return bool(taken), conn.execute(sa.select(er).where(*mine)).one()

    def renew_erasure_request(self, tenant: str, request_id: str, owner: str, *, lease: timedelta) -> None:
        """Extend `owner`'s lease on the request; ErasureLeaseLost if another run holds it."""
        with self.engine.begin() as conn:
            self._renew_erasure(conn, tenant, request_id, owner, lease)

    def release_erasure_request(self, tenant: str, request_id: str, owner: str) -> None:
        """Let the request go at once (a run that stops), if `owner` still holds it."""
        er = erasure_requests
        with self.engine.begin() as conn:
            conn.execute(er.update().where(er.c.request_id == request_id, er.c.tenant == tenant,
                                           er.c.claimed_by == owner).values(claimed_by=None, claimed_until=None))

    def finish_erasure_request(self, tenant: str, request_id: str, owner: str, *, receipt_key: str,
                               receipt_sha256: str) -> bool:
        """`started` -> `done` with its receipt, and the lease let go; False (nothing
        changed) when `owner` no longer holds the request."""
        er = erasure_requests
        with self.engine.begin() as conn:
            return bool(conn.execute(er.update().where(
                er.c.request_id == request_id, er.c.tenant == tenant, er.c.claimed_by == owner).values(
                state=ERASURE_DONE, completed_at=utcnow(), updated_at=utcnow(), receipt_key=receipt_key,
                receipt_sha256=receipt_sha256, claimed_by=None, claimed_until=None)).rowcount)

    def erasure_steps(self, tenant: str, request_id: str) -> list[dict[str, Any]]:
        """The steps a request recorded (of a request of `tenant`)."""
        es, er = erasure_steps, erasure_requests
        query = (sa.select(es).join(er, er.c.request_id == es.c.request_id)
                 .where(es.c.request_id == request_id, er.c.tenant == tenant))
        with self.engine.connect() as conn:
            return [{"key": r.object_key, "what": r.what, "action": r.action, "state": r.state,
                     "upload_id": r.upload_id, "detail": json.loads(r.detail)} for r in conn.execute(query)]

    def save_erasure_steps(self, tenant: str, request_id: str, steps: Sequence[dict], *, owner: str,
                           lease: timedelta) -> None:
        """Record steps (new, or replacing those of the same key), in one transaction."""
        with self.engine.begin() as conn:
            self._save_erasure_steps(conn, tenant, request_id, steps, owner, lease)

    def drop_erasure_steps(self, tenant: str, request_id: str, keys: Sequence[str], *, owner: str,
                           lease: timedelta) -> None:
        """Forget steps that no longer describe the store (a replaced export)."""
        es = erasure_steps
        with self.engine.begin() as conn:
            self._renew_erasure(conn, tenant, request_id, owner, lease)
            conn.execute(es.delete().where(es.c.request_id == request_id, es.c.object_key.in_(list(keys))))

    def training_set_building_from(self, tenant: str, upload_ids: Sequence[int]) -> sa.Row | None:
        """A training set of the tenant still `building` from one of these uploads (name,
        version, upload_id), or None."""
        ts, tsf = training_sets, training_set_files
        query = (sa.select(ts.c.name, ts.c.version, tsf.c.upload_id)
                 .join(tsf, tsf.c.training_set_id == ts.c.id)
                 .where(ts.c.tenant == tenant, ts.c.state == BUILDING, tsf.c.upload_id.in_(list(upload_ids))))
        with self.engine.connect() as conn:
            return conn.execute(query).first()

    def complete_training_sets_holding(self, tenant: str, upload_ids: Sequence[int]) -> list[TrainingSet]:
        """The tenant's complete training sets holding one of these uploads, by id."""
        ts, tsf = training_sets, training_set_files
        query = (sa.select(ts).where(
            ts.c.tenant == tenant, ts.c.state == COMPLETE,
            ts.c.id.in_(sa.select(tsf.c.training_set_id).where(tsf.c.upload_id.in_(list(upload_ids)))))
            .order_by(ts.c.id))
        with self.engine.connect() as conn:
            return [TrainingSet.from_row(r) for r in conn.execute(query)]

    def complete_feature_versions_from(self, tenant: str, upload_ids: Sequence[int]) -> list[FeatureVersion]:
        """The tenant's complete feature versions built from one of these uploads, by id."""
        fv, fvs = feature_versions, feature_version_sources
        query = (_feature_version_query().where(
            fv.c.tenant == tenant, fv.c.state == COMPLETE,
            fv.c.id.in_(sa.select(fvs.c.version_id).where(fvs.c.upload_id.in_(list(upload_ids)))))
            .order_by(fv.c.id))
        with self.engine.connect() as conn:
            return [FeatureVersion.from_row(r) for r in conn.execute(query)]

    def index_run_keys_of_upload(self, upload_id: int) -> dict[str, str]:
        """An upload's registered index runs: kind -> object key."""
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(index_runs.c.kind, index_runs.c.object_key)
                                     .where(index_runs.c.upload_id == upload_id)).all())

    def commit_erased_upload(self, tenant: str, request_id: str, upload_id: int, *, object_key: str, rows: int,
                             sha256: str, size: int, index_run_entries: dict[str, int], steps: Sequence[dict],
                             owner: str, lease: timedelta) -> bool:
        """An upload's data object rewritten at its key: its rows and checksum, its
        rewritten index runs' entries, and the steps, in one transaction. False (nothing
        changed) when the upload moved meanwhile (no longer ingested at `object_key`)."""
        with self.engine.begin() as conn:
            moved = conn.execute(uploads.update().where(
                uploads.c.id == upload_id, uploads.c.tenant == tenant, uploads.c.object_key == object_key,
                uploads.c.state.in_(sorted(INGESTED))).values(
                rows=rows, data_sha256=sha256, data_size=size, updated_at=utcnow())).rowcount
            if not moved:
                return False
            for key, entries in index_run_entries.items():
                conn.execute(index_runs.update().where(index_runs.c.object_key == key,
                                                       index_runs.c.upload_id == upload_id).values(entries=entries))
            self._save_erasure_steps(conn, tenant, request_id, steps, owner, lease)
        return True

    def commit_erased_rejected_rows(self, tenant: str, request_id: str, upload_id: int, *, rows_erased: int,
                                    erased_by_reason: dict[str, int], steps: Sequence[dict], owner: str,
                                    lease: timedelta) -> None:
        """Rejected rows erased from a quarantined file: the upload's `quarantined_rows` and
        its report's counts per reason fewer by as many, and the steps, in one transaction."""
        with self.engine.begin() as conn:
            mine = (uploads.c.id == upload_id, uploads.c.tenant == tenant)
            row = conn.execute(sa.select(uploads.c.quarantined_rows, uploads.c.detail).where(*mine)).first()
            if row is not None:
                values = {"quarantined_rows": max(0, (row.quarantined_rows or 0) - rows_erased), "updated_at": utcnow()}
                detail = _json_or_text(row.detail)
                if isinstance(detail, dict) and isinstance(detail.get("rejected_by_reason"), dict):
                    detail["rejected_by_reason"] = fewer_counts(detail["rejected_by_reason"], erased_by_reason)
                    values["detail"] = json.dumps(detail, sort_keys=True)
                conn.execute(uploads.update().where(*mine).values(**values))
            self._save_erasure_steps(conn, tenant, request_id, steps, owner, lease)

    def commit_erased_training_set(self, tenant: str, request_id: str, set_id: int, *, manifest_sha256: str,
                                   rows: int, size: int, erased_by_upload: dict[int, int], steps: Sequence[dict],
                                   owner: str, lease: timedelta) -> None:
        """A complete training set's manifest rewritten: its sha256 and figures, the rows
        each file lost, and the steps, in one transaction."""
        ts, tsf = training_sets, training_set_files
        with self.engine.begin() as conn:
            conn.execute(ts.update().where(ts.c.id == set_id, ts.c.tenant == tenant).values(
                manifest_sha256=manifest_sha256, rows=rows, bytes=size))
            for upload_id, n in erased_by_upload.items():
                conn.execute(tsf.update().where(tsf.c.training_set_id == set_id, tsf.c.upload_id == int(upload_id))
                             .values(rows=tsf.c.rows - n))
            self._save_erasure_steps(conn, tenant, request_id, steps, owner, lease)

    def commit_erased_feature_version(self, tenant: str, request_id: str, version: FeatureVersion, *,
                                      manifest_sha256: str, rows: int, size: int, steps: Sequence[dict],
                                      owner: str, lease: timedelta) -> None:
        """A complete feature version's manifest rewritten: its sha256 and figures, and the
        steps, in one transaction."""
        fv = feature_versions
        with self.engine.begin() as conn:
            conn.execute(fv.update().where(fv.c.id == version.id, fv.c.tenant == tenant).values(
                manifest_sha256=manifest_sha256, rows=rows, bytes=size))
            self._save_erasure_steps(conn, tenant, request_id, steps, owner, lease)

    def invalid_key_uploads(self) -> list[Upload]:
        """Quarantined uploads rejected as `invalid_key` (no tenant; bytes under
        `quarantine/_invalid/`), by id. Platform-wide: erasure reaches them only through
        `tenancy.InvalidKeyOriginals`."""
        invalid = f"{layout.QUARANTINE}/_invalid/"  # layout.quarantine_prefix of a key naming no tenant
        query = (sa.select(uploads).where(uploads.c.tenant.is_(None), uploads.c.state == QUARANTINED,
                                          uploads.c.object_key.like(f"{invalid}%"))
                 .order_by(uploads.c.id))
        with self.engine.connect() as conn:
            return [Upload.from_row(r) for r in conn.execute(query) if r.object_key.startswith(invalid)]

    def _renew_erasure(self, conn: Connection, tenant: str, request_id: str, owner: str, lease: timedelta) -> None:
        er = erasure_requests
        held = conn.execute(er.update().where(er.c.request_id == request_id, er.c.tenant == tenant,
                                              er.c.claimed_by == owner)
                            .values(claimed_until=utcnow() + lease)).rowcount
        if not held:
            raise ErasureLeaseLost(f"erasure {request_id} lost its lease to another run; that run finishes it")

    def _save_erasure_steps(self, conn: Connection, tenant: str, request_id: str, steps: Sequence[dict],
                            owner: str, lease: timedelta) -> None:
        # In the same transaction: a run that lost its lease records nothing more.
        self._renew_erasure(conn, tenant, request_id, owner, lease)
        es = erasure_steps
        for step in steps:
            values = {"what": step["what"], "action": step["action"], "state": step["state"],
                      "upload_id": step["upload_id"], "detail": json.dumps(step["detail"], sort_keys=True),
                      "updated_at": utcnow()}
            where = (es.c.request_id == request_id, es.c.object_key == step["key"])
            if not conn.execute(es.update().where(*where).values(**values)).rowcount:
                conn.execute(es.insert().values(request_id=request_id, object_key=step["key"], **values))

    # -- queries -------------------------------------------------------------------

    def get(self, upload_id: int) -> Upload | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(uploads).where(uploads.c.id == upload_id)).first()
        return Upload.from_row(row) if row else None

    def first_copy(self, tenant: str, sha256: str) -> Upload | None:
        """The upload whose data holds these bytes for the tenant, if ingested."""
        query = sa.select(uploads).join(contents, contents.c.upload_id == uploads.c.id).where(
            contents.c.tenant == tenant, contents.c.sha256 == sha256
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return Upload.from_row(row) if row else None

    def list_uploads(self, *, tenant: str | None = None, dataset: str | None = None,
                     state: str | None = None) -> list[Upload]:
        query = sa.select(uploads).order_by(uploads.c.id)
        if tenant is not None:
            query = query.where(uploads.c.tenant == tenant)
        if dataset is not None:
            query = query.where(uploads.c.dataset == dataset)
        if state is not None:
            query = query.where(uploads.c.state == state)
        with self.engine.connect() as conn:
            return [Upload.from_row(r) for r in conn.execute(query)]

    def upload_facts(self, *, tenant: str | None = None) -> list[sa.Row]:
        """The figures statistics need, one row per upload, without the (large) reports."""
        query = sa.select(uploads.c.id, uploads.c.tenant, uploads.c.dataset, uploads.c.state, uploads.c.size,
                          uploads.c.rows, uploads.c.quality, uploads.c.uses, uploads.c.ingested_at,
                          uploads.c.state_since).order_by(uploads.c.id)
        if tenant is not None:
            query = query.where(uploads.c.tenant == tenant)
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def integrity_rows(self, tenant: str | None = None) -> dict[str, list[sa.Row]]:
        """What the integrity check compares with the store, read in one transaction: the
        objects of ingested and quarantined uploads with their checksums, the registered
        index runs, and training sets and feature versions with their manifests' sha256."""
        up, ts, fv = uploads, training_sets, feature_versions
        queries = {
            "uploads": sa.select(up.c.id, up.c.tenant, up.c.dataset, up.c.landing_key, up.c.state, up.c.object_key,
                                 up.c.sha256, up.c.size, up.c.data_sha256, up.c.data_size)
            .where(up.c.state.in_(sorted(INGESTED | {QUARANTINED})), up.c.object_key.is_not(None))
            .order_by(up.c.id),
            "index_runs": sa.select(index_runs.c.object_key, index_runs.c.upload_id, index_runs.c.entries,
                                    datasets.c.tenant)
            .join(datasets, datasets.c.id == index_runs.c.dataset_id).order_by(index_runs.c.id),
            "training_sets": sa.select(ts.c.tenant, ts.c.name, ts.c.version, ts.c.state, ts.c.prefix,
                                       ts.c.manifest_sha256).order_by(ts.c.id),
            "feature_versions": sa.select(fv.c.tenant, fv.c.name, fv.c.version, fv.c.state, fv.c.prefix,
                                          fv.c.manifest_sha256).order_by(fv.c.id),
        }
        tenant_of = {"uploads": up.c.tenant, "index_runs": datasets.c.tenant, "training_sets": ts.c.tenant,
                     "feature_versions": fv.c.tenant}
        with self.engine.begin() as conn:
            return {name: conn.execute(q if tenant is None else q.where(tenant_of[name] == tenant)).all()
                    for name, q in queries.items()}

    def audit_trail(self, upload_id: int) -> list[dict[str, Any]]:
        query = sa.select(audit_log).where(audit_log.c.upload_id == upload_id).order_by(audit_log.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def stats(self) -> list[dict[str, Any]]:
        """Uploads, bytes (as uploaded) and rows (kept) per tenant, dataset and state."""
        query = (
            sa.select(
                uploads.c.tenant, uploads.c.dataset, uploads.c.state,
                sa.func.count().label("uploads"),
                sa.func.coalesce(sa.func.sum(uploads.c.size), 0).label("bytes"),
                sa.func.coalesce(sa.func.sum(uploads.c.rows), 0).label("rows"),
                sa.func.coalesce(sa.func.sum(uploads.c.quarantined_rows), 0).label("quarantined_rows"),
            )
            .group_by(uploads.c.tenant, uploads.c.dataset, uploads.c.state)
            .order_by(uploads.c.tenant, uploads.c.dataset, uploads.c.state)
        )
        with self.engine.connect() as conn:
            return [
                {k: (int(v) if k in ("uploads", "bytes", "rows", "quarantined_rows") else v)
                 for k, v in r._mapping.items()}
                for r in conn.execute(query)
            ]


def _no_fresh_message(tenant: str, filters: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in sorted(filters.items()) if v not in (None, [], ()))
    return (f"no fresh data for tenant {tenant!r}" + (f" matching {shown}" if shown else "")
            + ": every matching file is already used by a training set, or nothing was ingested yet")


def _held_by_building_sets() -> sa.Select:
    """Ids of the uploads a training set still `building` holds (its build reads them)."""
    return (sa.select(training_set_files.c.upload_id)
            .join(training_sets, training_sets.c.id == training_set_files.c.training_set_id)
            .where(training_sets.c.state == BUILDING))


def _move_groups(moves: Sequence[RetentionMove]) -> list[tuple[tuple[str, str, dict | None], list[int]]]:
    """Moves grouped by (from_state, reason, detail): `_move` writes one audit text per group."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for m in moves:
        groups.setdefault((m.from_state, m.reason, json.dumps(m.detail, sort_keys=True)), []).append(m.upload_id)
    return [((s, r, json.loads(d)), sorted(ids)) for (s, r, d), ids in groups.items()]


def fewer_counts(counts: dict, less: dict) -> dict:
    """Counts per reason, fewer by `less` (reasons left at zero go)."""
    out = {k: v - less.get(k, 0) for k, v in counts.items()}
    return {k: v for k, v in out.items() if v > 0}


def _feature_version_query() -> sa.Select:
    """Feature versions with the revision of the definition each was built from."""
    return (sa.select(feature_versions, feature_definitions.c.revision)
            .join(feature_definitions, feature_definitions.c.id == feature_versions.c.definition_id))


def _index_run(row: sa.Row) -> IndexRun:
    return IndexRun(id=row.id, dataset_id=row.dataset_id, kind=row.kind, upload_id=row.upload_id,
                    object_key=row.object_key, entries=row.entries)


def _make_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # pysqlite's own transaction handling breaks SAVEPOINTs: let SQLAlchemy emit
            # BEGIN itself (the recipe from SQLAlchemy's SQLite dialect documentation).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL lets the sensor read while a run writes; foreign keys are off by default.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            # With WAL, NORMAL keeps the database consistent through any crash and skips
            # an fsync per commit; a power cut may undo the last commits, which re-runs
            # redo (every transition is idempotent). Production uses PostgreSQL.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return sa.create_engine(parsed, pool_pre_ping=True)


__all__ = [
    "FeatureDefinitionRecord", "FeatureVersion", "FAILED", "Suppressions", "SuppressionsChanged", "ErasureLeaseLost",
    "ERASURE_STARTED", "ERASURE_DONE", "fewer_counts",
    "Catalog", "Upload", "Identity", "RetentionRow", "RetentionMove", "DeletedUpload", "TrainingSet", "NoFreshData", "BUILDING", "COMPLETE", "RELEASED", "TransitionConflict", "DuplicateContent", "IndexChanged", "IndexRun", "StagedRun", "STATES", "SETTLED", "INGESTED",
    "LANDING", "FRESH", "USED", "ARCHIVED", "DEPRECATED", "DELETED", "QUARANTINED", "DUPLICATE", "metadata",
    "utcnow",
]

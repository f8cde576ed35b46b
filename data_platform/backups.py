"""Backups of the catalog and of every manifest into the store, verified restore, and
pruning by policy. Plain Python, no Dagster.

A backup is `_platform/backups/{backup_id}/`:

  tables/{nn}-{table}.parquet    one object per catalog table, in foreign-key order
  manifests/{source key}         a copy of every training-set, feature-version and export manifest
  backup.json                    written last: id, time, schema revision, rows and sha256 of each
                                 table object, source key and sha256 of each manifest copy

A prefix without backup.json is incomplete (a backup still running, or one that died):
restore and listing ignore it, pruning removes it once a day old.

Consistency: every table is read inside ONE read transaction (PostgreSQL: REPEATABLE READ
READ ONLY, one snapshot for all tables; SQLite: one transaction, which WAL serves from one
snapshot), page by page with keyset pagination on the primary key, so memory holds a page
whatever the size of the audit log. Why Parquet and not JSONL: each column keeps its type
(timestamps, booleans, floats, 64-bit ids) without a convention for encoding them, an empty
table still carries its schema, and zstd makes the audit log small; the Arrow schema comes
from the SQLAlchemy column types, so a PostgreSQL backup restores into SQLite and back.

This module reads and writes the catalog's tables directly (not through `Catalog`'s
methods): a backup is a copy of the tables, whatever they hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from data_platform import layout
from data_platform.catalog import COMPLETE, MIGRATIONS, Catalog
from data_platform.catalog.schema import VERSION_TABLE, feature_versions, metadata, training_sets
from data_platform.storage import ObjectChanged, ObjectStore

BACKUPS = f"{layout.PLATFORM}/backups/"
BACKUP_FILE = "backup.json"
FORMAT = 1
PAGE_ROWS = 5000  # rows per keyset page and per insert batch: memory holds one page
KEEP_VAR = "DATA_PLATFORM_BACKUP_KEEP"
DEFAULT_KEEP = 14
INCOMPLETE_AFTER = timedelta(days=1)  # an incomplete backup younger than this may still be running
BACKUP_ID = re.compile(r"(\d{8}T\d{6}Z)-[0-9a-f]{6}")


class BackupError(Exception):
    """A backup that cannot be made or restored; the message says why, in one line."""


def backup_keep(environ: Mapping[str, str] | None = None) -> int:
    """How many days of backups pruning keeps (DATA_PLATFORM_BACKUP_KEEP, read when asked)."""
    env = os.environ if environ is None else environ
    raw = env.get(KEEP_VAR, "").strip()
    if not raw:
        return DEFAULT_KEEP
    if not raw.isdigit() or int(raw) < 1:
        raise BackupError(f"{KEEP_VAR}={raw!r}: expected an integer >= 1")
    return int(raw)


def new_backup_id(now: datetime | None = None) -> str:
    """UTC time + random suffix: ids sort by time, and two backups never share one."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(BACKUP_ID.fullmatch(backup_id).group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def backup_prefix(backup_id: str) -> str:
    if not BACKUP_ID.fullmatch(backup_id or ""):
        raise BackupError(f"{backup_id!r} is not a backup id such as 20261123T020000Z-a1b2c3")
    return f"{BACKUPS}{backup_id}/"


# -- taking a backup -----------------------------------------------------------------------


def create_backup(store: ObjectStore, catalog: Catalog, *, now: datetime | None = None) -> dict:
    """Back up every catalog table and every manifest; returns backup.json's document."""
    started = (now or datetime.now(UTC)).astimezone(UTC)
    backup_id = new_backup_id(started)
    prefix = backup_prefix(backup_id)
    with tempfile.TemporaryDirectory(prefix="catalog-backup-") as tmp:
        with _snapshot(catalog.engine) as conn:
            revision = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            code_head = _head_revision()
            if revision != code_head:
                raise BackupError(f"the catalog is at schema revision {revision}, this code at {code_head}: "
                                  "open it with this code first (it migrates) or back it up with the matching code")
            files = [(table, *_dump_table(conn, table, Path(tmp) / f"{i:02d}-{table.name}.parquet"))
                     for i, table in enumerate(metadata.sorted_tables)]
            # Manifests of what the snapshot says is complete (their objects never change).
            manifest_keys = [f"{p}manifest.json" for p in conn.execute(
                sa.select(training_sets.c.prefix).where(training_sets.c.state == COMPLETE)
                .order_by(training_sets.c.id)).scalars()]
            manifest_keys += [f"{p}manifest.json" for p in conn.execute(
                sa.select(feature_versions.c.prefix).where(feature_versions.c.state == COMPLETE)
                .order_by(feature_versions.c.id)).scalars()]
        tables = []
        for table, path, rows in files:
            key = f"{prefix}tables/{path.name}"
            store.upload_file(path, key)
            tables.append({"name": table.name, "key": key, "rows": rows, "bytes": path.stat().st_size,
                           "sha256": _file_sha256(path), "columns": [c.name for c in table.columns]})
    manifest_keys += sorted(export_manifest_keys(store))
    manifests, missing = [], []
    for source in manifest_keys:
        body = read_object(store, source)
        if body is None:  # e.g. a week's export replaced between listing and reading
            missing.append(source)
            continue
        key = f"{prefix}manifests/{source}"
        store.put_bytes(key, body)
        manifests.append({"source": source, "key": key, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    doc = {
        "kind": "catalog_backup", "format": FORMAT, "backup_id": backup_id, "prefix": prefix,
        "created_at": started.isoformat(), "completed_at": datetime.now(UTC).isoformat(),
        "schema_revision": revision, "source_dialect": catalog.engine.dialect.name,
        "tables": tables, "manifests": manifests, "missing_manifests": missing,
        "rows": sum(t["rows"] for t in tables),
        "bytes": sum(t["bytes"] for t in tables) + sum(m["bytes"] for m in manifests),
    }
    store.put_bytes(prefix + BACKUP_FILE, json.dumps(doc, indent=2, sort_keys=True).encode())  # last: complete
    return doc


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction that sees one state of every table."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():  # SQLite: BEGIN; the first read fixes the WAL snapshot for the rest
            yield conn


def _dump_table(conn: Connection, table: sa.Table, path: Path) -> tuple[Path, int]:
    """The table as Parquet, page by page in primary-key order (keyset pagination)."""
    schema = pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in table.columns])
    pk = list(table.primary_key.columns)
    rows, last = 0, None
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        while True:
            query = sa.select(*table.columns).order_by(*pk).limit(PAGE_ROWS)
            if last is not None:
                query = query.where(sa.tuple_(*pk) > sa.tuple_(*last) if len(pk) > 1 else pk[0] > last[0])
            page = conn.execute(query).all()
            if not page:
                break
            writer.write_table(pa.table({c.name: [r[i] for r in page] for i, c in enumerate(table.columns)},
                                        schema=schema))
            rows += len(page)
            last = tuple(page[-1]._mapping[c.name] for c in pk)
            if len(page) < PAGE_ROWS:
                break
    return path, rows


def _arrow_type(sql_type: sa.types.TypeEngine) -> pa.DataType:
    if isinstance(sql_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sql_type, sa.Integer):
        return pa.int64()
    if isinstance(sql_type, sa.Float):
        return pa.float64()
    if isinstance(sql_type, sa.DateTime):
        return pa.timestamp("us")  # naive UTC, as the catalog keeps times
    return pa.string()


def export_manifest_keys(store: ObjectStore, tenant: str | None = None) -> list[str]:
    """`exports/{tenant}/{week}/manifest.json` of every week exported."""
    prefix = f"{layout.EXPORTS}/{tenant}/" if tenant else f"{layout.EXPORTS}/"
    return [info.key for info in store.list(prefix)
            if info.key.count("/") == 3 and info.key.endswith("/manifest.json")]


def read_object(store: ObjectStore, key: str) -> bytes | None:
    """The whole (small) object in one GET, or None if it is not there."""
    try:
        with store.open_read(key) as (_, src):
            return src.read()
    except ObjectChanged:
        return None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# -- listing and pruning --------------------------------------------------------------------


@dataclass(frozen=True)
class BackupEntry:
    backup_id: str
    complete: bool
    keys: tuple[str, ...]
    bytes: int

    @property
    def time(self) -> datetime:
        return backup_time(self.backup_id)


def scan_backups(store: ObjectStore) -> list[BackupEntry]:
    """Every backup prefix in the store, oldest first (one listing)."""
    found: dict[str, list] = {}
    for info in store.list(BACKUPS):
        backup_id = info.key[len(BACKUPS):].split("/", 1)[0]
        if BACKUP_ID.fullmatch(backup_id):  # anything else under _platform/backups/ is not ours to touch
            found.setdefault(backup_id, []).append(info)
    return [BackupEntry(i, any(o.key == f"{BACKUPS}{i}/{BACKUP_FILE}" for o in objs), tuple(o.key for o in objs),
                        sum(o.size for o in objs))
            for i, objs in sorted(found.items())]


def read_backup(store: ObjectStore, backup_id: str) -> dict:
    """backup.json of a complete backup; `latest` is the newest complete one."""
    if backup_id == "latest":
        complete = [b for b in scan_backups(store) if b.complete]
        if not complete:
            raise BackupError(f"no complete backup under {BACKUPS}")
        backup_id = complete[-1].backup_id
    body = read_object(store, backup_prefix(backup_id) + BACKUP_FILE)
    if body is None:
        raise BackupError(f"backup {backup_id} is not complete (no {BACKUP_FILE}) or does not exist")
    return json.loads(body)


def list_backups(store: ObjectStore) -> list[dict]:
    """Every backup, newest first: complete ones with what their backup.json says."""
    out = []
    for b in reversed(scan_backups(store)):
        entry = {"backup_id": b.backup_id, "complete": b.complete, "objects": len(b.keys), "bytes": b.bytes,
                 "time": b.time.isoformat()}
        if b.complete:
            doc = read_backup(store, b.backup_id)
            entry.update(created_at=doc["created_at"], completed_at=doc["completed_at"],
                         schema_revision=doc["schema_revision"], source_dialect=doc["source_dialect"],
                         rows=doc["rows"], tables={t["name"]: t["rows"] for t in doc["tables"]},
                         manifests=len(doc["manifests"]))
        out.append(entry)
    return out


def prune_backups(store: ObjectStore, *, keep: int | None = None, now: datetime | None = None) -> dict:
    """Keep the newest complete backup of each of the last `keep` days that have one
    (DATA_PLATFORM_BACKUP_KEEP, default 14); delete the other complete backups and the
    incomplete ones more than a day old. The newest complete backup is always kept."""
    keep = backup_keep() if keep is None else keep
    if keep < 1:
        raise BackupError("keep must be at least 1: the newest complete backup is never pruned")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    backups = scan_backups(store)
    newest_per_day: dict[date, BackupEntry] = {}
    for b in backups:
        if b.complete:
            newest_per_day[b.time.date()] = b  # oldest first: the last one of a day wins
    kept = {newest_per_day[d].backup_id for d in sorted(newest_per_day)[-keep:]}
    pruned, pruned_incomplete = [], []
    for b in backups:
        if b.complete and b.backup_id not in kept:
            pruned.append(b)
        elif not b.complete and now - b.time > INCOMPLETE_AFTER:
            pruned_incomplete.append(b)
    for b in pruned + pruned_incomplete:
        # backup.json first: a prune that dies half-way leaves an incomplete backup, never a
        # "complete" one with objects missing.
        marker = f"{BACKUPS}{b.backup_id}/{BACKUP_FILE}"
        if marker in b.keys:
            store.delete(marker)
        store.delete_many([k for k in b.keys if k != marker])
    return {"keep": keep, "kept": sorted(kept), "pruned": [b.backup_id for b in pruned],
            "pruned_incomplete": [b.backup_id for b in pruned_incomplete],
            "bytes_freed": sum(b.bytes for b in pruned + pruned_incomplete)}


# -- restoring -------------------------------------------------------------------------------


def restore_backup(store: ObjectStore, catalog_url: str, backup_id: str = "latest", *, force: bool = False,
                   restore_manifests: bool = False) -> dict:
    """Restore a complete backup into an EMPTY catalog (with `force`, whatever the catalog
    holds is dropped first): every table object is downloaded and checked against
    backup.json before the catalog is touched; the schema is brought to the backup's
    revision, rows are inserted in foreign-key order in one transaction, PostgreSQL's
    sequences are moved past the restored ids, counts are checked, then the schema is
    migrated to this code's head. With `restore_manifests`, manifests missing from the
    store are put back from the backup's copies."""
    doc = read_backup(store, backup_id)
    revision = doc["schema_revision"]
    if doc.get("format") != FORMAT:
        raise BackupError(f"backup {doc['backup_id']} has format {doc.get('format')}, this code reads {FORMAT}")
    if revision not in _known_revisions():
        raise BackupError(f"backup {doc['backup_id']} is at schema revision {revision}, newer than this code "
                          f"(head {_head_revision()}): restore it with newer code")
    catalog = Catalog(catalog_url)
    engine = catalog.engine
    with tempfile.TemporaryDirectory(prefix="catalog-restore-") as tmp:
        local = {}
        for t in doc["tables"]:
            path = Path(tmp) / Path(t["key"]).name
            try:
                with open(path, "wb") as dst:
                    info, digest = store.download(t["key"], dst)
            except ObjectChanged:
                raise BackupError(f"backup {doc['backup_id']} is damaged: {t['key']} is missing") from None
            if digest != t["sha256"] or info.size != t["bytes"]:
                raise BackupError(f"backup {doc['backup_id']} is damaged: {t['key']} differs from {BACKUP_FILE}")
            local[t["name"]] = path
        non_empty = _non_empty_tables(engine)
        if non_empty and not force:
            raise BackupError(f"the catalog is not empty ({', '.join(non_empty)} hold rows): restore only into an "
                              "empty catalog, or pass --force to drop everything in it first")
        _drop_everything(engine)
        _upgrade(engine, revision)
        with engine.begin() as conn:
            for t in doc["tables"]:
                _load_table(conn, t, local[t["name"]])
            counts = {t["name"]: conn.execute(sa.text(f'SELECT count(*) FROM "{t["name"]}"')).scalar()
                      for t in doc["tables"]}
            wrong = {t["name"]: (counts[t["name"]], t["rows"]) for t in doc["tables"]
                     if counts[t["name"]] != t["rows"]}
            if wrong:  # raising rolls the inserts back: the catalog stays empty
                raise BackupError(f"row counts differ after restore (found, expected): {wrong}")
            if engine.dialect.name == "postgresql":
                _reset_sequences(conn, [t["name"] for t in doc["tables"]])
    _upgrade(engine, "head")
    result = {"backup_id": doc["backup_id"], "schema_revision": revision, "migrated_to": _head_revision(),
              "source_dialect": doc["source_dialect"], "target_dialect": engine.dialect.name,
              "dropped_rows_from": non_empty, "tables": counts, "rows": sum(counts.values())}
    if restore_manifests:
        result["manifests"] = _restore_manifests(store, doc)
    return result


def _non_empty_tables(engine: Engine) -> list[str]:
    existing = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        return [t.name for t in metadata.sorted_tables if t.name in existing
                and conn.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first() is not None]


def _drop_everything(engine: Engine) -> None:
    """Drop the catalog's tables and its revision table (never anything else in the
    database: Dagster's storage may share it)."""
    with engine.begin() as conn:
        metadata.drop_all(conn, checkfirst=True)
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _upgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = _alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def _load_table(conn: Connection, entry: dict, path: Path) -> None:
    """Insert a table's rows in batches. Columns are the backup's (its revision's), typed
    as this code types them. A self-reference (uploads.duplicate_of) is set after every
    row is in, since a row may point at one with a higher id."""
    table = metadata.tables.get(entry["name"])
    known = table.columns if table is not None else {}
    columns = [sa.column(name, known[name].type if name in known else sa.types.NullType()) for name in entry["columns"]]
    target = sa.table(entry["name"], *columns)
    self_refs = [fk.parent.name for fk in (table.foreign_keys if table is not None else ())
                 if fk.column.table is table and fk.parent.name in entry["columns"]]
    pk = [c.name for c in table.primary_key.columns] if table is not None else []
    later: list[dict] = []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PAGE_ROWS):
        rows = batch.to_pylist()
        for row in rows:
            refs = {name: row[name] for name in self_refs if row[name] is not None}
            if refs:
                later.append({**{f"pk_{k}": row[k] for k in pk}, **{f"v_{k}": v for k, v in refs.items()}})
                row.update(dict.fromkeys(refs))
        conn.execute(target.insert(), rows)
    for name in self_refs:
        todo = [r for r in later if f"v_{name}" in r]
        if todo:
            conn.execute(
                target.update().where(*[target.c[k] == sa.bindparam(f"pk_{k}") for k in pk])
                .values({name: sa.bindparam(f"v_{name}")}), todo)


def _reset_sequences(conn: Connection, names: list[str]) -> None:
    """After explicit ids, each serial/identity sequence continues past the largest."""
    for name in names:
        table = metadata.tables.get(name)
        column = table.autoincrement_column if table is not None else None
        if column is None:
            continue
        conn.execute(sa.text(
            f"SELECT setval(pg_get_serial_sequence(:t, :c), COALESCE(MAX({column.name}), 1), "
            f"MAX({column.name}) IS NOT NULL) FROM {name}"), {"t": name, "c": column.name})


def _restore_manifests(store: ObjectStore, doc: dict) -> dict:
    restored, present, damaged = [], 0, []
    for m in doc["manifests"]:
        if store.exists(m["source"]):
            present += 1
            continue
        body = read_object(store, m["key"])
        if body is None or hashlib.sha256(body).hexdigest() != m["sha256"]:
            damaged.append(m["key"])
            continue
        store.put_bytes(m["source"], body)
        restored.append(m["source"])
    return {"restored": restored, "present": present, "damaged_copies": damaged}


__all__ = ["BackupError", "BackupEntry", "create_backup", "restore_backup", "list_backups", "prune_backups",
           "read_backup", "scan_backups", "backup_keep", "new_backup_id", "export_manifest_keys", "BACKUPS",
           "BACKUP_FILE", "KEEP_VAR"]

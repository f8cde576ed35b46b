"""Registering feature tables, materialising immutable versions, reading them back.

A version is a full snapshot of the feature table as the source data stood when it was
built: every ingested file of the source dataset (states fresh, used, archived), read
one at a time in upload order, transformed per batch, cut down to entity keys + event
timestamp (+ created timestamp) + features, cast to the declared types, written as
Parquet parts under `features/{tenant}/{name}/v{version:04d}/`, then `manifest.json`,
then one catalog transaction makes it `complete`. A complete version is never written
again: numbers are never reused (a failed build keeps its number), and a build refuses
a prefix that already holds objects.
"""

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_platform import layout, tenancy
from data_platform.catalog import (
    ARCHIVED, COMPLETE, FRESH, USED, Catalog, FeatureDefinitionRecord, FeatureVersion, Upload, utcnow,
)
from data_platform.features.definition import FeatureDefinition, FeatureError, FeatureNotFound
from data_platform.storage import ObjectChanged, ObjectStore

# Deprecated files are on their way out (and erasure may be pending): not read into new versions.
SOURCE_STATES = (FRESH, USED, ARCHIVED)
# A build still `building` after this long has lost its builder (10M rows build in seconds).
ABANDONED_AFTER = timedelta(hours=6)
PART_ROWS = 1_000_000
READ_BATCH_ROWS = 64 * 1024
TIMESTAMP = pa.timestamp("us", tz="UTC")


# -- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    record: FeatureDefinitionRecord
    created: bool  # False: the latest revision was already this definition

    def as_dict(self) -> dict:
        return {"tenant": self.record.tenant, "name": self.record.name, "revision": self.record.revision,
                "created": self.created, "definition_sha256": self.record.definition_sha256,
                "definition": self.record.definition, "created_at": _iso(self.record.created_at),
                "created_by": self.record.created_by}


def register_feature_table(catalog: Catalog, tenant: str, definition: FeatureDefinition | dict, *,
                           actor: str, source: str = "definition") -> Registration:
    """Register (tenant, definition.name): the same definition again changes nothing; a
    different one becomes the next revision, which the next version is built from."""
    layout.check_name("tenant", tenant)
    catalog = tenancy.scope_catalog(catalog, tenant)
    if isinstance(definition, dict):
        tenant_in_file = definition.get("tenant")
        if tenant_in_file is not None and tenant_in_file != tenant:
            raise FeatureError(f"the definition is for tenant {tenant_in_file!r}, not {tenant!r}")
        definition = FeatureDefinition.parse(definition, source=source)
    definition.load_transform()  # a transformation that cannot be loaded fails now, not at build time
    record, created = catalog.register_feature_definition(
        tenant=tenant, name=definition.name, definition=definition.to_dict(), owner=definition.owner,
        description=definition.description, actor=actor)
    return Registration(record, created)


def get_definition(catalog: Catalog, tenant: str, name: str,
                   revision: int | None = None) -> tuple[FeatureDefinitionRecord, FeatureDefinition]:
    record = tenancy.scope_catalog(catalog, tenant).feature_definition(tenant, name, revision)
    if record is None:
        raise FeatureNotFound(_not_found(tenant, name, revision=revision))
    return record, FeatureDefinition.from_dict(record.definition)


def get_version(catalog: Catalog, tenant: str, name: str, version: int | None = None) -> FeatureVersion:
    """A complete version (the latest with None). Building or failed ones are not data."""
    found = tenancy.scope_catalog(catalog, tenant).feature_version(tenant, name, version)
    if found is None or found.state != COMPLETE:
        raise FeatureNotFound(_not_found(tenant, name, version=version))
    return found


def list_versions(catalog: Catalog, tenant: str, name: str | None = None) -> list[FeatureVersion]:
    """Every version of the tenant's feature tables (any state), by name and number."""
    return tenancy.scope_catalog(catalog, tenant).feature_versions(tenant, name)


def read_manifest(store: ObjectStore, catalog: Catalog, version: FeatureVersion) -> dict:
    """The version's manifest, checked against the sha256 the catalog recorded."""
    store = tenancy.scope_store(store, version.tenant)
    body = store.get_bytes(f"{version.prefix}manifest.json")
    if version.manifest_sha256 and hashlib.sha256(body).hexdigest() != version.manifest_sha256:
        raise FeatureError(f"{version.prefix}manifest.json differs from the one recorded when it was built")
    manifest = json.loads(body)
    for part in manifest["parts"]:
        if not part["key"].startswith(version.prefix):  # a manifest never points outside its version
            raise FeatureError(f"{version.prefix}manifest.json lists {part['key']!r} outside its prefix")
    return manifest


def verify_version(store: ObjectStore, catalog: Catalog, version: FeatureVersion) -> list[str]:
    """Problems found re-hashing every part against the manifest ([] when intact)."""
    store = tenancy.scope_store(store, version.tenant)
    problems = []
    for part in read_manifest(store, catalog, version)["parts"]:
        digest = hashlib.sha256()
        try:
            with store.open_read(part["key"]) as (_, src):
                while chunk := src.read(8 * 1024 * 1024):
                    digest.update(chunk)
        except ObjectChanged:
            problems.append(f"{part['key']}: missing")
            continue
        if digest.hexdigest() != part["sha256"]:
            problems.append(f"{part['key']}: sha256 differs from the manifest")
    return problems


def read_version(store: ObjectStore, catalog: Catalog, version: FeatureVersion,
                 columns: list[str] | None = None) -> pa.Table:
    """A version's rows in the order they were written (which breaks ties: see retrieval)."""
    store = tenancy.scope_store(store, version.tenant)
    manifest = read_manifest(store, catalog, version)
    tables = [pq.read_table(store.fs_path(p["key"]), filesystem=store.filesystem, columns=columns)
              for p in manifest["parts"]]
    return pa.concat_tables(tables)  # never empty: a version has at least one part


# -- materialisation --------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    version: FeatureVersion
    manifest: dict


def materialise_feature_table(store: ObjectStore, catalog: Catalog, tenant: str, name: str, *, actor: str,
                              run_id: str | None = None) -> BuildResult:
    """Build the next version of the feature table from its latest definition."""
    store, catalog = tenancy.scoped(store, catalog, tenant)
    record, definition = get_definition(catalog, tenant, name)
    transform = definition.load_transform()
    files = [u for u in catalog.list_uploads(tenant=tenant, dataset=definition.dataset)
             if u.state in SOURCE_STATES and u.object_key]
    if not files:
        raise FeatureError(f"feature table {name!r}: tenant {tenant!r} has no ingested data in dataset "
                           f"{definition.dataset!r} (states {', '.join(SOURCE_STATES)})")
    version = catalog.start_feature_version(
        record, prefix_of=lambda n: layout.feature_version_prefix(tenant, name, n),
        code_version=definition.code_version(), actor=actor)
    try:
        if next(iter(store.list(version.prefix)), None) is not None:
            # Only a catalog restored behind the bucket could get here: never overwrite.
            raise FeatureError(f"{version.prefix} already holds objects; refusing to write over them")
        with tempfile.TemporaryDirectory(prefix="feature-version-") as tmp:
            writer = _PartWriter(store, version.prefix, Path(tmp))
            sources, counts = [], {"rows_read": 0, "rows_dropped_null_key_or_timestamp": 0}
            ts_range = _Range()
            for upload in files:
                source = _Source(upload)
                for table in _read_source(store, catalog, source, definition, transform, Path(tmp)):
                    counts["rows_read"] += table.num_rows
                    table = _shape(table, definition, writer.schema, source=f"upload {upload.id}")
                    kept = _drop_unplaceable(table, definition)
                    counts["rows_dropped_null_key_or_timestamp"] += table.num_rows - kept.num_rows
                    source.rows += kept.num_rows
                    ts_range.add(kept.column(definition.event_timestamp))
                    writer.write(kept)
                sources.append(source.as_dict())
            parts = writer.close(_empty_schema(definition, writer.schema))
        schema = writer.schema
        manifest = _manifest(version, record, definition, parts, schema, sources, counts, ts_range, run_id)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        store.put_bytes(f"{version.prefix}manifest.json", body)
        done = catalog.complete_feature_version(
            version, rows=manifest["rows"], size=manifest["bytes"], schema=manifest["schema"],
            manifest_sha256=hashlib.sha256(body).hexdigest(),
            sources=[{"upload_id": s["upload_id"], "sha256": s["sha256"], "object_key": s["object_key"],
                      "rows": s["rows"]} for s in sources],
            detail={"parts": len(parts), "run_id": run_id, **counts})
    except Exception as err:
        catalog.fail_feature_version(version, error=f"{type(err).__name__}: {err}")
        raise
    return BuildResult(done, manifest)


@dataclass
class _Source:
    upload: Upload
    object_key: str | None = None
    sha256: str | None = None  # of the Parquet object read
    rows: int = 0

    def as_dict(self) -> dict:
        u = self.upload
        return {"upload_id": u.id, "dataset": u.dataset, "landing_key": u.landing_key, "object_key": self.object_key,
                "sha256": self.sha256, "upload_sha256": u.sha256, "rows": self.rows, "rows_in_file": u.rows,
                "ingested_at": _iso(u.ingested_at)}


def _read_source(store: ObjectStore, catalog: Catalog, source: _Source, definition: FeatureDefinition,
                 transform: Callable[[pa.Table], pa.Table] | None, tmp: Path) -> Iterator[pa.Table]:
    """One file's rows in batches: one streaming GET into a temp file (Parquet wants random
    access), hashed on the way. If retention archived the file meanwhile, read it there."""
    local = tmp / "source.parquet"
    upload = source.upload
    for attempt in range(2):
        try:
            with open(local, "wb") as dst:
                _, source.sha256 = store.download(upload.object_key, dst)
            break
        except ObjectChanged:
            again = catalog.get(upload.id)
            if attempt or again is None or again.state not in SOURCE_STATES or again.object_key == upload.object_key:
                raise FeatureError(f"upload {upload.id}: its data {upload.object_key} is gone") from None
            upload = again
    source.object_key = upload.object_key
    try:
        parquet = pq.ParquetFile(local)
        wanted = None
        if transform is None:  # read only the columns the table needs
            wanted = definition.entity_names + [definition.event_timestamp] + (
                [definition.created_timestamp] if definition.created_timestamp else []) + definition.feature_names
            missing = [c for c in wanted if c not in parquet.schema_arrow.names]
            if missing:
                raise FeatureError(f"upload {upload.id} of dataset {definition.dataset!r} has no column(s) "
                                   f"{', '.join(missing)} (it has {', '.join(parquet.schema_arrow.names)})")
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted):
            table = pa.Table.from_batches([batch])
            if transform is not None:
                table = transform(table)
                if not isinstance(table, pa.Table):
                    raise FeatureError(f"transform {definition.transform!r} returned {type(table).__name__}, "
                                       "not a pyarrow.Table")
            yield table
    finally:
        local.unlink(missing_ok=True)


def _shape(table: pa.Table, definition: FeatureDefinition, schema: pa.Schema | None, *, source: str) -> pa.Table:
    """Entity keys, event time (UTC microseconds), created time, features: in that order,
    cast to the declared types (undeclared key types: the first batch's, then held)."""
    needed = definition.entity_names + [definition.event_timestamp] + definition.feature_names + (
        [definition.created_timestamp] if definition.created_timestamp else [])
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise FeatureError(f"{source}: no column(s) {', '.join(missing)} after the transformation "
                           f"(it has {', '.join(table.column_names)})")
    arrays, fields = [], []
    for i, col in enumerate(definition.entities):
        target = schema.field(i).type if schema is not None else col.arrow_type
        arr = _decoded(table.column(col.name))
        arrays.append(_cast(arr, target, col.name, source) if target is not None else arr)
        fields.append(pa.field(col.name, arrays[-1].type))
    for ts_col in [definition.event_timestamp] + ([definition.created_timestamp] if definition.created_timestamp
                                                  else []):
        arrays.append(to_utc_timestamp(table.column(ts_col), ts_col, source))
        fields.append(pa.field(ts_col, TIMESTAMP))
    for col in definition.features:
        arrays.append(_cast(_decoded(table.column(col.name)), col.arrow_type, col.name, source))
        fields.append(pa.field(col.name, col.arrow_type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _decoded(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    return arr.cast(arr.type.value_type) if pa.types.is_dictionary(arr.type) else arr


def _cast(arr: pa.ChunkedArray, target: pa.DataType, column: str, source: str) -> pa.ChunkedArray:
    if arr.type == target:
        return arr
    try:
        return arr.cast(target)  # safe: no silent overflow or truncation
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise FeatureError(f"{source}: column {column!r} ({arr.type}) cannot be cast to {target}: "
                           f"{str(err).splitlines()[0]}") from err


def to_utc_timestamp(arr: pa.ChunkedArray | pa.Array, column: str, source: str) -> pa.ChunkedArray:
    """A timestamp column as UTC microseconds. Naive timestamps are taken as UTC; strings
    are parsed as ISO 8601; dates are midnight UTC. Finer units are truncated (down: a
    truncated entity time can only see fewer feature rows, never a later one)."""
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr])
    arr = _decoded(arr)
    try:
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
            try:
                arr = arr.cast(TIMESTAMP)
            except pa.ArrowInvalid:
                arr = arr.cast(pa.timestamp("us"))
        if pa.types.is_date(arr.type):
            arr = arr.cast(pa.timestamp("us"))
        if not pa.types.is_timestamp(arr.type):
            raise FeatureError(f"{source}: column {column!r} is {arr.type}, not a timestamp")
        if arr.type.unit != "us" or arr.type.tz is None:
            arr = pc.cast(arr, pa.timestamp("us", tz=arr.type.tz), safe=False)
        return arr.cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise FeatureError(f"{source}: column {column!r} cannot be read as timestamps: "
                           f"{str(err).splitlines()[0]}") from err


def _drop_unplaceable(table: pa.Table, definition: FeatureDefinition) -> pa.Table:
    """Rows with a null entity key or event time can never be joined: not written."""
    mask = None
    for col in definition.entity_names + [definition.event_timestamp]:
        valid = pc.is_valid(table.column(col))
        mask = valid if mask is None else pc.and_(mask, valid)
    return table if pc.all(mask).as_py() is not False else table.filter(mask)


def _empty_schema(definition: FeatureDefinition, schema: pa.Schema | None) -> pa.Schema:
    if schema is not None:
        return schema
    fields = [pa.field(c.name, c.arrow_type or pa.string()) for c in definition.entities]
    fields += [pa.field(c, TIMESTAMP) for c in [definition.event_timestamp, definition.created_timestamp] if c]
    return pa.schema(fields + [pa.field(c.name, c.arrow_type) for c in definition.features])


class _Range:
    def __init__(self):
        self.low = self.high = None

    def add(self, arr: pa.ChunkedArray) -> None:
        found = pc.min_max(arr).as_py()
        if found["min"] is not None:
            self.low = found["min"] if self.low is None else min(self.low, found["min"])
            self.high = found["max"] if self.high is None else max(self.high, found["max"])


class _PartWriter:
    """Parquet parts of `PART_ROWS` rows, each written locally, hashed and put once."""

    def __init__(self, store: ObjectStore, prefix: str, tmp: Path):
        self.store, self.prefix, self.tmp = store, prefix, tmp
        self.schema: pa.Schema | None = None
        self.parts: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        while table.num_rows:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp / "part.parquet", self.schema, compression="zstd")
            take = table.slice(0, PART_ROWS - self._rows)
            self._writer.write_table(take, row_group_size=128 * 1024)
            self._rows += take.num_rows
            table = table.slice(take.num_rows)
            if self._rows >= PART_ROWS:
                self._finish()

    def close(self, schema: pa.Schema) -> list[dict]:
        if self._writer is not None or not self.parts:
            self.schema = self.schema or schema
            self._finish()  # a table with no rows still has one (empty) part: readers find its schema
        return self.parts

    def _finish(self) -> None:
        local = self.tmp / "part.parquet"
        if self._writer is None:
            self._writer = pq.ParquetWriter(local, self.schema, compression="zstd")
        self._writer.close()
        key = f"{self.prefix}part-{len(self.parts):05d}.parquet"
        with open(local, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self.store.upload_file(local, key)
        self.parts.append({"key": key, "rows": self._rows, "bytes": local.stat().st_size, "sha256": digest})
        local.unlink()
        self._writer, self._rows = None, 0


def _manifest(version: FeatureVersion, record: FeatureDefinitionRecord, definition: FeatureDefinition,
              parts: list[dict], schema: pa.Schema, sources: list[dict], counts: dict, ts_range: _Range,
              run_id: str | None) -> dict:
    return {
        "format": "parquet", "kind": "feature_table",
        "tenant": version.tenant, "name": version.name, "version": version.version, "prefix": version.prefix,
        "revision": record.revision, "definition": record.definition,
        "definition_sha256": record.definition_sha256, "code_version": version.code_version,
        "created_by": version.created_by, "created_at": _iso(version.created_at),
        "completed_at": datetime.now(UTC).isoformat(), "run_id": run_id,
        "rows": sum(p["rows"] for p in parts), "bytes": sum(p["bytes"] for p in parts),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "entities": definition.entity_names, "event_timestamp": definition.event_timestamp,
        "created_timestamp": definition.created_timestamp, "features": definition.feature_names,
        "event_timestamp_min": ts_range.low.isoformat() if ts_range.low else None,
        "event_timestamp_max": ts_range.high.isoformat() if ts_range.high else None,
        "parts": parts, "sources": sources, **counts,
    }


def _not_found(tenant: str, name: str, *, version: int | None = None, revision: int | None = None) -> str:
    what = f" version {version}" if version is not None else (f" revision {revision}" if revision else "")
    return f"no feature table {name!r}{what} for tenant {tenant!r}"


def abandon_stale_builds(catalog: Catalog, *, now: datetime | None = None) -> list[tuple[str, str, int]]:
    """Mark builds whose builder died `failed` (see ABANDONED_AFTER): their version
    numbers stay used, and cleanup sweeps their objects. Returns (tenant, name, version)."""
    now = now or utcnow()
    return catalog.abandon_feature_builds(started_before=now - ABANDONED_AFTER, now=now)


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


__all__ = ["Registration", "BuildResult", "register_feature_table", "get_definition", "get_version", "list_versions",
           "read_manifest", "verify_version", "read_version", "materialise_feature_table", "to_utc_timestamp",
           "SOURCE_STATES", "ABANDONED_AFTER", "abandon_stale_builds", "utcnow"]

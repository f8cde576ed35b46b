"""Weekly ML exports: one tenant's data of one ISO week as Parquet, CSV or JSON Lines.

**What a week holds.** For tenant T and ISO week W (`2026-W47`: Monday 00:00 UTC to the
next Monday 00:00 UTC), the uploads of T whose `ingested_at` falls in that window and
that are `fresh` or `used` when the export runs. Files archived, deprecated or deleted
since are not exported (re-running an old week exports what is left of it); a file that
retention moves while the export reads it is skipped and listed as such.

**Layout.** Parts go to `exports/{tenant}/{week}/{export_id}/{dataset}/part-{n:05d}.{ext}`,
where `export_id` is a sortable UTC time plus a random suffix; each part is one group of
source files (up to about `GROUP_BYTES` of source Parquet) converted by DuckDB with an
`_upload_id` column. `exports/{tenant}/{week}/manifest.json` names the export_id whose
parts are the week's export: it is the single source of truth and readers read it first.

**Atomic replacement.** All new parts are written, then the manifest is PUT (one PUT is
atomic on S3 and a rename on a local directory), then the parts of the export it replaced
are deleted. Until the PUT, readers see the old export, complete. A crash before it leaves
parts that no manifest names: a later run of the week deletes them once they are older
than `ORPHAN_AGE` (younger ones may belong to a run still writing).

`verify_export` re-reads every part the manifest lists (one streaming GET each) and
compares sha256, size and row count with the manifest.
"""

import hashlib
import json
import os
import re
import secrets
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from data_platform import layout, tenancy
from data_platform.catalog import FRESH, INGESTED, USED, Catalog, Upload, to_naive_utc
from data_platform.contracts import EXPORT_FORMATS
from data_platform.storage import ObjectChanged, ObjectStore

EXPORTED_STATES = (FRESH, USED)
GROUP_BYTES = 256 * 1024 * 1024  # source Parquet per part: big parts, bounded temp disk
ORPHAN_AGE = timedelta(hours=1)  # unreferenced parts younger than this may be a run in progress
MANIFEST = "manifest.json"
SOURCE_COLUMN = "_upload_id"  # as in training sets: which upload each row came from
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
EXPORT_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
# DuckDB streams the COPY; the limit keeps a large week from growing the process. Its
# zstd Parquet writer needs ~200 MB with two threads (192 MB runs out) and spends up to
# twice the CPU evicting buffers near the limit (256 MB): 320 MB, with 32 MB row groups.
DUCKDB_MEMORY_LIMIT = "320MB"
DUCKDB_THREADS = 2  # fixed with the limit: each writer thread buffers its own row groups
TEXT_TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%f"  # ISO-8601; 'Z' appended for UTC timestamps


class ExportError(ValueError):
    """An export that cannot be made as asked (bad week, format, data that cannot be combined)."""


@dataclass(frozen=True)
class Week:
    key: str  # 2026-W47
    start: datetime  # Monday 00:00 UTC
    end: datetime  # the next Monday 00:00 UTC (excluded)

    @classmethod
    def parse(cls, key: str) -> "Week":
        try:
            layout.check_week(key)
        except layout.InvalidKey as err:
            raise ExportError(str(err)) from None
        year, week = key.split("-W")
        monday = date.fromisocalendar(int(year), int(week), 1)
        start = datetime.combine(monday, time(), UTC)
        return cls(key, start, start + timedelta(days=7))

    @classmethod
    def containing(cls, day: date | datetime) -> "Week":
        if isinstance(day, datetime):
            day = day.astimezone(UTC).date() if day.tzinfo else day.date()
        iso = day.isocalendar()
        return cls.parse(f"{iso.year}-W{iso.week:02d}")


@dataclass
class ExportResult:
    manifest: dict
    manifest_key: str
    removed: list[str] = field(default_factory=list)  # export_ids deleted after the manifest PUT

    def summary(self) -> dict:
        m = self.manifest
        return {"tenant": m["tenant"], "week": m["week"], "format": m["format"], "export_id": m["export_id"],
                "manifest_key": self.manifest_key, "rows": m["rows"], "bytes": m["bytes"], "parts": len(m["parts"]),
                "files": len(m["files"]), "skipped": len(m["skipped"]), "empty": m["empty"],
                "removed_exports": self.removed}


def week_uploads(catalog: Catalog, tenant: str, week: Week) -> list[Upload]:
    """The uploads a week's export holds (see the module docstring), oldest first."""
    start, end = to_naive_utc(week.start), to_naive_utc(week.end)
    found = [u for state in EXPORTED_STATES for u in catalog.list_uploads(tenant=tenant, state=state)
             if u.ingested_at is not None and start <= to_naive_utc(u.ingested_at) < end]
    return sorted(found, key=lambda u: u.id)


def tenants_with_data(catalog: Catalog) -> list[str]:
    """Tenants that have ingested anything: the weekly schedule exports each of them."""
    return sorted({r["tenant"] for r in catalog.stats() if r["tenant"] and r["state"] in INGESTED})


def export_week(store: ObjectStore, catalog: Catalog, tenant: str, week: str, *, fmt: str = "parquet",
                run_id: str | None = None, now: datetime | None = None, settings_source: str | None = None
                ) -> ExportResult:
    """Export one tenant's week and make it the week's export (see the module docstring)."""
    try:
        layout.check_name("tenant", tenant)
    except layout.InvalidKey as err:
        raise ExportError(str(err)) from None
    store, catalog = tenancy.scoped(store, catalog, tenant)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    window = Week.parse(week)
    now = now or datetime.now(UTC)
    prefix = layout.export_prefix(tenant, window.key)
    export_id = f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    replaced = _current_export_id(store, prefix + MANIFEST)
    uploads = week_uploads(catalog, tenant, window)
    writer = _Writer(store, catalog, tenant, f"{prefix}{export_id}/", fmt)
    try:
        writer.write(uploads)
        manifest = _manifest(tenant, window, fmt, export_id, writer, now=now, run_id=run_id, replaced=replaced,
                             settings_source=settings_source)
        store.put_bytes(prefix + MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    except Exception:
        # Nothing names these parts (unless the PUT landed and only its answer was lost):
        # take them away now rather than leave them for an hour.
        if _current_export_id(store, prefix + MANIFEST) != export_id:
            store.delete_many(p["key"] for p in writer.parts)
        raise
    return ExportResult(manifest, prefix + MANIFEST, _remove_replaced(store, prefix, export_id, replaced, now))


def _current_export_id(store: ObjectStore, manifest_key: str) -> str | None:
    try:
        found = json.loads(store.get_bytes(manifest_key)).get("export_id")
    except Exception:  # noqa: BLE001 - no manifest (or an unreadable one) replaces nothing
        return None
    return found if isinstance(found, str) and EXPORT_ID.fullmatch(found) else None


def _remove_replaced(store: ObjectStore, prefix: str, export_id: str, replaced: str | None,
                     now: datetime) -> list[str]:
    """Delete every export_id of the week the manifest does not name: the one just
    replaced and our own (if a concurrent run's manifest won) at once, others only when
    old. The manifest is read again first: it, not our memory, says what is current."""
    current = _current_export_id(store, prefix + MANIFEST)
    if current is None:
        return []
    by_id: dict[str, list] = defaultdict(list)
    for info in store.list(prefix):
        head, sep, _ = info.key[len(prefix):].partition("/")
        if sep and EXPORT_ID.fullmatch(head):
            by_id[head].append(info)
    removed = []
    for eid, infos in sorted(by_id.items()):
        if eid == current:
            continue
        if eid in (replaced, export_id) or now - max(i.last_modified for i in infos) >= ORPHAN_AGE:
            store.delete_many(i.key for i in infos)
            removed.append(eid)
    return removed


# -- writing parts ------------------------------------------------------------------------------


class _Writer:
    """Downloads each source file once (one streaming GET) into a temp directory and
    turns each group of them into one part with DuckDB, which streams the rows."""

    def __init__(self, store: ObjectStore, catalog: Catalog, tenant: str, part_prefix: str, fmt: str):
        self.store, self.catalog, self.tenant, self.part_prefix, self.fmt = store, catalog, tenant, part_prefix, fmt
        self.parts: list[dict] = []
        self.files: list[dict] = []
        self.skipped: list[dict] = []
        self.schemas: dict[str, pa.Schema] = {}

    def write(self, uploads: list[Upload]) -> None:
        by_dataset: dict[str, list[Upload]] = defaultdict(list)
        for upload in uploads:
            # Defence in depth: a tenant's export reads only that tenant's data.
            if upload.tenant != self.tenant or not (upload.object_key or "").startswith(
                    f"{layout.DATA}/{self.tenant}/{upload.dataset}/"):
                raise ExportError(f"upload {upload.id}: object {upload.object_key!r} is not "
                                  f"{self.tenant}'s data")
            by_dataset[upload.dataset].append(upload)
        if not by_dataset:
            return
        with tempfile.TemporaryDirectory(prefix="export-") as tmp:
            self.tmp = Path(tmp)
            self.con = duckdb.connect()
            try:
                self.con.execute(f"SET memory_limit='{DUCKDB_MEMORY_LIMIT}'; SET threads={DUCKDB_THREADS};"
                                 f"SET preserve_insertion_order=false; SET TimeZone='UTC';"
                                 f"SET temp_directory='{_sql_text(str(self.tmp / 'duckdb'))}'")
                for dataset, found in sorted(by_dataset.items()):
                    self._dataset(dataset, found)
            finally:
                self.con.close()

    def _dataset(self, dataset: str, uploads: list[Upload]) -> None:
        schemas = {}
        for upload in uploads:
            try:
                schemas[upload.id] = pq.read_schema(self.store.fs_path(upload.object_key),
                                                    filesystem=self.store.filesystem)
            except (FileNotFoundError, OSError) as err:
                self._gone(upload, err)  # raises unless retention moved it meanwhile
        uploads = [u for u in uploads if u.id in schemas]
        if not uploads:
            return
        try:
            schema = pa.unify_schemas([s.remove_metadata() for s in schemas.values()], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ExportError(f"dataset {dataset!r}: the files' schemas cannot be combined: {err}") from err
        schema = schema.append(pa.field(SOURCE_COLUMN, pa.int64(), nullable=False))
        self.schemas[dataset] = schema
        # An empty table of the whole schema first: every part gets every column, in one order.
        self.con.register("proto", schema.empty_table())
        group, group_bytes = [], 0
        for upload in uploads:
            fetched = self._fetch(upload)
            if fetched is None:
                continue
            group.append(fetched)
            group_bytes += fetched[1].stat().st_size
            if group_bytes >= GROUP_BYTES:
                self._part(dataset, schema, group)
                group, group_bytes = [], 0
        if group:
            self._part(dataset, schema, group)
        self.con.unregister("proto")

    def _fetch(self, upload: Upload) -> tuple[Upload, Path, str] | None:
        local = self.tmp / f"upload-{upload.id}.parquet"
        try:
            with open(local, "wb") as dst:
                _, digest = self.store.download(upload.object_key, dst)
        except ObjectChanged as err:
            local.unlink(missing_ok=True)
            self._gone(upload, err)
            return None
        return upload, local, digest

    def _gone(self, upload: Upload, err: Exception) -> None:
        now = self.catalog.get(upload.id)
        if now is not None and now.state not in EXPORTED_STATES:
            self.skipped.append({"upload_id": upload.id, "dataset": upload.dataset,
                                 "reason": f"became {now.state} during the export"})
            return
        raise ExportError(f"upload {upload.id}: its data {upload.object_key} cannot be read: {err}") from err

    def _part(self, dataset: str, schema: pa.Schema, group: list[tuple[Upload, Path, str]]) -> None:
        selects = ["SELECT * FROM proto"] + [
            f"SELECT *, {upload.id}::BIGINT AS {SOURCE_COLUMN} FROM read_parquet('{_sql_text(str(path))}')"
            for upload, path, _ in group]
        union = " UNION ALL BY NAME ".join(selects)
        ext = EXTENSIONS[self.fmt]
        out = self.tmp / f"part.{ext}"
        # Row groups capped in bytes too, so wide rows do not outgrow the memory limit.
        options = {"parquet": "FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE_BYTES '32MB'",
                   "csv": "FORMAT csv, HEADER true", "jsonl": "FORMAT json"}[self.fmt]
        (rows,) = self.con.execute(f"COPY (SELECT {_projection(schema, self.fmt)} FROM ({union})) "
                                   f"TO '{_sql_text(str(out))}' ({options})").fetchone()
        file_rows = {upload.id: pq.read_metadata(path).num_rows for upload, path, _ in group}
        if rows != sum(file_rows.values()):
            raise ExportError(f"dataset {dataset!r}: part has {rows} rows, its files {sum(file_rows.values())}")
        key = f"{self.part_prefix}{dataset}/part-{sum(p['dataset'] == dataset for p in self.parts):05d}.{ext}"
        with open(out, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = out.stat().st_size
        self.store.upload_file(out, key)
        self.parts.append({"key": key, "dataset": dataset, "rows": rows, "bytes": size, "sha256": digest})
        for upload, path, object_sha256 in group:
            contract = upload.report.get("contract")
            self.files.append({
                "upload_id": upload.id, "dataset": dataset, "landing_key": upload.landing_key,
                "sha256": upload.sha256, "object_key": upload.object_key, "object_sha256": object_sha256,
                "state": upload.state, "rows": file_rows[upload.id], "ingested_at": _iso(upload.ingested_at),
                "contract_version": contract.get("version") if isinstance(contract, dict) else None,
                "part": key})
            path.unlink()
        out.unlink()


def _projection(schema: pa.Schema, fmt: str) -> str:
    """Every column in schema order; in text formats timestamps become ISO-8601 text."""
    columns = []
    for f in schema:
        name = _sql_name(f.name)
        if fmt != "parquet" and pa.types.is_timestamp(f.type):
            utc = f.type.tz is not None  # the session is UTC, so an aware value prints as UTC
            fmt_text = TEXT_TIMESTAMP + ("Z" if utc else "")
            columns.append(f"strftime({name}, '{fmt_text}') AS {name}")
        else:
            columns.append(name)
    return ", ".join(columns)


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


def _manifest(tenant: str, window: Week, fmt: str, export_id: str, writer: _Writer, *, now: datetime,
              run_id: str | None, replaced: str | None, settings_source: str | None) -> dict:
    versions: dict[str, set] = defaultdict(set)
    for f in writer.files:
        versions[f["dataset"]].add(f["contract_version"])
    return {
        "kind": "ml_export",
        "tenant": tenant, "week": window.key,
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
        "format": fmt, "export_id": export_id, "prefix": writer.part_prefix,
        "created_at": now.astimezone(UTC).isoformat(), "run_id": run_id, "replaces": replaced,
        "settings_source": settings_source,
        "rows": sum(p["rows"] for p in writer.parts), "bytes": sum(p["bytes"] for p in writer.parts),
        "empty": not writer.parts,
        "parts": writer.parts,
        "files": writer.files,
        "skipped": writer.skipped,
        "schemas": {d: [{"name": f.name, "type": str(f.type)} for f in s] for d, s in sorted(writer.schemas.items())},
        "contract_versions": {d: sorted(v, key=lambda x: (x is None, str(x))) for d, v in sorted(versions.items())},
        "source_column": SOURCE_COLUMN,
        "text_timestamps": None if fmt == "parquet" else "ISO-8601 text; UTC values end in Z",
    }


# -- reading and verifying ----------------------------------------------------------------------


def manifest_key_of(store: ObjectStore, path: str) -> str:
    """The manifest key for `exports/{t}/{week}[/manifest.json]`, or the same as a URL or a
    local path below the store's root."""
    key = path
    parsed = urlparse(path)
    if parsed.scheme in ("s3", "file") or os.path.isabs(path):
        url = path if parsed.scheme else Path(path).as_uri()
        root = store.url.rstrip("/") + "/"
        if not url.startswith(root):
            raise ExportError(f"{path} is not below the store root {store.url}")
        key = url[len(root):]
    key = key.strip("/")
    if not key.endswith("/" + MANIFEST):
        key += "/" + MANIFEST
    parts = key.split("/")
    try:
        if len(parts) != 4 or parts[0] != layout.EXPORTS:
            raise layout.InvalidKey(f"expected {layout.EXPORTS}/{{tenant}}/{{week}}/[{MANIFEST}], got {path!r}")
        return layout.export_prefix(parts[1], parts[2]) + MANIFEST
    except layout.InvalidKey as err:
        raise ExportError(str(err)) from None


def read_manifest(store: ObjectStore, tenant: str, week: str) -> dict:
    return json.loads(tenancy.scope_store(store, tenant).get_bytes(layout.export_prefix(tenant, week) + MANIFEST))


def verify_export(store: ObjectStore, path: str) -> dict:
    """Re-read every part the week's manifest lists and compare it with the manifest.
    Returns a report whose `problems` is empty when the export is intact."""
    key = manifest_key_of(store, path)
    # The export's own tenant: a manifest listing a neighbour's key cannot get it read.
    store = tenancy.scope_store(store, key.split("/")[1])
    report = {"manifest_key": key, "problems": [], "parts_checked": 0}
    try:
        manifest = json.loads(store.get_bytes(key))
    except Exception as err:  # noqa: BLE001 - reported, not raised
        report["problems"].append(f"{key}: manifest cannot be read ({type(err).__name__})")
        report["ok"] = False
        return report
    problems = report["problems"]
    _, tenant, week, _ = key.split("/")
    report.update(tenant=tenant, week=week, export_id=manifest.get("export_id"), format=manifest.get("format"),
                  rows=manifest.get("rows"), bytes=manifest.get("bytes"))
    if (manifest.get("tenant"), manifest.get("week")) != (tenant, week):
        problems.append(f"{key}: names {manifest.get('tenant')}/{manifest.get('week')}, not {tenant}/{week}")
    own = f"{layout.export_prefix(tenant, week)}{manifest.get('export_id')}/"
    parts = manifest.get("parts") or []
    if sum(p.get("rows", 0) for p in parts) != manifest.get("rows"):
        problems.append(f"{key}: rows {manifest.get('rows')} is not the sum of its parts'")
    if sum(p.get("bytes", 0) for p in parts) != manifest.get("bytes"):
        problems.append(f"{key}: bytes {manifest.get('bytes')} is not the sum of its parts'")
    with tempfile.TemporaryDirectory(prefix="verify-export-") as tmp:
        for part in parts:
            if not str(part.get("key", "")).startswith(own):
                problems.append(f"{part.get('key')}: not under the export's prefix {own}")
                continue
            problems += _verify_part(store, part, manifest.get("format"), Path(tmp))
            report["parts_checked"] += 1
    report["ok"] = not problems
    return report


def _verify_part(store: ObjectStore, part: dict, fmt: str, tmp: Path) -> list[str]:
    local = tmp / "part"
    try:
        with open(local, "wb") as dst:
            _, digest = store.download(part["key"], dst)
    except ObjectChanged:
        return [f"{part['key']}: missing"]
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return [f"{part['key']}: cannot be read ({type(err).__name__}: {err})"]
    problems = []
    size = local.stat().st_size
    if size != part["bytes"]:
        problems.append(f"{part['key']}: {size} bytes, the manifest says {part['bytes']}")
    if digest != part["sha256"]:
        problems.append(f"{part['key']}: sha256 differs from the manifest")
    try:
        rows = _count_rows(local, fmt)
    except Exception as err:  # noqa: BLE001 - a damaged part may not parse at all
        problems.append(f"{part['key']}: cannot be parsed as {fmt} ({type(err).__name__})")
    else:
        if rows != part["rows"]:
            problems.append(f"{part['key']}: {rows} rows, the manifest says {part['rows']}")
    local.unlink()
    return problems


def _count_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        return pq.read_metadata(path).num_rows
    if fmt == "jsonl":  # JSON escapes newlines inside strings: one line, one row
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(8 * 1024 * 1024), b""))
    with duckdb.connect() as con:  # CSV values may hold quoted newlines: let a CSV reader count
        return con.execute(f"SELECT count(*) FROM read_csv('{_sql_text(str(path))}', header=true, "
                           f"all_varchar=true, quote='\"', escape='\"')").fetchone()[0]


__all__ = ["ExportError", "ExportResult", "Week", "export_week", "verify_export", "week_uploads",
           "tenants_with_data", "manifest_key_of", "read_manifest", "GROUP_BYTES", "SOURCE_COLUMN"]

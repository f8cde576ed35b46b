"""Training sets: fresh data consumed exactly once, as one versioned snapshot.

`create_training_set` claims the fresh files that match a request (tenant, datasets,
minimum quality, row budget) and makes them `used` in one catalog transaction, then
streams them into Parquet parts under `training_sets/{tenant}/{name}/v{version}/` and
writes `manifest.json` last. The catalog's `complete` state is what makes a snapshot
exist; parts without it are a build in progress (or a released one, swept by cleanup).

A crash between the claim and the manifest leaves the set `building` under a lease of
a few minutes; the next `create_training_set` for the tenant takes it over and completes
it from the same files, so no claimed file is ever claimed by nothing. A build that
fails on the data itself (schemas that cannot be combined, an object gone) releases its
claim instead: the files return to `fresh`.

With no fresh data the request fails (`NoFreshData`) unless it asks for a sample
(`sample_rows`): then the snapshot samples already-used files, marked `"sample": true`.
"""

import hashlib
import json
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_platform import layout, tenancy
from data_platform.catalog import COMPLETE, Catalog, NoFreshData, TrainingSet, Upload, utcnow
from data_platform.ingestion import read_ahead
from data_platform.storage import ObjectStore

LEASE = timedelta(minutes=5)  # renewed after every part; a crashed build is taken over after it
PART_ROWS = 1_000_000  # rows per Parquet part: large enough for readers, small enough to retry
READ_BATCH_ROWS = 32 * 1024  # rows per batch and per row group written (~20 MB of text rows)
SOURCE_COLUMN = "_upload_id"  # added to every row: which upload it came from (lineage, erasure)
DEFAULT_NAME = "default"
_CONSUMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}")


class TrainingSetError(ValueError):
    """A request that cannot be built as asked (bad filters, data that cannot be combined)."""


@dataclass(frozen=True)
class TrainingSetRequest:
    tenant: str
    name: str = DEFAULT_NAME
    datasets: tuple[str, ...] = ()
    min_quality: float | None = None
    max_rows: int | None = None
    consumer: str | None = None  # who the set is for (lineage); defaults to the actor
    sample_rows: int | None = None  # only when nothing fresh matches: sample used data instead

    def __post_init__(self):
        try:
            layout.check_name("tenant", self.tenant)
            layout.check_name("training set name", self.name)
            for dataset in self.datasets:
                layout.check_name("dataset", dataset)
        except layout.InvalidKey as err:
            raise TrainingSetError(str(err)) from None
        if self.min_quality is not None and not 0 <= self.min_quality <= 1:
            raise TrainingSetError(f"min_quality must be between 0 and 1, got {self.min_quality}")
        for key in ("max_rows", "sample_rows"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise TrainingSetError(f"{key} must be a positive number of rows, got {value}")
        if self.consumer is not None and not _CONSUMER.fullmatch(self.consumer):
            raise TrainingSetError(f"consumer {self.consumer!r} must match {_CONSUMER.pattern}")

    @property
    def filters(self) -> dict:
        return {"datasets": sorted(set(self.datasets)), "min_quality": self.min_quality, "max_rows": self.max_rows,
                "sample_rows": self.sample_rows}


@dataclass
class BuildResult:
    training_set: TrainingSet
    manifest: dict
    resumed: list[TrainingSet] = field(default_factory=list)  # crashed builds completed first


def create_training_set(store: ObjectStore, catalog: Catalog, request: TrainingSetRequest, *, actor: str,
                        run_id: str | None = None, now: datetime | None = None) -> BuildResult:
    """Claim, snapshot and complete one training set (see the module docstring)."""
    # Every batch here is freed as soon as it is written. jemalloc gives the pages back
    # (1 GB build: 479 MB peak RSS against 542 with mimalloc, Arrow's default, and 624
    # with glibc's malloc, whose per-thread arenas keep what the read-ahead thread freed).
    pa.set_memory_pool(_returning_pool())
    store, catalog = tenancy.scoped(store, catalog, request.tenant)
    resumed = complete_stale_builds(store, catalog, request.tenant, actor=actor, now=now)
    consumer = request.consumer or actor
    prefix_of = _prefix_of(request)
    try:
        ts, _ = catalog.claim_training_set(tenant=request.tenant, name=request.name, prefix_of=prefix_of,
                                           filters=request.filters, consumer=consumer, actor=actor, run_id=run_id,
                                           lease=LEASE, now=now)
        sample = None
    except NoFreshData:
        if not request.sample_rows:
            raise
        ts, sample = _claim_sample(catalog, request, prefix_of, consumer=consumer, actor=actor, run_id=run_id,
                                   now=now)
    return BuildResult(*build_snapshot(store, catalog, ts, claimer=actor, run_id=run_id, sample=sample), resumed)


def _returning_pool() -> pa.MemoryPool:
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.system_memory_pool()


def complete_stale_builds(store: ObjectStore, catalog: Catalog, tenant: str, *, actor: str,
                          now: datetime | None = None) -> list[TrainingSet]:
    """Finish the tenant's builds whose builder crashed (lease run out)."""
    store, catalog = tenancy.scoped(store, catalog, tenant)
    done = []
    for ts in catalog.take_over_stale_training_sets(tenant, actor, lease=LEASE, now=now):
        sample = _resumed_sample(catalog, ts) if ts.sample else None
        done.append(build_snapshot(store, catalog, ts, claimer=actor, run_id=None, sample=sample)[0])
    return done


def _prefix_of(request: TrainingSetRequest) -> Callable[[int], str]:
    return lambda version: layout.training_set_prefix(request.tenant, request.name, version)


# -- the snapshot -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    """Which share of each file's rows a sample takes, reproducibly (seeded by the set)."""
    seed: int
    share: float
    limit: int

    @classmethod
    def of(cls, seed: int, wanted: int, total: int) -> "_Sample":
        # Draw 5% more than the share, then cut at the limit: about `wanted` rows, never more.
        limit = min(wanted, total)
        return cls(seed=seed, share=min(1.0, limit / total * 1.05) if total else 0.0, limit=limit)


def build_snapshot(store: ObjectStore, catalog: Catalog, ts: TrainingSet, *, claimer: str, run_id: str | None,
                   sample: _Sample | None = None) -> tuple[TrainingSet, dict]:
    files = catalog.training_set_uploads(ts.id)
    try:
        parts, schemas = _write_parts(store, ts, files, sample,
                                      heartbeat=lambda: catalog.renew_training_set(ts.id, claimer, lease=LEASE))
    except (TrainingSetError, tenancy.TenantViolation) as err:
        # The data itself (or a refused key: a bug) is the problem: a retry would fail the
        # same way. Give the files back.
        catalog.release_training_set(ts.id, claimer, error=str(err), actor=claimer)
        raise
    manifest = _manifest(ts, files, parts, schemas, run_id=run_id, completed_by=claimer)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    store.put_bytes(f"{ts.prefix}manifest.json", body)
    done = catalog.complete_training_set(
        ts.id, claimer, manifest_sha256=hashlib.sha256(body).hexdigest(), rows=manifest["rows"],
        size=manifest["bytes"], detail={"parts": len(parts), "datasets": sorted(schemas), "run_id": run_id})
    return done, manifest


def _write_parts(store: ObjectStore, ts: TrainingSet, files: list[tuple[Upload, int]], sample: _Sample | None,
                 heartbeat: Callable[[], None]) -> tuple[list[dict], dict[str, pa.Schema]]:
    """Stream every file into Parquet parts, one run of parts per dataset (datasets may
    differ in schema; uploads of one dataset are combined under their unified schema)."""
    by_dataset: dict[str, list[Upload]] = defaultdict(list)
    for upload, _ in files:
        by_dataset[upload.dataset].append(upload)
    parts: list[dict] = []
    schemas: dict[str, pa.Schema] = {}
    written = 0  # rows in the parts of the datasets done so far (a sample's limit is for the whole set)
    with tempfile.TemporaryDirectory(prefix="training-set-") as tmp:
        for dataset, uploads in sorted(by_dataset.items()):
            schema = _unified_schema(store, dataset, uploads)
            schemas[dataset] = schema
            writer = _PartWriter(store, ts, dataset, schema, Path(tmp), heartbeat)
            rng = np.random.default_rng([sample.seed, len(schemas)]) if sample else None
            for upload in uploads:
                for table in read_ahead(_batches(store, upload, Path(tmp), schema)):
                    if rng is not None:
                        table = _sampled(table, rng, sample, written + writer.rows_written)
                    writer.write(table)
            parts += writer.close()
            written += writer.rows_written
    return parts, schemas


def _unified_schema(store: ObjectStore, dataset: str, uploads: list[Upload]) -> pa.Schema:
    found = []
    for upload in uploads:
        try:
            found.append(pq.read_schema(store.fs_path(upload.object_key), filesystem=store.filesystem))
        except (FileNotFoundError, OSError) as err:
            raise TrainingSetError(f"upload {upload.id}: its data {upload.object_key} cannot be read: {err}") from err
    try:
        schema = pa.unify_schemas([s.remove_metadata() for s in found], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise TrainingSetError(f"dataset {dataset!r}: the files' schemas cannot be combined: {err}") from err
    return schema.append(pa.field(SOURCE_COLUMN, pa.int64(), nullable=False))


def _batches(store: ObjectStore, upload: Upload, tmp: Path, schema: pa.Schema) -> Iterator[pa.Table]:
    """One upload's rows in the dataset's unified schema, a batch at a time. The object
    is fetched with one streaming GET (ranged reads cost a request each on S3)."""
    local = tmp / f"upload-{upload.id}.parquet"
    with open(local, "wb") as dst:
        store.download(upload.object_key, dst)
    try:
        source = pq.ParquetFile(local)
        for batch in source.iter_batches(batch_size=READ_BATCH_ROWS):
            columns = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names
                       else pa.nulls(batch.num_rows, f.type) for f in schema if f.name != SOURCE_COLUMN]
            columns.append(pa.array(np.full(batch.num_rows, upload.id, dtype=np.int64)))
            yield pa.Table.from_arrays(columns, schema=schema)
    finally:
        local.unlink(missing_ok=True)


def _sampled(table: pa.Table, rng: np.random.Generator, sample: _Sample, taken: int) -> pa.Table:
    keep = rng.random(table.num_rows) < sample.share
    table = table.filter(pa.array(keep))
    return table.slice(0, max(0, sample.limit - taken))


class _PartWriter:
    """Parquet parts of `PART_ROWS` rows, each written locally, hashed and put."""

    def __init__(self, store: ObjectStore, ts: TrainingSet, dataset: str, schema: pa.Schema, tmp: Path,
                 heartbeat: Callable[[], None]):
        self.store, self.ts, self.dataset, self.schema, self.tmp, self.heartbeat = (
            store, ts, dataset, schema, tmp, heartbeat)
        self.parts: list[dict] = []
        self.rows_written = 0
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._local, self.schema, compression="zstd")
            take = table.slice(0, PART_ROWS - self._part_rows)
            self._writer.write_table(take, row_group_size=128 * 1024)
            self._part_rows += take.num_rows
            self.rows_written += take.num_rows
            table = table.slice(take.num_rows)
            if self._part_rows >= PART_ROWS:
                self._finish_part()

    def close(self) -> list[dict]:
        if self._writer is not None or not self.parts:
            self._finish_part()  # a dataset whose files hold no rows still gets one (empty) part
        return self.parts

    @property
    def _local(self) -> Path:
        return self.tmp / "part.parquet"

    def _finish_part(self) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._local, self.schema, compression="zstd")
        self._writer.close()
        key = f"{self.ts.prefix}{self.dataset}/part-{len(self.parts):05d}.parquet"
        with open(self._local, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        self.store.upload_file(self._local, key)
        self.parts.append({"key": key, "dataset": self.dataset, "rows": self._part_rows,
                           "bytes": self._local.stat().st_size, "sha256": digest})
        self._local.unlink()
        self._writer, self._part_rows = None, 0
        self.heartbeat()


def _manifest(ts: TrainingSet, files: list[tuple[Upload, int]], parts: list[dict], schemas: dict[str, pa.Schema],
              *, run_id: str | None, completed_by: str) -> dict:
    contract_versions: dict[str, set] = defaultdict(set)
    listed = []
    for upload, taken in files:
        contract = upload.report.get("contract")
        version = contract.get("version") if isinstance(contract, dict) else None
        contract_versions[upload.dataset].add(version)
        listed.append({"upload_id": upload.id, "dataset": upload.dataset, "landing_key": upload.landing_key,
                       "sha256": upload.sha256, "object_key": upload.object_key, "rows": taken,
                       "rows_in_file": upload.rows, "quality": upload.quality,
                       "ingested_at": _iso(upload.ingested_at), "contract_version": version})
    return {
        "format": "parquet",
        "tenant": ts.tenant, "name": ts.name, "version": ts.version, "prefix": ts.prefix,
        "sample": ts.sample, "filters": ts.filters, "consumer": ts.consumer,
        "created_by": ts.created_by, "created_at": _iso(ts.created_at), "completed_by": completed_by,
        "completed_at": datetime.now(UTC).isoformat(), "run_id": run_id,
        "rows": sum(p["rows"] for p in parts), "bytes": sum(p["bytes"] for p in parts),
        "parts": parts,
        "files": listed,
        "contract_versions": {d: sorted(v, key=lambda x: (x is None, str(x))) for d, v in sorted(contract_versions.items())},
        "schemas": {d: [{"name": f.name, "type": str(f.type)} for f in s] for d, s in sorted(schemas.items())},
        "source_column": SOURCE_COLUMN,
    }


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


# -- samples (only when asked for and nothing is fresh) ---------------------------------


def _claim_sample(catalog: Catalog, request: TrainingSetRequest, prefix_of, *, consumer: str, actor: str,
                  run_id: str | None, now: datetime | None) -> tuple[TrainingSet, _Sample]:
    candidates = [u for u in catalog.list_uploads(tenant=request.tenant, state="used")
                  if (not request.datasets or u.dataset in request.datasets)
                  and (request.min_quality is None or (u.quality or 0) >= request.min_quality) and u.rows]
    if not candidates:
        raise NoFreshData(f"no fresh data for tenant {request.tenant!r}, and no used data to sample either")
    total = sum(u.rows for u in candidates)
    # Expected rows per file, for the lineage; the manifest has the exact counts.
    files = [(u, round(u.rows * min(request.sample_rows, total) / total)) for u in candidates]
    seed = int.from_bytes(hashlib.sha256(f"{request.tenant}/{request.name}/{utcnow().isoformat()}".encode())
                          .digest()[:4], "big")
    filters = {**request.filters, "sample_seed": seed}
    ts = catalog.record_sample_training_set(tenant=request.tenant, name=request.name, prefix_of=prefix_of,
                                            filters=filters, consumer=consumer, actor=actor, run_id=run_id,
                                            files=files, lease=LEASE, now=now)
    return ts, _Sample.of(seed, request.sample_rows, total)


def _resumed_sample(catalog: Catalog, ts: TrainingSet) -> _Sample:
    total = sum(u.rows or 0 for u, _ in catalog.training_set_uploads(ts.id))
    return _Sample.of(ts.filters["sample_seed"], ts.filters["sample_rows"], total)


# -- reading ---------------------------------------------------------------------------


def latest_training_set(catalog: Catalog, tenant: str, name: str | None = None) -> TrainingSet | None:
    """The snapshot a trainer should read next: the tenant's newest complete one."""
    complete = tenancy.scope_catalog(catalog, tenant).training_sets(tenant=tenant, name=name, state=COMPLETE)
    return max(complete, key=lambda ts: (ts.completed_at, ts.id)) if complete else None


def read_manifest(store: ObjectStore, ts: TrainingSet) -> dict:
    return json.loads(tenancy.scope_store(store, ts.tenant).get_bytes(f"{ts.prefix}manifest.json"))


def verify_snapshot(store: ObjectStore, manifest: dict) -> list[str]:
    """Problems found re-hashing every part against the manifest ([] when intact)."""
    problems = []
    for part in manifest["parts"]:
        digest = hashlib.sha256()
        try:
            with store.open_read(part["key"]) as (_, src):
                while chunk := src.read(8 * 1024 * 1024):
                    digest.update(chunk)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            problems.append(f"{part['key']}: cannot be read ({err})")
            continue
        if digest.hexdigest() != part["sha256"]:
            problems.append(f"{part['key']}: sha256 differs from the manifest")
    return problems


def table_of(store: ObjectStore, manifest: dict, dataset: str | None = None) -> pa.Table:
    """A (small) snapshot read whole, for tests and notebooks; trainers stream the parts."""
    tables = []
    for part in manifest["parts"]:
        if dataset is None or part["dataset"] == dataset:
            tables.append(pq.read_table(store.fs_path(part["key"]), filesystem=store.filesystem))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


__all__ = ["TrainingSetRequest", "TrainingSetError", "BuildResult", "NoFreshData", "create_training_set",
           "complete_stale_builds", "latest_training_set", "read_manifest", "verify_snapshot", "table_of",
           "SOURCE_COLUMN"]

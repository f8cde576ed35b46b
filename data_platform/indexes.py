"""Persistent per-dataset indexes kept as immutable runs in the object store.

Each fresh upload adds one run per index kind: a small Parquet object under
`_platform/indexes/{kind}/{tenant}/{dataset}/upload-{id}.parquet`, registered in the
catalog by the same transaction that makes the upload fresh (`Catalog.mark_fresh`). A
run written by an attempt that never committed is not registered and is ignored. An
ingestion loads the registered runs of its dataset once, checks its rows against them
in memory (sorted arrays, numpy), and writes its own run at the end.

Why not a table with a row per indexed row: at 2M rows per GB, per-row B-tree inserts
cost more than everything else in the ingestion (1.5 s per 200 MB on SQLite, growing
with the index); sorted runs cost one GET per earlier upload and a binary search.

Concurrency: two runs of one dataset may ingest at once. Each remembers the last run id
it loaded; at commit the catalog refuses (IndexChanged) if newer runs were registered
meanwhile, and the ingestion checks its rows against those before committing again.
"""

import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_platform import layout
from data_platform._native import rowhash_kernel
from data_platform.catalog import Catalog, IndexRun, StagedRun
from data_platform.privacy import subject_key
from data_platform.storage import ObjectStore

_READERS = 8  # parallel GETs when loading many runs
ROWS = "rows"  # the row-hash index (data_platform.dedup.RowIndex)
SUBJECTS = "subjects"  # the erasure index: subject keys (data_platform.privacy.subject_key)
NEAR_DUP = "near_dup"  # LSH bands of kept texts (data_platform.neardup)


class RunStore:
    """Reads and writes one dataset's runs of one index kind, and remembers which runs
    this process has loaded (an index is loaded once, then kept up to date)."""

    def __init__(self, store: ObjectStore, catalog: Catalog, tenant: str, dataset: str, kind: str):
        self.store, self.catalog = store, catalog
        self.tenant, self.dataset, self.kind = tenant, dataset, kind
        self.dataset_id = catalog.dataset_id(tenant, dataset)
        self.seen_run_id = 0  # the newest registered run looked at
        self._loaded_uploads: set[int] = set()

    def registered(self, *, after_id: int = 0) -> list[IndexRun]:
        return self.catalog.index_runs(self.dataset_id, self.kind, after_id=after_id)

    def load_newer(self, runs: Sequence[IndexRun] | None = None) -> list[tuple[IndexRun, pa.Table]]:
        """The runs registered since the last look (or those given), except the uploads
        already loaded or committed by this process, with their tables, oldest first."""
        if runs is None:
            runs = self.registered(after_id=self.seen_run_id)
        todo = [r for r in runs if r.upload_id not in self._loaded_uploads]
        tables = self.read(todo)
        self._loaded_uploads.update(r.upload_id for r in todo)
        if runs:
            self.seen_run_id = max(self.seen_run_id, max(r.id for r in runs))
        return [(run, table) for run, table in zip(todo, tables) if table is not None]

    def loaded(self, upload_id: int) -> None:
        """This process committed the upload: its rows are in memory already."""
        self._loaded_uploads.add(upload_id)

    def read(self, runs: Sequence[IndexRun]) -> list[pa.Table | None]:
        """The runs' tables, in the order given; None for a run cleanup deleted (with its
        upload) after it was listed."""
        if len(runs) <= 1:
            return [self._read_one(run) for run in runs]
        with ThreadPoolExecutor(max_workers=min(_READERS, len(runs))) as pool:
            return list(pool.map(self._read_one, runs))

    def _read_one(self, run: IndexRun) -> pa.Table | None:
        # One GET per run: Parquet readers on S3 make a ranged request per read.
        try:
            data = self.store.get_bytes(run.object_key)
        except FileNotFoundError:
            if any(r.id == run.id for r in self.registered(after_id=run.id - 1)):
                raise  # still registered: the object is really missing (integrity's business)
            return None  # its upload was deleted meanwhile: nothing of it to index
        return pq.read_table(pa.BufferReader(data))

    def write(self, upload_id: int, run: pa.Table | pa.RecordBatchReader) -> StagedRun:
        """Write this upload's run (replacing an earlier attempt's) for `mark_fresh` to register."""
        reader = run.to_reader() if isinstance(run, pa.Table) else run
        out = self.open_run(upload_id, reader.schema)
        try:
            for batch in reader:
                out.write(batch)
        except BaseException:
            out.abort()
            raise
        return out.commit()

    def open_run(self, upload_id: int, schema: pa.Schema) -> "RunWriter":
        """A run written batch by batch, staged on commit."""
        key = layout.index_run_key(self.kind, self.tenant, self.dataset, upload_id)
        return RunWriter(self.store, self.kind, key, schema)


# How index runs are written. Hashes neither compress nor repeat: uncompressed pages
# read fastest, and a dictionary attempt (Parquet's default) only built a hash table
# of distinct keys to give it up at its size limit: writing a 1.9M-key row-index run
# took 61 ms with it, 6 ms without (a 200k-row near-duplicate run 67 -> 9 ms), all of
# it at the end of an upload, where nothing overlaps it. Columns in ascending order or
# of small values are stored as deltas (Parquet's DELTA_BINARY_PACKED): sorted 64-bit
# hashes take ~43 bits each at 2M keys, row numbers and token counts a few. A 1 GB
# upload's runs: 66 -> 53 MB, for ~30 ms more CPU; their PUTs are at the end of the
# upload (~13 ms per MB on the benchmark's endpoint). Random keys (LSH bands) stay plain.
DELTA_COLUMNS = {ROWS: ("row_hash",), SUBJECTS: ("subject",), NEAR_DUP: ("row", "tokens")}


def run_parquet_options(kind: str, schema: pa.Schema) -> dict:
    """`pq.ParquetWriter` options for a run of this kind."""
    delta = {name: "DELTA_BINARY_PACKED" for name in DELTA_COLUMNS.get(kind, ())
             if name in schema.names and pa.types.is_integer(schema.field(name).type)}
    return {"compression": "none", "use_dictionary": False, **({"column_encoding": delta} if delta else {})}


class RunWriter:
    """A run streamed to the store as its batches come, never whole in memory (a 2M-row
    row-index run is 16 MB, a 200k-row near-duplicate run ~20 MB); the object exists
    only once committed."""

    def __init__(self, store: ObjectStore, kind: str, key: str, schema: pa.Schema):
        self.kind, self.key, self.rows = kind, key, 0
        self._sink = store.open_write(key)
        self._writer = pq.ParquetWriter(self._sink, schema, **run_parquet_options(kind, schema))

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def commit(self) -> StagedRun:
        self._writer.close()
        self._sink.commit()
        return StagedRun(self.kind, self.key, self.rows)

    def abort(self) -> None:
        # Closed first, or it would write its footer when collected; a writer that failed
        # may fail again here, and nothing is kept either way.
        with contextlib.suppress(Exception):
            self._writer.close()
        self._sink.abort()


class SortedKeys:
    """A growing set of int64 keys: sorted arrays merged as they accumulate (an LSM: a
    part is merged into the one before it while that one is at most twice its size), so
    a membership test is a few binary searches however many batches were added, and
    each key is merged O(log n) times."""

    def __init__(self):
        self._parts: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def add(self, keys: np.ndarray, *, is_sorted: bool = False) -> None:
        """Add keys; with `is_sorted` (ascending already) the array is kept as it is (the
        caller gives it up), not copied."""
        if len(keys) == 0:
            return
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        self._parts.append(keys if is_sorted else np.sort(keys))
        while len(self._parts) > 1 and len(self._parts[-2]) <= 2 * len(self._parts[-1]):
            newer = self._parts.pop()
            self._parts[-1] = _merged([self._parts[-1], newer])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        order = np.argsort(keys)
        found = np.empty(len(keys), dtype=bool)
        found[order] = self.contains_sorted(np.ascontiguousarray(keys[order], dtype=np.int64))
        return found

    def contains_sorted(self, keys: np.ndarray) -> np.ndarray:
        """`contains` for keys in ascending order (int64, contiguous). They are looked
        up in that order, each part walked once from the smallest (`found_in`):
        searching random hashes in a part of millions missed the cache at every step (2x
        slower for 15k keys in 2M), and a binary search per key in each part was still
        ~3x the walk."""
        found = np.zeros(len(keys), dtype=np.uint8)
        for part in self._parts:
            rowhash_kernel.found_in(part, keys, found)
        return found.view(bool)

    def sorted(self) -> np.ndarray:
        """All keys, ascending (read-only use: the set keeps the array). The parts are
        merged into one on the way, so asking again costs nothing."""
        if not self._parts:
            return np.zeros(0, dtype=np.int64)
        if len(self._parts) > 1:
            self._parts = [_merged(self._parts)]
        return self._parts[0]


def _merged(parts: list[np.ndarray]) -> np.ndarray:
    """Sorted runs merged: one concatenation sorted in place by the stable sort (timsort
    merges runs in linear time), without a second full-size copy."""
    merged = np.concatenate(parts)
    merged.sort(kind="stable")
    return merged


def uploads_holding_subject(store: ObjectStore, catalog: Catalog, tenant: str, pseudonym: str) -> list[int]:
    """The uploads of a tenant whose data holds this pseudonym, from the erasure index
    (no data file is read). Computing the pseudonym of a raw value is the caller's:
    `Pseudonymizer(key, tenant).pseudonym(value, kind)`."""
    key = np.array([subject_key(pseudonym)], dtype=np.int64)
    runs = catalog.tenant_index_runs(tenant, SUBJECTS)
    found = []
    for run in runs:  # ~8 bytes per distinct subject of an upload, one GET each
        subjects = pq.read_table(pa.BufferReader(store.get_bytes(run.object_key))).column("subject").to_numpy()
        at = np.searchsorted(subjects, key)
        if at[0] < len(subjects) and subjects[at[0]] == key[0]:
            found.append(run.upload_id)
    return found


class NearDupRuns:
    """A dataset's near-duplicate index as one ingestion process sees it: the registered
    runs loaded once, then kept up to date. Runs are not checked at commit: two runs
    ingesting the dataset at once may each keep a text near the other's (flags are
    advisory; exact duplicates are what the row index guarantees)."""

    def __init__(self, runs: RunStore, index):
        self.runs = runs
        self.index = index  # data_platform.neardup.NearDupIndex

    def begin(self, upload_id: int) -> None:
        """Start (or restart) an upload: what an earlier attempt staged goes, newer runs come in."""
        self.index.forget(upload_id)
        for run, table in self.runs.load_newer():
            self.index.load_run(run.upload_id, table)

    def stage(self, upload_id: int) -> StagedRun | None:
        """Write the upload's run: its newest rows, as many as the index's window holds
        (the only ones a later window loads), sent once the upload is parsed. Streaming
        every row while they were staged sent ~190 MB per GB of text, 9 in 10 rows of it
        never loaded again."""
        run = self.index.run_reader(upload_id)
        return None if run is None else self.runs.write(upload_id, run)

    def committed(self, upload_id: int) -> None:
        self.runs.loaded(upload_id)
        self.index.persisted(upload_id)  # its rows stay searchable; the local run file goes

    def forget(self, upload_id: int) -> None:
        self.index.forget(upload_id)

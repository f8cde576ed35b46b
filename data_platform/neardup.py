"""Near-duplicate texts: MinHash signatures, LSH band keys, a persistent per-dataset index.

A near-duplicate is a text that a few edited words (replaced, deleted, inserted) turn
into an earlier text of the same upload or of an earlier upload of the dataset. Tickets
written from the same template about another resource, amount or error code are not,
and neither is an earlier text plus or minus a whole sentence.

Signature (compiled: data_platform/_native/minhash_kernel.c; `reference_signature` is
the same computation in plain Python, and the tests hold the two equal bit for bit):

- tokens: whitespace-separated words, ASCII punctuation stripped from both ends, ASCII
  letters lower-cased. A token with a digit or '_', or with two or more capitals
  (`vm-4711`, `E502`, `QUOTA_EXCEEDED`) is an *identifier*.
- shingles: word bigrams (a one-word text: its word), plus every identifier on its own
  with weight 2^ident_shift = 8 (weighted MinHash: its hash values are divided by 8).
  Identifiers tell two tickets of one template apart, so they must weigh more than the
  template's words. Measured on the benchmark generator (templated sentences in four
  languages, near-duplicates with 1-3 edited words), best exact-Jaccard threshold on
  12k rows: bigrams alone recall 0.93 at precision 0.74, character 5-grams 0.87/0.54,
  word 3-grams 0.80/0.87; bigrams + identifiers x6 0.96/0.95, and 0.98/0.98 with the
  token-count check below.
- MinHash: K = 128 values (a_k * v + b_k) mod 2^16 over 16-bit halves of the shingle
  hashes (16-bit lanes: twice the permutations per vector instruction). Kept per row:
  `bands` = 8 LSH keys of `rows` = 4 values each (uint32), and a sketch of 4 bits per
  value (64 bytes) that estimates the Jaccard similarity of two rows as
  (equal nibbles / K - 1/16) / (15/16), standard error ~0.045 at J = 0.65.
- verification of a candidate: estimated Jaccard >= `threshold` (0.68) and token
  counts within max(`max_token_diff` = 3, 10%) of each other: a few edited words
  change the length by a few words; an added sentence does not pass.
  Fewer bands (6) or more rows per band (5) lose little recall: the threshold, not
  the LSH, decides it. 8 bands x 4 rows find a candidate for 89% of pairs at J = 0.7.
  Result on the generator (tests): 94-95% of its near-duplicates found, 96% of flagged
  rows right on 56k rows (one upload or four); 93.5% and 94.7% on 2M rows.

Index (`NearDupIndex`, compiled: data_platform/_native/neardup_index.c): a ring of the
`max_rows` most recently indexed rows (sketch, token count, upload, row: 76 bytes) and
per band a hash table of buckets of 16 uint32 entries (one cache line), sized for
max_rows at 70% load: an entry is a fingerprint of the band key and the low bits of the
row's index number (entries older than max_rows rows are stale: free, swept as the ring
turns). A bucket keeps the `probe` (4) newest rows of a key; a full bucket drops its
oldest entry. A lookup is one cache line per band, prefetched a few rows ahead; the
candidates' rows are prefetched too. `max_rows` is a hard cap: rows of loaded runs and
rows this process indexed share the window, and the oldest leave it first.

Rows are decided in order, one at a time in the kernel: a row is a near-duplicate when
it is near an earlier row that is not itself one (of an earlier upload, an earlier
table, or earlier in its table); a kept row is indexed at once, so the rows of a table
are matched against each other through the same tables. Near-duplicates are not
indexed, so every match names a row that stays in the data under either contract
action, and the result does not depend on how an upload is split into tables, and
barely on how the data is split into uploads. Several text columns are compared on their concatenation
(`detection_text`: table order, joined by a newline).

Persistence: the rows an upload added form its run (`run_for`, or streamed by
`run_reader`), a pyarrow Table the caller writes as Parquet and gives back with
`load_run`, oldest first. A run is the upload's newest `max_rows` kept rows (no window
can load older ones again). While an upload's rows are the last the index took, in row
order (one upload at a time, its tables in order: every ingestion), they are the ring's
rows of that upload, copied out when the run is taken (`export`). Before other rows
enter the ring (another upload's, a loaded run's) or a table comes out of row order,
they move to local Arrow IPC files, which the later rows join (never held in the heap,
older rows' files deleted as they grow). Runs built with other signature parameters
(`MinHashParams.version` in the schema metadata) are skipped with a reason (`skipped`),
never mixed. Only the `max_rows` newest rows are searched (older runs are not loaded).
`forget` makes an upload's rows unmatchable at once; they leave the ring as it turns.
Memory: ~154 bytes per row of max_rows once that many rows were indexed (108 ring,
band keys included, + 8 bands x 4 bytes / 0.7 load), e.g. ~31 MB for max_rows = 200k
and ~308 MB for 2M; an index that has not yet filled its window grows with its rows
(tables at 18-70% load). A run is ~102 bytes per row (uncompressed Parquet), at most
max_rows rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_platform._native import minhash_kernel, neardup_index

ALGORITHM = "mh1"  # bump when the tokenizer, shingles or hashes change
VERSION_KEY = b"neardup.version"
UPLOAD_KEY = b"neardup.upload_id"
NEAR_DUPLICATE_ACTIONS = ("flag", "drop")
TEXT_MIN_MEAN_CHARS = 32  # undeclared string columns at least this long on average ...
TEXT_MIN_DISTINCT = 0.5  # ... whose values are mostly distinct are free text
_THREAD_MIN_ROWS = 4096  # below this, one thread hashes the whole column

_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class MinHashParams:
    """Signature parameters (stored data depends on them: see `version`) and the
    verification applied at lookup time (free to change between runs)."""

    num_perm: int = 128  # K minhash values per text
    bands: int = 8  # LSH keys per text ...
    rows: int = 4  # ... each a hash of this many consecutive minhash values
    ident_shift: int = 3  # identifiers weigh 2^3 = 8 bigrams
    seed: int = 0x6E64_7570  # of the hash permutations
    # verification (not part of the version)
    threshold: float = 0.68  # minimum estimated Jaccard similarity
    max_token_diff: int = 3
    max_token_diff_ratio: float = 0.1
    probe: int = 4  # most recent entries of each key that become candidates
    probe_first: int = 2  # within a table, also the first rows holding the key

    def __post_init__(self):
        if self.num_perm < 64 or self.num_perm > 1024 or self.num_perm % 64:
            raise ValueError("num_perm must be a multiple of 64, at most 1024")
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
            raise ValueError("need bands * rows <= num_perm")
        if not 0 <= self.ident_shift < 16:
            raise ValueError("ident_shift must be in 0..15")
        if not 0.0 < self.threshold <= 1.0 or self.probe < 1 or self.probe_first < 0:
            raise ValueError("threshold must be in (0, 1], probe >= 1, probe_first >= 0")

    @property
    def version(self) -> str:
        """Identifies what a run holds; runs of another version are not comparable."""
        return (f"{ALGORITHM}-k{self.num_perm}-b{self.bands}x{self.rows}-i{self.ident_shift}"
                f"-s{self.seed:x}")

    @property
    def sketch_bytes(self) -> int:
        return self.num_perm // 2

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """(mult, add): K uint16 each, from splitmix64(seed); mult is odd."""
        z = _splitmix64(self.seed, self.num_perm)
        mult = np.array([(v & 0xFFFF) | 1 for v in z], dtype=np.uint16)
        add = np.array([(v >> 16) & 0xFFFF for v in z], dtype=np.uint16)
        return mult, add


def _splitmix64(seed: int, n: int) -> list[int]:
    out, x = [], seed & _M64
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


# -- signatures ---------------------------------------------------------------------------


@dataclass
class Signatures:
    keys: np.ndarray  # (n, bands) uint32
    sketch: np.ndarray  # (n, num_perm // 2) uint8
    tokens: np.ndarray  # (n,) uint16; 0: null, empty or punctuation only (no signature)
    minima: np.ndarray | None = None  # (n, num_perm) uint16, when asked for

    @property
    def valid(self) -> np.ndarray:
        return self.tokens > 0

    def __len__(self) -> int:
        return len(self.tokens)


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_perm_cache: dict[MinHashParams, tuple[bytes, bytes]] = {}


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < threads:
            _pool, _pool_size = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="minhash"), threads
        return _pool


def _perm_bytes(params: MinHashParams) -> tuple[bytes, bytes]:
    cached = _perm_cache.get(params)
    if cached is None:
        mult, add = params.permutations()
        cached = _perm_cache[params] = (mult.tobytes(), add.tobytes())
    return cached


def _string_chunks(texts: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    out = []
    for chunk in chunks:
        t = chunk.type
        if pa.types.is_dictionary(t):
            chunk = chunk.dictionary_decode()
            t = chunk.type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            if pa.types.is_null(t) or pa.types.is_string_view(t) or pa.types.is_binary(t) \
                    or pa.types.is_large_binary(t):
                chunk = chunk.cast(pa.large_string() if pa.types.is_large_binary(t) else pa.string())
            else:
                raise TypeError(f"near-duplicate detection needs strings, got {t}")
        out.append(chunk)
    return out


def signatures(texts: pa.Array | pa.ChunkedArray, params: MinHashParams | None = None, *,
               threads: int | None = None, raw: bool = False, scratch: dict | None = None) -> Signatures:
    """Signatures of a string column (string or large_string, chunked or not, sliced or
    not). Null values get no signature (tokens 0). Large columns are split over
    `threads` threads (default: up to 2); the kernel releases the GIL. With `scratch`
    (a dict kept by the caller) the output arrays are views of buffers reused from call
    to call (no fresh pages to fault in): valid until the next call with it."""
    params = params or MinHashParams()
    threads = threads or min(2, os.cpu_count() or 1)
    mult, add = _perm_bytes(params)
    chunks = _string_chunks(texts)
    n = sum(len(c) for c in chunks)
    K = params.num_perm
    if scratch is not None and not raw:
        if scratch.get("capacity", -1) < n or scratch.get("params") != (params.bands, K):
            cap = max(n, 1024)
            scratch.update(capacity=cap, params=(params.bands, K), keys=np.empty((cap, params.bands), np.uint32),
                           sketch=np.empty((cap, K // 2), np.uint8), tokens=np.empty(cap, np.uint16))
        keys, sketch, tokens = scratch["keys"][:n], scratch["sketch"][:n], scratch["tokens"][:n]
    else:
        keys = np.empty((n, params.bands), dtype=np.uint32)
        sketch = np.empty((n, K // 2), dtype=np.uint8)
        tokens = np.empty(n, dtype=np.uint16)
    minima = np.empty((n, K), dtype=np.uint16) if raw else None
    jobs = []  # (chunk, start within chunk, count, first output row)
    at = 0
    for chunk in chunks:
        m = len(chunk)
        parts = threads if m >= _THREAD_MIN_ROWS and threads > 1 else 1
        bounds = np.linspace(0, m, parts + 1).astype(int)
        jobs.extend((chunk, int(a), int(b - a), at + int(a)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
        at += m

    def run(job):
        chunk, start, count, row = job
        _, offsets, data = chunk.buffers()
        if offsets is None:  # an all-null array may have no buffers
            for out in (keys, sketch, tokens, minima):
                if out is not None:
                    out[row:row + count] = 0
            return
        large = pa.types.is_large_string(chunk.type)
        out = slice(row, row + count)
        minhash_kernel.signatures(offsets, data if data is not None else b"", chunk.offset + start, count, large,
                                  mult, add, params.bands, params.rows, params.ident_shift,
                                  keys[out], sketch[out], tokens[out], None if minima is None else minima[out])

    if len(jobs) > 1:
        list(_executor(threads).map(run, jobs))
    else:
        for job in jobs:
            run(job)
    if texts.null_count:
        tokens[~texts.is_valid().to_numpy(zero_copy_only=False)] = 0
    return Signatures(keys=keys, sketch=sketch, tokens=tokens, minima=minima)


_PUNCT = bytes(c for c in range(0x21, 0x7F) if not chr(c).isalnum())


def _mix64(h: int) -> int:
    h ^= h >> 32
    h = (h * 0xD6E8FEB86659FD93) & _M64
    return h ^ (h >> 29)


def _high32(v: int, mult: int) -> int:
    return ((v * mult) & _M64) >> 32


def _word_hash(token: bytes) -> tuple[int, bool]:
    low = token.lower()  # ASCII only, like the kernel
    h = (len(token) * 0x9E3779B97F4A7C15) & _M64
    for i in range(0, len(low), 8):
        chunk = int.from_bytes(low[i:i + 8], "little")
        if i == 0:
            h ^= (chunk * 0xBF58476D1CE4E5B9) & _M64
        elif i == 8:
            h ^= (chunk * 0x94D049BB133111EB) & _M64
        else:
            h = ((h ^ chunk) * 0xBF58476D1CE4E5B9) & _M64
            h ^= h >> 31
    ident = any(48 <= c <= 57 or c == 95 for c in token) or sum(65 <= c <= 90 for c in token) >= 2
    return _mix64(h), ident


def reference_signature(text: str | bytes | None, params: MinHashParams | None = None) -> dict:
    """The kernel's computation for one text, in plain Python (slow; for tests and as
    the specification): {'keys', 'sketch', 'tokens', 'minima'}."""
    params = params or MinHashParams()
    data = text.encode("utf-8") if isinstance(text, str) else (text or b"")
    words = []
    for raw in data.split():  # bytes.split(): ASCII whitespace, like the kernel
        tok = raw.strip(_PUNCT)
        if tok:
            words.append(_word_hash(tok))
    plain, ident = [], []
    for i, (w, is_ident) in enumerate(words):
        if i > 0:
            prev = words[i - 1][0]
            plain.append(_high32((((prev << 23) | (prev >> 41)) & _M64) ^ w, 0x9FB21C651E98DF25))
        if is_ident:
            ident.append(_high32(w ^ 0x5BD1E9955BD1E995, 0xC2B2AE3D27D4EB4F))
    if len(words) == 1:
        plain.append(_high32(words[0][0] ^ 0x8A5CD789635D2DFF, 0x9FB21C651E98DF25))
    mult, add = params.permutations()
    minima = []
    for k, (a, b) in enumerate(zip(mult.tolist(), add.tolist())):
        half = 16 * ((k // 64) % 2)  # permutations in odd blocks of 64 use the high half
        m = 0xFFFF
        for x in plain:
            m = min(m, (a * ((x >> half) & 0xFFFF) + b) & 0xFFFF)
        for x in ident:
            m = min(m, ((a * ((x >> half) & 0xFFFF) + b) & 0xFFFF) >> params.ident_shift)
        minima.append(m)
    nib = [((m * 0x9E37) & 0xFFFF) >> 12 for m in minima]
    half = len(nib) // 2
    sketch = bytes(nib[t] | (nib[t + half] << 4) for t in range(half))
    keys = []
    for j in range(params.bands):
        h = ((j + 1) * 0x9E3779B97F4A7C15) & _M64
        band = minima[j * params.rows:(j + 1) * params.rows]
        for q0 in range(0, len(band), 4):
            packed = sum(v << (16 * t) for t, v in enumerate(band[q0:q0 + 4]))
            h = ((h ^ packed) * 0xBF58476D1CE4E5B9) & _M64
            h ^= h >> 32
        keys.append(_mix64(h) >> 32)
    return {"keys": keys, "sketch": sketch, "tokens": min(len(words), 0xFFFF), "minima": minima}


# -- similarity of sketches -----------------------------------------------------------------

_NIBBLE_LOW_BITS = np.uint64(0x1111111111111111)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of rows of two (n, K/2) uint8 sketch arrays: the
    share of equal 4-bit nibbles, corrected for the 1/16 that agree by chance."""
    K = a.shape[1] * 2
    x = np.ascontiguousarray(a).view(np.uint64) ^ np.ascontiguousarray(b).view(np.uint64)
    x |= x >> np.uint64(1)
    x |= x >> np.uint64(2)
    x &= _NIBBLE_LOW_BITS  # one bit per nibble that differs
    equal = K - np.bitwise_count(x).sum(axis=1, dtype=np.int32)
    return ((equal / K - 1 / 16) / (15 / 16)).astype(np.float32)


def _tokens_close(ta: np.ndarray, tb: np.ndarray, params: MinHashParams) -> np.ndarray:
    ta, tb = ta.astype(np.int32), tb.astype(np.int32)
    allowed = np.maximum(params.max_token_diff, params.max_token_diff_ratio * np.maximum(ta, tb))
    return np.abs(ta - tb) <= allowed


# -- text columns -------------------------------------------------------------------------------


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def text_columns(table: pa.Table, declared: dict[str, str]) -> list[str]:
    """Columns to check for near-duplicates, in table order: those the contract declares
    `free_text`, plus undeclared string columns whose values are at least
    TEXT_MIN_MEAN_CHARS characters long on average and mostly (TEXT_MIN_DISTINCT) distinct."""
    out = []
    for name in table.column_names:
        kind = declared.get(name)
        if kind is not None:
            if kind == "free_text":
                out.append(name)
            continue
        column = table.column(name)
        if not _is_text_type(column.type):
            continue
        values = column.drop_null()
        if len(values) == 0:
            continue
        mean = pc.mean(pc.utf8_length(values)).as_py() or 0.0
        if mean < TEXT_MIN_MEAN_CHARS:
            continue
        if pc.count_distinct(values).as_py() >= TEXT_MIN_DISTINCT * len(values):
            out.append(name)
    return out


def detection_text(table: pa.Table, columns: list[str]) -> pa.ChunkedArray | pa.Array:
    """The text a table's rows are compared on: the one text column, or the columns
    joined by a newline (a null part counts as empty; all parts empty: no signature)."""
    if not columns:
        raise ValueError("no text columns")
    if len(columns) == 1:
        return table.column(columns[0])
    parts = [pc.cast(table.column(c), pa.large_string()) for c in columns]
    return pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string()), null_handling="replace",
                                       null_replacement="")


# -- results ------------------------------------------------------------------------------------


@dataclass
class NearDupResult:
    is_near_dup: np.ndarray  # bool per row
    matched_upload: np.ndarray  # int64, -1 when not a near-duplicate
    matched_row: np.ndarray  # int64 row number within that upload, -1 when none
    similarity: np.ndarray  # float32 estimated Jaccard with the matched row, 0 when none

    @property
    def count(self) -> int:
        return int(self.is_near_dup.sum())

    def keep_mask(self, action: str) -> np.ndarray:
        """Rows to keep under the dataset contract's `near_duplicates` action: all of
        them for `flag`, the rows that are not near-duplicates for `drop`."""
        if action not in NEAR_DUPLICATE_ACTIONS:
            raise ValueError(f"near_duplicates must be one of {NEAR_DUPLICATE_ACTIONS}, got {action!r}")
        if action == "drop":
            return ~self.is_near_dup
        return np.ones(len(self.is_near_dup), dtype=bool)


def _empty_result(n: int) -> NearDupResult:
    return NearDupResult(np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64),
                         np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32))


# -- the index ------------------------------------------------------------------------------------

_LOAD = 0.7  # target share of the hash tables' slots in use (buckets of 16)
_LOAD_ROWS = 1 << 16  # loaded runs go into the index this many rows at a time


class _RunFile:
    """The rows one upload indexed, appended to local Arrow IPC files as `detect` adds
    them (a new file after each `run_for`, and after every `keep` rows), so that its run
    never sits in the heap. Only the newest `keep` rows are ever read back: while rows
    come in order, a file whose rows are all older than those is deleted, so the files
    hold at most ~2 x `keep` rows (~40 MB for the ingestion's window) however large the
    upload (every row of a 1 GB upload, ~190 MB, went to local disk before)."""

    def __init__(self, directory: str, upload_id: int, schema: pa.Schema, keep: int):
        self.directory, self.upload_id, self.schema, self.keep = directory, upload_id, schema, keep
        self.paths: list[str] = []
        self._file_rows: list[int] = []  # rows in each of `paths`
        self._opened = 0
        self._writer = None
        self.rows = 0  # in the files kept
        self.in_order = True  # rows appended in ascending order (tables detected in order)
        self._last_row = -1

    def append(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self._file_rows[-1] >= self.keep:
            self.close()
            path = os.path.join(self.directory, f"upload-{self.upload_id}-{self._opened}.arrow")
            self._opened += 1
            self.paths.append(path)
            self._file_rows.append(0)
            self._writer = pa.ipc.new_file(path, self.schema)
        self._writer.write_batch(batch)
        self._file_rows[-1] += batch.num_rows
        self.rows += batch.num_rows
        rows = batch.column(0)
        self.in_order = self.in_order and rows[0].as_py() > self._last_row
        self._last_row = rows[len(rows) - 1].as_py()
        # Out of order, the newest rows by row number could sit in any file: all are kept.
        while self.in_order and len(self.paths) > 1 and self.rows - self._file_rows[0] >= self.keep:
            os.unlink(self.paths.pop(0))
            self.rows -= self._file_rows.pop(0)

    def batches(self, last: int) -> Iterator[pa.RecordBatch]:
        """The `last` rows appended, a batch at a time, read rather than mapped: the pages
        of a mapped run count in the process's memory while it is being sent."""
        self.close()
        skip = max(0, self.rows - last)
        for path in self.paths:
            with pa.OSFile(path) as source:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    yield batch.slice(skip)
                    skip = 0

    def table(self, last: int) -> pa.Table | None:
        """The `last` rows in row order."""
        self.close()
        if not self.rows:
            return None
        tables = []
        for path in self.paths:
            with pa.memory_map(path) as source:
                tables.append(pa.ipc.open_file(source).read_all())
        table = pa.concat_tables(tables)
        rows = table.column("row").to_numpy()
        if len(rows) > 1 and (rows[1:] < rows[:-1]).any():  # tables detected out of order
            table = table.take(pa.array(np.argsort(rows, kind="stable")))
        return table.slice(max(0, table.num_rows - last))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def remove(self) -> None:
        self.close()
        for path in self.paths:  # tables mapped from them stay readable (POSIX)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.paths, self._file_rows, self.rows = [], [], 0


def _remove_directory(path: str, files: dict) -> None:
    for run in files.values():
        run.remove()
    shutil.rmtree(path, ignore_errors=True)


class NearDupIndex:
    """Near-duplicate texts of one dataset (tenant/dataset): earlier uploads' runs plus
    what the uploads ingested in this process added, the `max_rows` most recent rows of
    all of them. Not thread-safe."""

    def __init__(self, *, max_rows: int = 2_000_000, params: MinHashParams | None = None):
        self.params = params or MinHashParams()
        self.max_rows = max_rows
        p = self.params
        self._table = neardup_index.Index(max_rows, p.bands, p.sketch_bytes, p.probe, p.max_token_diff,
                                          p.threshold, p.max_token_diff_ratio, _LOAD)
        self.skipped: list[str] = []  # runs not loaded, with the reason (for the logs)
        self.seconds: Counter = Counter()  # per stage of `detect`, for reports and benchmarks
        self._scratch: dict = {}  # signature buffers reused by `detect`
        self._runs: list[tuple[int, pa.Table]] = []  # loaded, not yet in the index
        self._upload_ids: list[int] = []  # per upload number of the native index: the upload id
        self._number: dict[int, int] = {}  # upload id -> its current number
        # Staged rows per upload (run_for): while an upload's rows are the last the index
        # took, in row order, its run is the ring's rows of it (`_in_ring`: upload id ->
        # (first gid, last row)); otherwise they go to local files.
        self._in_ring: dict[int, tuple[int, int]] = {}
        self._files: dict[int, _RunFile] = {}
        self._taken: set[int] = set()  # uploads whose run was taken by run_for
        self._last_upload: int | None = None
        self._dir = tempfile.mkdtemp(prefix="neardup-")
        self._cleanup = weakref.finalize(self, _remove_directory, self._dir, self._files)
        schema = pa.schema([("row", pa.uint32()), ("tokens", pa.uint16()), ("sketch", pa.binary(p.sketch_bytes))]
                           + [(name, pa.uint32()) for name in self._band_names()])
        self._schema = schema.with_metadata({VERSION_KEY: p.version.encode()})

    # -- loading and persisting

    def load_run(self, upload_id: int, run: pa.Table) -> None:
        """Add an earlier upload's run (oldest first). Runs of other parameters are
        skipped (see `skipped`); once more than `max_rows` rows are loaded the oldest
        runs are dropped."""
        meta = run.schema.metadata or {}
        version = meta.get(VERSION_KEY, b"").decode()
        if version != self.params.version:
            self.skipped.append(f"upload {upload_id}: run built with {version or 'no version'}, "
                                f"this index uses {self.params.version}")
            return
        missing = {"row", "tokens", "sketch", *self._band_names()} - set(run.column_names)
        if missing:
            self.skipped.append(f"upload {upload_id}: run lacks columns {sorted(missing)}")
            return
        self._runs.append((upload_id, run))
        total = sum(r.num_rows for _, r in self._runs)
        while len(self._runs) > 1 and total - self._runs[0][1].num_rows >= self.max_rows:
            old_id, old = self._runs.pop(0)
            total -= old.num_rows
            self.skipped.append(f"upload {old_id}: older than the {self.max_rows} most recent indexed rows")

    def run_for(self, upload_id: int) -> pa.Table | None:
        """The rows `upload_id` added (staged by `detect`) as a run table, or None: its
        newest `max_rows` rows, in upload order; columns row (uint32), tokens (uint16),
        sketch (fixed_size_binary), band_00.. (uint32); the parameters' version in the
        schema metadata. Memory-mapped from a local file.

        Older rows of the upload are left out: a window of at most `max_rows` rows never
        loads them again (the newest rows of all runs are the newest rows of each), so
        they would be bytes stored and sent for nothing (1.7 M of a 1 GB upload's 1.9 M
        texts with the ingestion's 200k window, ~170 MB)."""
        if upload_id in self._in_ring:
            batches = list(self._ring_batches(upload_id))
            table = pa.Table.from_batches(batches, self._schema) if batches else None
        else:
            run = self._files.get(upload_id)
            table = run.table(self.max_rows) if run is not None else None
        if table is None:
            return None
        self._taken.add(upload_id)
        return table.replace_schema_metadata(self.run_schema(upload_id).metadata)

    def run_schema(self, upload_id: int) -> pa.Schema:
        """The schema of `upload_id`'s run, the parameters' version and the upload in its metadata."""
        return self._schema.with_metadata({VERSION_KEY: self.params.version.encode(),
                                           UPLOAD_KEY: str(upload_id).encode()})

    def run_reader(self, upload_id: int) -> pa.RecordBatchReader | None:
        """`run_for` as a stream of batches with only one in memory at a time (what is
        written to the store)."""
        if upload_id in self._in_ring:
            self._taken.add(upload_id)
            return pa.RecordBatchReader.from_batches(self.run_schema(upload_id), self._ring_batches(upload_id))
        run = self._files.get(upload_id)
        if run is None or not run.rows:
            return None
        if not run.in_order:
            table = self.run_for(upload_id)
            return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
        self._taken.add(upload_id)
        return pa.RecordBatchReader.from_batches(self.run_schema(upload_id), run.batches(self.max_rows))

    def persisted(self, upload_id: int) -> None:
        """The run of `upload_id` is stored: its rows stay searchable, its local run
        file goes."""
        self._in_ring.pop(upload_id, None)
        run = self._files.pop(upload_id, None)
        if run is not None:
            run.remove()
        self._taken.discard(upload_id)

    def forget(self, upload_id: int) -> None:
        """Drop what `upload_id` added (it was not kept after all): its rows no longer
        match (they leave the window as it moves on) and its run goes."""
        self._runs = [(u, r) for u, r in self._runs if u != upload_id]
        self.persisted(upload_id)
        number = self._number.pop(upload_id, None)
        if number is not None:
            self._table.kill(number)
        if self._last_upload == upload_id:
            self._last_upload = None

    def __len__(self) -> int:
        return self._table.live + sum(r.num_rows for _, r in self._runs)

    @property
    def nbytes(self) -> int:
        """Memory held by the index (excluding loaded runs not yet added)."""
        return self._table.nbytes

    # -- detection

    def detect(self, texts: pa.Array | pa.ChunkedArray, upload_id: int, first_row: int) -> NearDupResult:
        """Near-duplicates among the texts of one table of upload `upload_id`, whose rows
        are `first_row`, `first_row + 1`, ... of the upload. A row is a near-duplicate when
        it is near a row of an earlier upload, of an earlier table, or an earlier row of
        this table that is not itself a near-duplicate. The other rows with a text are
        added to the index under `upload_id`. Null, empty and punctuation-only texts are
        neither flagged nor indexed."""
        clock = _Clock(self.seconds)
        if upload_id != self._last_upload:
            self._new_upload_started(upload_id)
        self._build()
        staged = self._in_ring.get(upload_id)
        if staged is not None and first_row <= staged[1]:
            self._to_files(upload_id)  # out of row order: the ring's order is no longer the run's
        first_gid = self._table.head
        clock("load")
        p = self.params
        sig = signatures(texts, p, scratch=self._scratch)  # views: used within this call only
        clock("signatures")
        n = len(sig)
        result = _empty_result(n)
        rows = np.flatnonzero(sig.valid)
        if len(rows) == 0:
            return result
        if len(rows) == n:
            keys, sketch, tokens = sig.keys, sig.sketch, sig.tokens
        else:
            keys, sketch, tokens = sig.keys[rows], sig.sketch[rows], sig.tokens[rows]
        m = len(rows)
        number = self._upload_number(upload_id)
        row_numbers = (first_row + rows).astype(np.uint32)
        kept = np.empty(m, dtype=np.uint8)
        match_upload = np.empty(m, dtype=np.int64)
        match_row = np.empty(m, dtype=np.int64)
        sim = np.empty(m, dtype=np.float32)
        self._table.detect(keys, sketch, tokens, row_numbers, m, number, kept, match_upload, match_row, sim)
        clock("match")

        near = kept == 0
        at = rows[near]
        result.is_near_dup[at] = True
        result.matched_upload[at] = np.asarray(self._upload_ids, dtype=np.int64)[match_upload[near]]
        result.matched_row[at] = match_row[near]
        result.similarity[at] = sim[near]
        k = np.flatnonzero(kept)
        if len(k):
            self._stage(upload_id, first_gid, k, row_numbers, tokens, sketch, keys)
        clock("run")
        return result

    # -- internals

    def _band_names(self) -> list[str]:
        return [f"band_{j:02d}" for j in range(self.params.bands)]

    def _upload_number(self, upload_id: int) -> int:
        number = self._number.get(upload_id)
        if number is None:
            number = self._number[upload_id] = self._table.new_upload()
            self._upload_ids.append(upload_id)
        return number

    def _new_upload_started(self, upload_id: int) -> None:
        """Runs taken by `run_for` before another upload started are stored (or the
        upload was given up): their local files go."""
        for taken in list(self._taken):
            if taken != upload_id:
                self.persisted(taken)
        for other in [u for u in self._in_ring if u != upload_id]:
            self._to_files(other)  # this upload's rows would push its out of the ring
        self._last_upload = upload_id

    def _stage(self, upload_id: int, first_gid: int, kept: np.ndarray, rows: np.ndarray, tokens: np.ndarray,
               sketch: np.ndarray, keys: np.ndarray) -> None:
        """Keep the rows `detect` just indexed (`kept` of those given; the first got gid
        `first_gid`) for the upload's run. In the common case (one upload at a time,
        tables in order) there is nothing to do: the ring holds them, and its rows of the
        upload are its run. Writing every row to local files as it came, for the ~10% of
        a 1 GB upload's rows that its run keeps, cost 0.31 s per 400k rows (0.01 s now)."""
        run = self._files.get(upload_id)
        if run is None:
            first_gid = self._in_ring.get(upload_id, (first_gid, 0))[0]
            self._in_ring[upload_id] = (first_gid, int(rows[kept[-1]]))
            return
        run.append(self._batch(rows[kept], tokens[kept], sketch[kept], keys[kept], len(kept)))

    def _batch(self, rows: np.ndarray, tokens: np.ndarray, sketch: np.ndarray, keys: np.ndarray,
               n: int) -> pa.RecordBatch:
        columns = [pa.array(rows[:n]), pa.array(tokens[:n]),
                   pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.params.sketch_bytes), n,
                                                        [None, pa.py_buffer(np.ascontiguousarray(sketch[:n]))])]
        columns += [pa.array(np.ascontiguousarray(keys[:n, j])) for j in range(keys.shape[1])]
        return pa.RecordBatch.from_arrays(columns, schema=self._schema)

    def _ring_batches(self, upload_id: int) -> Iterator[pa.RecordBatch]:
        """The ring's rows of an upload staged there, oldest first, _LOAD_ROWS at a time
        (which rows is decided now, not when the batches are read)."""
        return self._exported(self._number[upload_id], self._in_ring[upload_id][0])

    def _exported(self, number: int, gid: int) -> Iterator[pa.RecordBatch]:
        p = self.params
        while True:
            rows = np.empty(_LOAD_ROWS, dtype=np.uint32)
            tokens = np.empty(_LOAD_ROWS, dtype=np.uint16)
            sketch = np.empty((_LOAD_ROWS, p.sketch_bytes), dtype=np.uint8)
            keys = np.empty((_LOAD_ROWS, p.bands), dtype=np.uint32)
            n, gid = self._table.export(number, gid, keys, sketch, tokens, rows)
            if n:
                yield self._batch(rows, tokens, sketch, keys, n)
            if n < _LOAD_ROWS:
                return

    def _to_files(self, upload_id: int | None = None) -> None:
        """Move the runs staged in the ring (of `upload_id`, or all) to local files: the
        ring is about to take rows that are not the next of their run."""
        for u in [upload_id] if upload_id is not None else list(self._in_ring):
            batches = self._ring_batches(u)
            run = self._files[u] = _RunFile(self._dir, u, self._schema, self.max_rows)
            for batch in batches:
                run.append(batch)
            del self._in_ring[u]

    def _build(self) -> None:
        """Add loaded runs to the index, oldest first (only the rows the window keeps)."""
        if not self._runs:
            return
        self._to_files()  # the loaded rows would push staged runs out of the ring
        runs, self._runs = self._runs, []
        skip = max(0, sum(r.num_rows for _, r in runs) - self.max_rows)
        names = self._band_names()
        width = self.params.sketch_bytes
        for upload_id, run in runs:
            n = run.num_rows
            if skip >= n:
                skip -= n
                continue
            run = run.slice(skip)
            skip = 0
            number = self._upload_number(upload_id)
            for s in range(0, run.num_rows, _LOAD_ROWS):
                part = run.slice(s, _LOAD_ROWS)
                m = part.num_rows
                rows = np.ascontiguousarray(part.column("row").to_numpy(), dtype=np.uint32)
                tokens = np.ascontiguousarray(part.column("tokens").to_numpy(), dtype=np.uint16)
                sk = part.column("sketch").combine_chunks()
                sketch = np.frombuffer(sk.buffers()[1], dtype=np.uint8, count=(sk.offset + m) * width)[sk.offset * width:]
                keys = np.empty((m, len(names)), dtype=np.uint32)
                for j, name in enumerate(names):
                    keys[:, j] = part.column(name).to_numpy()
                self._table.add(keys, np.ascontiguousarray(sketch), tokens, rows, m, number)


class _Clock:
    def __init__(self, into: Counter):
        self.into, self.last = into, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.into[stage] += now - self.last
        self.last = now

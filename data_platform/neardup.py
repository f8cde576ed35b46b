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

Index (`NearDupIndex`): per band, sorted uint64 arrays of key << 32 | row id in a few
segments (merged in tiers as an upload adds tables), each with a bucket directory and a
bitmap of its keys, and holding only the `probe` (4) newest rows per key: a lookup is
a few vectorised numpy gathers per band and segment for the whole table, and a key that
thousands of rows share (a common sentence) costs no more than a rare one. The rows of
one table are matched against each other by sorting their keys per band.

Rows are decided in order: a row is a near-duplicate when it is near an earlier row
that is not itself one (of an earlier upload, an earlier table, or earlier in its
table). Near-duplicates are not indexed, so every match names a row that stays in the
data under either contract action, and the result barely depends on how an upload is
split into tables or uploads. Several text columns are compared on their concatenation
(`detection_text`: table order, joined by a newline).

Persistence: the rows an upload added form its run (`run_for`), a pyarrow Table the
caller writes as Parquet and gives back with `load_run`, oldest first. Runs built with
other signature parameters (`MinHashParams.version` in the schema metadata) are skipped
with a reason (`skipped`), never mixed. Only the `max_rows` newest rows are searched
(older runs are not loaded; rows beyond 1.25 x max_rows are dropped oldest first).
Memory per indexed row: 157 bytes measured on a 1.7M-row index (8 bands x ~9.5: an
8-byte entry, directory and bitmap; 64 sketch; 14 upload, row and tokens); rows this
process added also keep their 32 bytes of band keys until `persisted`. A run is ~106
bytes per row as uncompressed Parquet.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_platform._native import minhash_kernel

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


class _Grow:
    """A growable array (first axis), amortised O(1) appends."""

    def __init__(self, dtype, width: int | None = None):
        self.dtype, self.width = dtype, width
        self.n = 0
        self.buf = np.zeros((0,) if width is None else (0, width), dtype=dtype)

    def append(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.buf):
            cap = max(need, int(len(self.buf) * 1.25), 1024)
            new = np.zeros((cap,) if self.width is None else (cap, self.width), dtype=self.dtype)
            new[:self.n] = self.buf[:self.n]
            self.buf = new
        self.buf[self.n:need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.buf[:self.n]

    def keep(self, mask: np.ndarray) -> None:
        kept = self.view[mask]
        self.buf = kept.copy()
        self.n = len(kept)


_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_BASE_LEVEL = 1 << 20  # segments of loaded runs: never merged


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique hashes integers, which is slower here)."""
    values = np.sort(values)
    if len(values) > 1:
        values = values[np.r_[True, values[1:] != values[:-1]]]
    return values


def _newest_per_key(entries: np.ndarray, probe: int) -> np.ndarray:
    """Sorted entries key << 32 | gid restricted to the `probe` largest gids per key."""
    if len(entries) <= probe:
        return entries
    keys = entries >> _SHIFT32
    if not (keys[probe:] == keys[:-probe]).any():  # no key holds more than `probe` rows
        return entries
    return entries[np.r_[keys[:-probe] != keys[probe:], np.ones(probe, dtype=bool)]]


class _Segment:
    """A batch of indexed rows, per band: the entries key << 32 | gid, sorted, holding
    only the `probe` newest rows of each key (lookups never return more: a key that
    thousands of rows share, from a common sentence, costs no more than a rare one);
    a directory of where each bucket of the top `bits` key bits starts (about four
    entries per bucket); and a bitmap of the top `fbits` key bits (8 bits per entry),
    which turns ~7/8 of the keys no row holds away after one lookup."""

    PARALLEL_ROWS = 1 << 17  # segments at least this large index their bands on 2 threads

    def __init__(self, entries: list[np.ndarray], rows: int, level: int, probe: int, *, sort: str | None = None):
        """`entries`: per band, key << 32 | gid, sorted, or to sort with numpy's `sort`
        kind ("quicksort" for random order, "stable" for concatenated sorted runs)."""
        self.rows, self.level, self.probe = rows, level, probe

        def band(e):
            if sort:
                e = np.sort(e, kind=sort)
            e = _newest_per_key(e, probe)
            n = len(e)
            bits = max(1, min(30, n.bit_length() - 2))
            starts = np.zeros((1 << bits) + 1, dtype=np.uint32)
            np.cumsum(np.bincount((e >> np.uint64(64 - bits)).astype(np.intp), minlength=1 << bits),
                      out=starts[1:])
            fbits = max(6, min(27, n.bit_length() + 3))
            marks = np.zeros(1 << fbits, dtype=bool)
            marks[(e >> np.uint64(64 - fbits)).astype(np.intp)] = True
            return e, bits, fbits, starts, np.packbits(marks, bitorder="little")

        if rows >= self.PARALLEL_ROWS and len(entries) > 1:  # numpy releases the GIL in sorts and scans
            done = list(_executor(2).map(band, entries))
        else:
            done = [band(e) for e in entries]
        self.entries = [d[0] for d in done]  # per band, sorted
        self.bits = [d[1] for d in done]
        self.fbits = [d[2] for d in done]
        self.starts = [d[3] for d in done]
        self.bitmap = [d[4] for d in done]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self.entries, *self.starts, *self.bitmap))

    @staticmethod
    def merge(segments: list["_Segment"], level: int, probe: int) -> "_Segment":
        bands = [np.concatenate([s.entries[j] for s in segments]) for j in range(len(segments[0].entries))]
        # a few sorted runs: timsort merges them
        return _Segment(bands, sum(s.rows for s in segments), level, probe, sort="stable")

    def lookup(self, j: int, q: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(needle index, gid) for needles q (uint32 keys of band j): the `limit[i]` most
        recent gids holding each key (limit: int64 per needle, >= 1)."""
        fbits, bits = self.fbits[j], self.bits[j]
        top = (q >> np.uint32(32 - fbits)).astype(np.intp)
        maybe = np.flatnonzero((self.bitmap[j][top >> 3] >> (top & 7).astype(np.uint8)) & 1)
        if not len(maybe):
            return maybe, np.zeros(0, dtype=np.uint64)
        q = q[maybe]
        st = self.starts[j]
        bucket = (q >> np.uint32(32 - bits)).astype(np.intp)
        lo = st[bucket].astype(np.intp)
        cnt = st[bucket + 1].astype(np.intp) - lo
        # every entry of each needle's bucket (a handful: keys hold at most `probe` rows)
        needle = np.repeat(np.arange(len(q)), cnt)
        pos = lo[needle] + (np.arange(len(needle)) - (np.cumsum(cnt) - cnt)[needle])
        v = self.entries[j][pos]
        ok = (v >> _SHIFT32) == q[needle]
        needle, v = needle[ok], v[ok]
        if len(needle) and (limit[0] < self.probe or not (limit == limit[0]).all()):
            # entries of a key are ascending by gid: keep the last `limit`
            last = np.flatnonzero(np.r_[needle[1:] != needle[:-1], True])
            size = np.diff(np.r_[-1, last])
            keep = np.repeat(last, size) - np.arange(len(needle)) < limit[maybe][needle]
            needle, v = needle[keep], v[keep]
        return maybe[needle], v & _LOW32


class _Clock:
    def __init__(self, into: Counter):
        self.into, self.last = into, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.into[stage] += now - self.last
        self.last = now


class NearDupIndex:
    """Near-duplicate texts of one dataset (tenant/dataset): earlier uploads' runs plus
    what the uploads ingested in this process added. Not thread-safe."""

    FAN_IN = 2  # segments of one level merged at once

    def __init__(self, *, max_rows: int = 2_000_000, params: MinHashParams | None = None):
        self.params = params or MinHashParams()
        self.max_rows = max_rows
        self.skipped: list[str] = []  # runs not loaded, with the reason (for the logs)
        self.seconds: Counter = Counter()  # per stage of `detect`, for reports and benchmarks
        self._scratch: dict = {}  # signature buffers reused by `detect`
        self._runs: list[tuple[int, pa.Table]] = []  # loaded, not yet in the arrays
        # per row id (gid, in the order rows were indexed): upload, row within it,
        # token count, sketch
        self._upload = _Grow(np.int64)
        self._row = _Grow(np.uint32)
        self._tokens = _Grow(np.uint16)
        self._sketch = _Grow(np.uint8, self.params.sketch_bytes)
        self._segments: list[_Segment] = []  # in gid order: oldest first
        # band keys of the rows `detect` added (loaded runs are persisted already), for run_for
        self._staged_gid = _Grow(np.int64)
        self._staged_keys = _Grow(np.uint32, self.params.bands)
        # staged rows pushed out of the max_rows window before their run was taken
        self._spilled: list[dict[str, np.ndarray]] = []

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
        """The rows `upload_id` added (staged by `detect`) as a run table, or None. Rows
        in upload order; columns row (uint32), tokens (uint16), sketch
        (fixed_size_binary), band_00.. (uint32); the parameters' version in the schema
        metadata."""
        self._build()
        staged = self._staged_gid.view
        at = np.flatnonzero(self._upload.view[staged] == upload_id)
        gids = staged[at]
        parts = [part for part in self._spilled if part["upload"] == upload_id]
        parts.append({"row": self._row.view[gids], "tokens": self._tokens.view[gids],
                      "sketch": self._sketch.view[gids], "keys": self._staged_keys.view[at]})
        rows = np.concatenate([part["row"] for part in parts])
        if len(rows) == 0:
            return None
        order = np.argsort(rows, kind="stable")
        sketch = np.concatenate([part["sketch"] for part in parts])[order]
        keys = np.concatenate([part["keys"] for part in parts])[order]
        p = self.params
        columns = {
            "row": pa.array(rows[order]),
            "tokens": pa.array(np.concatenate([part["tokens"] for part in parts])[order]),
            "sketch": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(p.sketch_bytes), len(rows), [None, pa.py_buffer(np.ascontiguousarray(sketch).tobytes())]),
        }
        for j, name in enumerate(self._band_names()):
            columns[name] = pa.array(np.ascontiguousarray(keys[:, j]))
        meta = {VERSION_KEY: p.version.encode(), UPLOAD_KEY: str(upload_id).encode()}
        return pa.table(columns).replace_schema_metadata(meta)

    def persisted(self, upload_id: int) -> None:
        """The run of `upload_id` is stored: its rows stay searchable, but what only
        `run_for` needed (their band keys, 4 bytes per band and row) is released."""
        keep = self._upload.view[self._staged_gid.view] != upload_id
        self._staged_keys.keep(keep)
        self._staged_gid.keep(keep)
        self._spilled = [part for part in self._spilled if part["upload"] != upload_id]

    def forget(self, upload_id: int) -> None:
        """Drop what `upload_id` added (it was not kept after all)."""
        self._runs = [(u, r) for u, r in self._runs if u != upload_id]
        self._spilled = [part for part in self._spilled if part["upload"] != upload_id]
        if self._upload.n:
            self._compact(self._upload.view != upload_id)

    def __len__(self) -> int:
        return self._upload.n + sum(r.num_rows for _, r in self._runs)

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays (excluding loaded runs not yet merged)."""
        return (sum(seg.nbytes for seg in self._segments)
                + sum(g.buf.nbytes for g in (self._upload, self._row, self._tokens, self._sketch,
                                             self._staged_gid, self._staged_keys))
                + sum(a.nbytes for part in self._spilled for k, a in part.items() if k != "upload"))

    # -- detection

    def detect(self, texts: pa.Array | pa.ChunkedArray, upload_id: int, first_row: int) -> NearDupResult:
        """Near-duplicates among the texts of one table of upload `upload_id`, whose rows
        are `first_row`, `first_row + 1`, ... of the upload. A row is a near-duplicate when
        it is near a row of an earlier upload, of an earlier table, or an earlier row of
        this table that is not itself a near-duplicate. The other rows with a text are
        added to the index under `upload_id`. Null, empty and punctuation-only texts are
        neither flagged nor indexed."""
        clock = _Clock(self.seconds)
        self._build()
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
        # per band: key << 32 | row, sorted; for the pairs within the table and, filtered
        # to the kept rows, for their segment
        local = np.arange(m, dtype=np.uint64)
        sorted_keys = [np.sort((keys[:, b].astype(np.uint64) << _SHIFT32) | local) for b in range(p.bands)]
        clock("sort")

        # 1. earlier tables and uploads
        qi, gid = self._candidates(keys)
        clock("lookup")
        best_sim = np.zeros(m, dtype=np.float32)
        best_gid = np.full(m, -1, dtype=np.int64)
        if len(qi):
            ok = _tokens_close(tokens[qi], self._tokens.view[gid], p)
            qi, gid = qi[ok], gid[ok]
            sim = estimated_jaccard(sketch[qi], self._sketch.view[gid])
            ok = sim >= p.threshold
            qi, gid, sim = qi[ok], gid[ok], sim[ok]
            if len(qi):
                # best per query: highest similarity, then the most recent row
                order = np.lexsort((gid, sim, qi))
                last = np.r_[qi[order][1:] != qi[order][:-1], True]
                sel = order[last]
                best_sim[qi[sel]], best_gid[qi[sel]] = sim[sel], gid[sel]
        flagged = best_gid >= 0
        clock("verify")

        # 2. earlier rows of this table, decided in order
        i, j, sim_in = self._pairs_within(sorted_keys, sketch, tokens)
        kept, match_in, sim_match_in = self._resolve(m, flagged, i, j, sim_in)
        clock("within_table")

        # results
        res_rows = rows[flagged]
        result.is_near_dup[res_rows] = True
        result.matched_upload[res_rows] = self._upload.view[best_gid[flagged]]
        result.matched_row[res_rows] = self._row.view[best_gid[flagged]]
        result.similarity[res_rows] = best_sim[flagged]
        inner = match_in >= 0
        res_rows = rows[inner]
        result.is_near_dup[res_rows] = True
        result.matched_upload[res_rows] = upload_id
        result.matched_row[res_rows] = first_row + rows[match_in[inner]]
        result.similarity[res_rows] = sim_match_in[inner]

        # 3. index the kept rows
        k = np.flatnonzero(kept)
        if len(k):
            self._add(upload_id, first_row + rows[k], tokens[k], sketch[k], keys[k], sorted_keys, kept)
        clock("index")
        return result

    # -- internals

    def _band_names(self) -> list[str]:
        return [f"band_{j:02d}" for j in range(self.params.bands)]

    def _build(self) -> None:
        """Move loaded runs into the arrays (once, so that many runs cost one sort)."""
        if not self._runs:
            return
        runs, self._runs = self._runs, []
        names = self._band_names()
        base = self._upload.n
        gids, keys = [], []
        for upload_id, run in runs:
            n = run.num_rows
            if n == 0:
                continue
            gids.append(np.arange(self._upload.n, self._upload.n + n, dtype=np.uint64))
            self._upload.append(np.full(n, upload_id, dtype=np.int64))
            self._row.append(run.column("row").to_numpy().astype(np.uint32))
            self._tokens.append(run.column("tokens").to_numpy().astype(np.uint16))
            sk = run.column("sketch").combine_chunks()
            width = self.params.sketch_bytes
            self._sketch.append(np.frombuffer(sk.buffers()[1], dtype=np.uint8, count=(sk.offset + n) * width)
                                [sk.offset * width:].reshape(n, width))
            keys.append([run.column(c).to_numpy().astype(np.uint64) for c in names])
        if gids:
            g = np.concatenate(gids)
            bands = [(np.concatenate([k[j] for k in keys]) << _SHIFT32) | g for j in range(len(names))]
            self._segments.append(_Segment(bands, self._upload.n - base, _BASE_LEVEL, self.params.probe,
                                           sort="quicksort"))
        self._evict()

    def _add(self, upload_id: int, rows: np.ndarray, tokens: np.ndarray, sketch: np.ndarray, keys: np.ndarray,
             sorted_keys: list[np.ndarray], kept: np.ndarray) -> None:
        """Index the kept rows of a table: their metadata, and a segment made of the
        table's sorted band entries restricted to them (gids rise with the rows, so the
        entries stay sorted)."""
        n = len(rows)
        base = self._upload.n
        self._upload.append(np.full(n, upload_id, dtype=np.int64))
        self._row.append(rows.astype(np.uint32))
        self._tokens.append(tokens)
        self._sketch.append(sketch)
        self._staged_gid.append(np.arange(base, base + n, dtype=np.int64))
        self._staged_keys.append(keys)
        gid = (np.cumsum(kept) - 1 + base).astype(np.uint64)  # of each local row, if kept
        bands = []
        for e in sorted_keys:
            e = e[kept[(e & _LOW32).astype(np.intp)]]
            bands.append(((e >> _SHIFT32) << _SHIFT32) | gid[(e & _LOW32).astype(np.intp)])
        self._segments.append(_Segment(bands, n, 0, self.params.probe))
        self._merge_segments()
        self._evict()

    def _merge_segments(self) -> None:
        """Tiered merging: FAN_IN segments of one level become one of the next level, so
        each row is merged log_FAN_IN(tables) times and at most FAN_IN - 1 segments per
        level are searched. Segments built from loaded runs never merge."""
        segs = self._segments
        while len(segs) >= self.FAN_IN and len({s.level for s in segs[-self.FAN_IN:]}) == 1 \
                and segs[-1].level < _BASE_LEVEL:
            merged = _Segment.merge(segs[-self.FAN_IN:], segs[-1].level + 1, self.params.probe)
            del segs[-self.FAN_IN:]
            segs.append(merged)

    def _evict(self) -> None:
        """Keep at most max_rows rows (plus a quarter of slack, so compaction is rare)."""
        n = self._upload.n
        if n <= self.max_rows + self.max_rows // 4:
            return
        alive = np.ones(n, dtype=bool)
        alive[:n - self.max_rows] = False
        self._compact(alive, spill=True)

    def _compact(self, alive: np.ndarray, spill: bool = False) -> None:
        """Keep the rows (gids) where `alive`, renumbered in order; with `spill`, keep
        what the runs of dropped staged rows need."""
        if alive.all():
            return
        remap = (np.cumsum(alive) - 1).astype(np.uint64)
        segs = []
        for seg in self._segments:
            bands = []
            for e in seg.entries:
                g = (e & _LOW32).astype(np.intp)
                keep = alive[g]
                bands.append(((e[keep] >> _SHIFT32) << _SHIFT32) | remap[g[keep]])  # remap is monotone
            rows = int(alive[self._segment_gids(seg)].sum()) if seg.rows else 0
            if rows:
                segs.append(_Segment(bands, rows, seg.level, self.params.probe))
        self._segments = segs
        staged_alive = alive[self._staged_gid.view]
        if spill and not staged_alive.all():
            # rows `detect` added that leave the window still belong in their upload's run
            at = np.flatnonzero(~staged_alive)
            gids = self._staged_gid.view[at]
            uploads = self._upload.view[gids]
            for upload_id in np.unique(uploads):
                sel = uploads == upload_id
                g = gids[sel]
                self._spilled.append({"upload": int(upload_id), "row": self._row.view[g].copy(),
                                      "tokens": self._tokens.view[g].copy(), "sketch": self._sketch.view[g].copy(),
                                      "keys": self._staged_keys.view[at[sel]].copy()})
        self._staged_keys.keep(staged_alive)
        self._staged_gid.keep(staged_alive)
        self._staged_gid.buf[:] = remap[self._staged_gid.buf].astype(np.int64)
        for arr in (self._upload, self._row, self._tokens, self._sketch):
            arr.keep(alive)

    def _segment_gids(self, seg: _Segment) -> np.ndarray:
        """The gids a segment covers: segments hold consecutive gid ranges, in order."""
        start = 0
        for s in self._segments:
            if s is seg:
                return np.arange(start, start + s.rows)
            start += s.rows
        raise KeyError("segment not in the index")

    def _candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, gid) pairs sharing a band key: per key, the `probe` most recent
        rows holding it (newest segments first, whatever the segmentation). Deduplicated."""
        probe = self.params.probe
        m = len(keys)
        found = []
        for j in range(keys.shape[1]):
            q = np.ascontiguousarray(keys[:, j])
            remaining = np.full(m, probe, dtype=np.int64)
            active = None  # all needles
            segments = self._segments[::-1]
            for s, seg in enumerate(segments):
                if active is None:
                    needle, gid = seg.lookup(j, q, remaining)
                else:
                    needle, gid = seg.lookup(j, q[active], remaining[active])
                    needle = active[needle]
                if len(needle):
                    found.append((needle.astype(np.uint64) << _SHIFT32) | gid)
                    if s + 1 < len(segments):  # older segments only fill what is left
                        remaining -= np.bincount(needle, minlength=m)
                        active = np.flatnonzero(remaining > 0)
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pair = _unique(np.concatenate(found))
        return (pair >> _SHIFT32).astype(np.int64), (pair & _LOW32).astype(np.int64)

    def _pairs_within(self, sorted_keys: list[np.ndarray], sketch: np.ndarray,
                      tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Verified pairs (i, j), j < i, of rows of one table sharing a band key: per key,
        the `probe` previous rows and the `probe_first` first rows holding it."""
        p = self.params
        found = []
        for entries in sorted_keys:  # key << 32 | row, sorted: equal keys by ascending row
            ks = entries >> _SHIFT32
            same = ks[1:] == ks[:-1]
            if not same.any():
                continue
            m = len(entries)
            idx = np.arange(m)
            order = (entries & _LOW32).astype(np.int64)
            start = np.maximum.accumulate(np.where(np.r_[True, ~same], idx, 0))  # group start per position
            rank = idx - start
            for d in range(1, p.probe + 1):
                ok = np.flatnonzero(rank >= d)
                if not len(ok):
                    break
                found.append((order[ok] << 32) | order[ok - d])
            for f in range(p.probe_first):
                ok = np.flatnonzero(rank > p.probe + f)
                if not len(ok):
                    break
                found.append((order[ok] << 32) | order[start[ok] + f])
        if not found:
            e = np.zeros(0, dtype=np.int64)
            return e, e, np.zeros(0, dtype=np.float32)
        pair = _unique(np.concatenate(found))
        i, j = pair >> 32, pair & 0xFFFFFFFF
        ok = _tokens_close(tokens[i], tokens[j], p)
        i, j = i[ok], j[ok]
        sim = estimated_jaccard(sketch[i], sketch[j])
        ok = sim >= p.threshold
        return i[ok], j[ok], sim[ok]

    @staticmethod
    def _resolve(m: int, flagged: np.ndarray, i: np.ndarray, j: np.ndarray,
                 sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decide the rows of a table in order: a row is kept unless it is flagged
        already or near an earlier kept row. Vectorised rounds: each settles every row
        whose earlier neighbours are all settled (chains of near rows are short)."""
        state = np.where(flagged, 2, 0).astype(np.int8)  # 0 open, 1 kept, 2 near-dup
        match = np.full(m, -1, dtype=np.int64)
        match_sim = np.zeros(m, dtype=np.float32)
        live = state[i] == 0
        i, j, sim = i[live], j[live], sim[live]
        while True:
            has_edge = np.zeros(m, dtype=bool)
            has_edge[i] = True
            state[(state == 0) & ~has_edge] = 1
            if len(i) == 0:
                break
            # a kept earlier neighbour makes a row a near-duplicate (best similarity wins)
            hit = state[j] == 1
            if hit.any():
                hi_, hj, hs = i[hit], j[hit], sim[hit]
                order = np.lexsort((hs, hi_))
                last = np.r_[hi_[order][1:] != hi_[order][:-1], True]
                sel = order[last]
                state[hi_[sel]] = 2
                match[hi_[sel]] = hj[sel]
                match_sim[hi_[sel]] = hs[sel]
            # edges to near-duplicates never decide anything: drop them, and the settled rows'
            live = (state[i] == 0) & (state[j] != 2)
            i, j, sim = i[live], j[live], sim[live]
        return state == 1, match, match_sim

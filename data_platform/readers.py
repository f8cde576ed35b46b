"""Streaming readers: an uploaded file in, Arrow tables of bounded size out.

JSON Lines, CSV and Parquet, each optionally gzip-compressed. Types are inferred
from the first block and then held: later rows that do not fit are rejected one by
one (with their line number and a reason code) while the good rows go on. A file
that cannot be read at all raises `UnreadableUpload` with a reason code, and the
caller quarantines it whole.

Reason codes (documented in the README):
  whole file: empty_file, unsupported_format, corrupt_compression, binary_content,
              invalid_encoding, unreadable_parquet, invalid_header, no_rows, no_valid_rows
  per row:    malformed_json, not_an_object, type_mismatch, unexpected_field,
              wrong_column_count, invalid_encoding
"""

import functools
import gzip
import io
import json
import queue
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from data_platform._native import jsonl_kernel

# JSONL/CSV parse block; bounds memory per batch. Each block's table passes through five
# threads (parse, two refinement halves, the writer, with one waiting between each):
# ~11 blocks' worth of tables are alive at once. Each table also costs each stage a fixed
# part (calls, hand-overs): 1 GB, interleaved runs, CPU and peak RSS by block size:
# 8 MB 9.5-10.1 s, 499-513 MB; 12 MB 8.9-10.1 s, 547-566 MB; 16 MB 8.6-9.4 s, 591-605 MB.
BLOCK_BYTES = 12 * 1024 * 1024
PARQUET_BATCH_ROWS = 64 * 1024
SNIFF_BYTES = 64 * 1024
RAW_ROW_LIMIT = 10_000  # characters of a rejected row kept in its report
LINEWISE_BELOW = 32  # segments this small are parsed line by line when isolating bad rows

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}


class UnreadableUpload(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RejectedRow:
    line: int  # 1-based line in the (decompressed) file; CSV counts the header as line 1
    reason: str
    detail: str
    raw: str | None

    def as_dict(self) -> dict:
        return {"line": self.line, "reason": self.reason, "detail": self.detail, "raw": self.raw}


OnRejected = Callable[[RejectedRow], None]


def detect_format(filename: str) -> tuple[str, bool]:
    """(format, gzipped) from the file name; raises `UnreadableUpload` if unknown."""
    name = filename.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[:-3]
    suffix = name[name.rfind("."):] if "." in name else ""
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise UnreadableUpload("unsupported_format", f"unknown extension {suffix or '(none)'!r}; "
                                                     "expected .jsonl, .ndjson, .json, .csv or .parquet (optionally .gz)")
    return fmt, gzipped


def read_tables(path: Path, filename: str, on_rejected: OnRejected) -> Iterator[pa.Table]:
    """Yield normalised tables from the file at `path` (named `filename` by its uploader)."""
    fmt, gzipped = detect_format(filename)
    if fmt == "parquet":
        if path.stat().st_size == 0:
            raise UnreadableUpload("empty_file", "the upload has no bytes")
        yield from _parquet_tables(path, gzipped)
        return
    with open(path, "rb") as f:
        yield from read_stream_tables(f, filename, on_rejected)


def read_stream_tables(source, filename: str, on_rejected: OnRejected) -> Iterator[pa.Table]:
    """Text formats (JSONL, CSV, gzipped or not) from a sequential stream: parsing can
    start while the bytes are still arriving. Parquet needs `read_tables` (random access)."""
    fmt, gzipped = detect_format(filename)
    if fmt == "parquet":
        raise ValueError("Parquet needs random access: use read_tables on a file")
    raw = io.BufferedReader(source, buffer_size=1024 * 1024)
    if not raw.peek(1):
        raise UnreadableUpload("empty_file", "the upload has no bytes")
    if gzipped:
        if raw.peek(2)[:2] != b"\x1f\x8b":
            raise UnreadableUpload("corrupt_compression", "named .gz but not gzip data")
        stream = io.BufferedReader(_GzipErrors(gzip.GzipFile(fileobj=raw, mode="rb")), buffer_size=1024 * 1024)
    else:
        stream = raw
    with stream:
        _sniff_text(stream)
        if fmt == "jsonl":
            yield from _jsonl_tables(stream, on_rejected)
        else:
            yield from _csv_tables(stream, on_rejected)


# -- whole-file checks ------------------------------------------------------------------


class _GzipErrors(io.RawIOBase):
    """Turn gzip's errors (truncated or corrupt stream) into UnreadableUpload."""

    def __init__(self, raw):
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._raw.read(size)
        except (OSError, EOFError, zlib.error) as err:
            raise UnreadableUpload("corrupt_compression", f"gzip stream broken: {err}") from err

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _sniff_text(stream) -> None:
    head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    if not head:
        raise UnreadableUpload("empty_file", "no bytes after decompression")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableUpload("invalid_encoding", "UTF-16 text; upload UTF-8")
    if b"\x00" in head:
        raise UnreadableUpload("binary_content", "NUL bytes in a text format: not text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not merely a character cut by the sniff window
            raise UnreadableUpload("invalid_encoding", f"not UTF-8 (byte {err.start})") from err
    if head.startswith(b"\xef\xbb\xbf"):
        stream.read(3)  # UTF-8 byte order mark


# -- normalisation -------------------------------------------------------------------


def working_schema(schema: pa.Schema) -> pa.Schema:
    """Types the platform stores: timestamps in UTC microseconds, untyped columns as text."""
    fields = []
    names = schema.names
    if any(not n or not n.strip() for n in names):
        raise UnreadableUpload("invalid_header", "empty column name")
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise UnreadableUpload("invalid_header", f"duplicate column names {sorted(dupes)}")
    for field in schema:
        t = field.type
        if pa.types.is_null(t):
            t = pa.string()
        elif pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC")
        elif pa.types.is_large_string(t) or pa.types.is_dictionary(t) and pa.types.is_string(t.value_type):
            t = pa.string()
        fields.append(pa.field(field.name, t))
    return pa.schema(fields)


def normalise(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast to the working schema. Naive timestamps are taken as UTC."""
    columns = []
    for field in schema:
        col = table.column(field.name)
        if pa.types.is_timestamp(col.type) and col.type.tz is None:
            col = pc.assume_timezone(col, "UTC")
        columns.append(col.cast(field.type) if col.type != field.type else col)
    return pa.Table.from_arrays(columns, schema=schema)


# -- JSON Lines ------------------------------------------------------------------------


def _blocks(stream, block_bytes: int) -> Iterator[tuple[memoryview, int, int]]:
    """Whole-line blocks of about `block_bytes`, with the 1-based line they start at and
    their newline count (counted once, in C: numpy's count was ~0.1 s of CPU per GB, and
    the JSONL kernel counted them again).

    One buffer is reused for the whole file: a fresh 16 MB bytes object per block made
    glibc's heap fragment and the RSS creep with file size. The view yielded is valid
    until the next block is asked for.
    """
    buf = bytearray(block_bytes)
    start, line = 0, 1  # `start` bytes at the front are the carried partial line
    while True:
        with memoryview(buf) as view:
            n = stream.readinto(view[start:])
        end = start + n
        if n == 0:
            if end:
                with memoryview(buf) as view:
                    yield view[:end], line, jsonl_kernel.count_lines(view[:end])
            return
        cut = buf.rfind(b"\n", 0, end)
        if cut < 0:
            if end == len(buf):  # one line longer than the buffer: make room
                buf.extend(bytes(len(buf)))
            start = end
            continue
        with memoryview(buf) as view:
            newlines = jsonl_kernel.count_lines(view[:cut + 1])
            yield view[:cut + 1], line, newlines
        line += newlines
        rest = end - cut - 1
        buf[:rest] = buf[cut + 1:end]
        start = rest


_NON_BLANK = re.compile(rb"\S")


def _parse_json(data, schema: pa.Schema | None, *, new_fields: bool = False) -> pa.Table:
    options = pajson.ParseOptions(
        explicit_schema=schema,
        unexpected_field_behavior="infer" if schema is None or new_fields else "error",
    )
    # The block is parsed as one chunk. Parsed in 1 MB chunks on all cores, its table had
    # ~8 chunks per column, and every later take or filter on it concatenated each column
    # first (a copy of the table per call, ~15% of the ingestion's CPU with the page faults
    # of the fresh copies); the ingestion's threads keep the cores busy anyway.
    return pajson.read_json(pa.BufferReader(pa.py_buffer(data)), parse_options=options,
                            read_options=pajson.ReadOptions(block_size=max(len(data), 1 << 20)))


FLAT_ROWS_GIVE_UP = 4  # blocks the fast path gave back, more than it took, before it stops trying


class _FlatRows:
    """The compiled fast path for blocks of a schema whose columns are all strings,
    int64, doubles, booleans or timestamps (`_native/jsonl_kernel.c`): one pass into
    Arrow buffers (~4x Arrow's reader on the benchmark's rows). Timestamps are Arrow's to
    convert (its ISO 8601 parser decides what is one): the kernel copies their raw tokens
    into a small side JSON Lines buffer that Arrow's reader parses. It takes only a
    strict subset of JSON (see the kernel) and gives None for anything else: that block
    goes to Arrow's reader, so a table from here is always the one Arrow would have built."""

    KINDS = {pa.string(): "s", pa.int64(): "i", pa.float64(): "d", pa.bool_(): "b"}

    @classmethod
    def _kind(cls, t: pa.DataType) -> str:
        return "t" if pa.types.is_timestamp(t) else cls.KINDS.get(t, "?")

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.kinds = "".join(self._kind(f.type) for f in schema).encode()
        self.side_schema = pa.schema([f for f, k in zip(schema, self.kinds) if k == ord("t")])
        self.names = tuple(f.name.encode("utf-8") for f in schema)
        self.usable = len(schema) > 0 and b"?" not in self.kinds
        # String bytes each column reserves at first: an even share of the block, then
        # what the previous block used plus 1/8 (each growth is a copy, with the GIL).
        self.sizes: tuple[int, ...] | None = None
        self.taken = self.refused = 0

    def parse(self, block, newlines: int = -1) -> pa.Table | None:
        """The block's table, or None (then Arrow's reader parses it); `newlines`: its
        newline count, if known."""
        if not self.usable:
            return None
        share = len(block) // len(self.schema)
        # at least a quarter share each: a column empty in one block may be long in the next
        sizes = tuple(max(size, share // 4) for size in self.sizes) if self.sizes else (share,) * len(self.schema)
        parsed = jsonl_kernel.parse(block, self.kinds, self.names, sizes, _allocate_resizable, newlines)
        side = None
        if parsed is not None and self.side_schema:
            try:
                side = _parse_json(parsed[2].slice(0, parsed[3]), self.side_schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                parsed = None  # not a timestamp to Arrow: the block is Arrow's whole
            else:
                parsed = parsed if side.num_rows == parsed[0] else None
        if parsed is None:
            # A file whose blocks the kernel keeps giving back (escaped keys, say) would
            # pay for both parsers on every block: it is left to Arrow from then on.
            self.refused += 1
            self.usable = self.refused < FLAT_ROWS_GIVE_UP or self.refused <= self.taken
            return None
        self.taken += 1
        rows, columns = parsed[:2]
        arrays, used_sizes = [], []
        for field, kind, column in zip(self.schema, self.kinds, columns):
            if kind == ord("t"):
                arrays.append(side.column(field.name).combine_chunks())
                used_sizes.append(0)
                continue
            validity, nulls = column[0], column[1]
            if kind == ord("s"):
                offsets, data, used = column[2:]
                data.resize(used, shrink_to_fit=True)  # give back the rest of what was reserved
                buffers = [validity, offsets, data]
                used_sizes.append(used + used // 8)
            else:
                buffers = [validity, column[2]]
                used_sizes.append(0)
            arrays.append(pa.Array.from_buffers(field.type, rows, buffers, null_count=nulls))
        self.sizes = tuple(used_sizes)
        return pa.Table.from_arrays(arrays, schema=self.schema)


_allocate_resizable = functools.partial(pa.allocate_buffer, resizable=True)


def _jsonl_tables(stream, on_rejected: OnRejected, block_bytes: int | None = None) -> Iterator[pa.Table]:
    schema: pa.Schema | None = None
    flat: _FlatRows | None = None
    for block, first_line, newlines in _blocks(stream, block_bytes or BLOCK_BYTES):
        if not _NON_BLANK.search(block):
            continue
        if schema is None:
            # The first block fixes the types; its bad lines are isolated first so they
            # cannot decide the schema.
            table = _isolate_bad_json(bytes(block).split(b"\n"), first_line, None, on_rejected)
            if table is None or table.num_columns == 0:
                continue
            schema = working_schema(table.schema)
            flat = _FlatRows(schema)
            yield normalise(table, schema)
            continue
        try:
            table = flat.parse(block, newlines)
            if table is None:
                table = _parse_json(block, schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            table = _check_json_lines(bytes(block).split(b"\n"), first_line, schema, on_rejected)
        if table is not None and table.num_rows:
            yield normalise(table, schema)


def _isolate_bad_json(lines: list[bytes], first_line: int, schema: pa.Schema | None,
                      on_rejected: OnRejected) -> pa.Table | None:
    """Parse `lines`, rejecting exactly the ones that fail, by bisection.

    Costs one parse per level for each bad line; good runs are parsed in bulk. Without
    a schema (the first block), the first segment that parses sets the types and later
    segments may only add columns.
    """
    good: list[pa.Table] = []
    inferred = schema is None
    state = {"schema": schema}

    def parse(data: bytes) -> pa.Table:
        table = _parse_json(data, state["schema"], new_fields=inferred)
        if inferred:
            state["schema"] = table.schema if state["schema"] is None else pa.unify_schemas(
                [state["schema"], table.schema], promote_options="permissive")
        return table

    def visit(lo: int, hi: int) -> None:
        segment = lines[lo:hi]
        if not any(s.strip() for s in segment):
            return
        if hi - lo > LINEWISE_BELOW or lo == 0 and hi == len(lines):
            try:
                good.append(parse(b"\n".join(segment)))
                return
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if hi - lo > LINEWISE_BELOW:
                    mid = (lo + hi) // 2
                    visit(lo, mid)
                    visit(mid, hi)
                    return
        for i in range(lo, hi):
            raw = lines[i]
            if not raw.strip():
                continue
            try:
                good.append(parse(raw))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                on_rejected(_json_rejection(raw, first_line + i, err))

    try:
        visit(0, len(lines))
    finally:
        visit = None  # noqa: F841 - the closure refers to itself; break the cycle now, not at the next GC
    good = [t for t in good if t.num_rows]
    if not good:
        return None
    if inferred:
        # Pieces may differ by columns that appeared later: fill them with nulls.
        return pa.concat_tables(good, promote_options="permissive")
    return pa.concat_tables(good)


def _check_json_lines(lines: list[bytes], first_line: int, schema: pa.Schema,
                      on_rejected: OnRejected) -> pa.Table | None:
    """A block Arrow refused: check each line against `schema` in one linear pass.

    Used once the schema is known; costs a few times an Arrow parse, whatever the
    number of bad lines (bisection would re-parse the block once per level per bad line).
    """
    fits = {f.name: _value_check(f.type) for f in schema}
    good: list[dict] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        line = first_line + i
        try:
            row = json.loads(raw)
        except UnicodeDecodeError:
            on_rejected(RejectedRow(line, "invalid_encoding", "line is not UTF-8", _raw_text(raw)))
            continue
        except ValueError as err:
            on_rejected(RejectedRow(line, "malformed_json", str(err), _raw_text(raw)))
            continue
        if not isinstance(row, dict):
            on_rejected(RejectedRow(line, "not_an_object", f"a JSON {type(row).__name__}, not an object",
                                    _raw_text(raw)))
            continue
        extra = row.keys() - fits.keys()
        if extra:
            on_rejected(RejectedRow(line, "unexpected_field", f"fields not in the schema: {sorted(extra)}",
                                    _raw_text(raw)))
            continue
        bad = None
        for name, value in row.items():
            if value is None:
                continue
            converted = fits[name](value)
            if converted is _MISFIT:
                bad = f"column {name!r}: {str(value)[:200]!r} is not {schema.field(name).type}"
                break
            row[name] = converted
        if bad:
            on_rejected(RejectedRow(line, "type_mismatch", bad, _raw_text(raw)))
            continue
        good.append(row)
    if not good:
        return None
    return pa.Table.from_pylist(good, schema=schema)


_MISFIT = object()


def _raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")[:RAW_ROW_LIMIT]


def _value_check(t: pa.DataType) -> Callable[[object], object]:
    """A function returning the value as Arrow will take it, or _MISFIT."""
    if pa.types.is_string(t):
        return lambda v: v if isinstance(v, str) else _MISFIT
    if pa.types.is_boolean(t):
        return lambda v: v if isinstance(v, bool) else _MISFIT
    if pa.types.is_integer(t):
        return lambda v: v if isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63 else _MISFIT
    if pa.types.is_floating(t):
        return lambda v: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else _MISFIT
    if pa.types.is_timestamp(t):
        def as_timestamp(v):
            if not isinstance(v, str):
                return _MISFIT
            try:
                ts = datetime.fromisoformat(v)
            except ValueError:
                return _MISFIT
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        return as_timestamp

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = _value_check(t.value_type)

        def as_list(v):
            if not isinstance(v, list):
                return _MISFIT
            out = [x if x is None else item(x) for x in v]
            return _MISFIT if any(x is _MISFIT for x in out) else out
        return as_list
    if pa.types.is_struct(t):
        members = {t.field(i).name: _value_check(t.field(i).type) for i in range(t.num_fields)}

        def as_struct(v):
            if not isinstance(v, dict) or v.keys() - members.keys():
                return _MISFIT
            out = {k: x if x is None else members[k](x) for k, x in v.items()}
            return _MISFIT if any(x is _MISFIT for x in out.values()) else out
        return as_struct

    def other(v):  # any other type: let Arrow judge the one value
        try:
            pa.array([v], type=t)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            return _MISFIT
        return v
    return other


def _json_rejection(raw: bytes, line: int, err: Exception) -> RejectedRow:
    text = raw.decode("utf-8", "replace")[:RAW_ROW_LIMIT]
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        return RejectedRow(line, "invalid_encoding", "line is not UTF-8", text)
    except ValueError as jerr:
        return RejectedRow(line, "malformed_json", str(jerr), text)
    if not isinstance(value, dict):
        return RejectedRow(line, "not_an_object", f"a JSON {type(value).__name__}, not an object", text)
    message = str(err)
    if "unexpected field" in message.lower():
        return RejectedRow(line, "unexpected_field", message, text)
    return RejectedRow(line, "type_mismatch", message, text)


# -- CSV -------------------------------------------------------------------------------


def _csv_tables(stream, on_rejected: OnRejected, block_bytes: int | None = None) -> Iterator[pa.Table]:
    """Read every column as text, then cast to the types inferred from the first block:
    Arrow's streaming CSV reader cannot continue past a conversion error, and this way
    a bad value rejects only its own row."""
    block_bytes = block_bytes or BLOCK_BYTES
    header = stream.peek(block_bytes)[:block_bytes]
    try:
        sample = pacsv.read_csv(io.BytesIO(_whole_lines(header)),
                                parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"))
    except pa.ArrowInvalid as err:
        if "Empty CSV file" in str(err):
            raise UnreadableUpload("no_rows", "no header and no rows") from err
        raise UnreadableUpload("invalid_header", str(err)) from err
    schema = working_schema(sample.schema)
    text_types = {name: pa.string() for name in schema.names}

    skipped: list[int] = []

    def invalid_row(row) -> str:
        skipped.append(row.number)
        on_rejected(RejectedRow(row.number, "wrong_column_count",
                                f"expected {row.expected_columns} columns, got {row.actual_columns}",
                                (row.text or "")[:RAW_ROW_LIMIT]))
        return "skip"

    # Single-threaded parsing is what makes Arrow report line numbers of bad rows.
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=invalid_row, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=text_types, strings_can_be_null=True),
    )
    next_line = 2  # the header is line 1
    for batch in _checked_csv_batches(reader):
        table = pa.Table.from_batches([batch])
        # Lines of the kept rows: the batch's span minus the rows skipped within it
        # (exact unless quoted values span lines).
        span = range(next_line, next_line + table.num_rows + len(skipped))
        dropped = set(skipped)
        lines = pa.array([n for n in span if n not in dropped][:table.num_rows], pa.int64())
        next_line = span.stop
        skipped.clear()
        typed = _cast_rows(table, schema, lines, on_rejected)
        if typed.num_rows:
            yield typed


def _checked_csv_batches(reader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as err:
            raise UnreadableUpload("invalid_encoding" if "UTF8" in str(err) else "malformed_csv", str(err)) from err
        yield batch


def _whole_lines(data: bytes) -> bytes:
    cut = data.rfind(b"\n")
    return data if cut < 0 else data[:cut + 1]


def _cast_rows(table: pa.Table, schema: pa.Schema, lines: pa.Array, on_rejected: OnRejected) -> pa.Table:
    """Cast text columns to `schema`; rows with a value that will not cast are rejected."""
    bad = pa.array([False] * table.num_rows)
    reasons: dict[int, str] = {}
    for field in schema:
        if pa.types.is_string(field.type):
            continue
        col = table.column(field.name)
        try:
            col.cast(field.type)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        # Rare path: find the values that do not cast, one by one.
        for i, value in enumerate(col.to_pylist()):
            if value is None or i in reasons:
                continue
            try:
                pa.array([value]).cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                reasons[i] = f"column {field.name!r}: {value[:200]!r} is not {field.type}"
        bad = pc.or_(bad, pa.array([i in reasons for i in range(table.num_rows)]))
    if reasons:
        line_list = lines.to_pylist()
        for i, detail in sorted(reasons.items()):
            raw = ",".join("" if v is None else str(v) for v in table.slice(i, 1).to_pylist()[0].values())
            on_rejected(RejectedRow(line_list[i], "type_mismatch", detail, raw[:RAW_ROW_LIMIT]))
        table = table.filter(pc.invert(bad))
    columns = [table.column(f.name).cast(f.type) for f in schema]
    return normalise(pa.Table.from_arrays(columns, names=schema.names), schema)


# -- Parquet ---------------------------------------------------------------------------


def _parquet_tables(path: Path, gzipped: bool) -> Iterator[pa.Table]:
    if gzipped:
        raise UnreadableUpload("unsupported_format", "gzip around Parquet; Parquet compresses its own pages")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-4, io.SEEK_END) if path.stat().st_size >= 8 else None
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise UnreadableUpload("unreadable_parquet", "missing Parquet magic bytes (not Parquet, or truncated)")
    try:
        parquet = pq.ParquetFile(path)
        schema = working_schema(parquet.schema_arrow)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield normalise(pa.Table.from_batches([batch]), schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        raise UnreadableUpload("unreadable_parquet", str(err)) from err


_DONE = object()


def read_ahead(tables: Iterator[pa.Table], depth: int = 1) -> Iterator[pa.Table]:
    """Run a table iterator in its own thread, `depth` tables ahead of the consumer, so
    that stages overlap: parsing (Arrow) with the refinement, and the refinement's first
    half (row hashes, validation) with its second (pseudonyms, near-duplicates); most of
    each releases the GIL. Exceptions reach the consumer where the table would have."""
    pending: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for table in tables:
                while not stop.is_set():
                    try:
                        pending.put(table, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            pending.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            pending.put(err)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := pending.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early (an error downstream): let the producer end,
        while thread.is_alive():  # also if it is blocked handing over its last item
            try:
                pending.get_nowait()
            except queue.Empty:
                # Returns as soon as the producer ends: a get(timeout=0.1) here cost every
                # stream 100 ms after its last table (~0.2 s per small upload).
                thread.join(timeout=0.1)
        thread.join()

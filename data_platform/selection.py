"""Rows of Arrow tables selected into buffers allocated once, of the exact size.

Arrow's filter and take build a string column's values with a growing builder: every
growth copies what was written into a new allocation, and those are pages never touched
before, faulted in and zeroed by the kernel. Filtering the benchmark's text column table
by table came out of ~0.8 fresh bytes per byte kept (1 GB of JSON Lines: ~79k page
faults for that column alone, a third of the ingestion's). Here the kept values'
lengths are summed first, the data buffer is allocated at that size (memory the
allocator has just had back, in the steady state), and `_native/select_kernel.c` copies
the values in, a run of consecutive rows at a time. Other columns are Arrow's to
filter: their output size is known from the row count.
"""

import numpy as np
import pyarrow as pa

from data_platform._native import select_kernel

_STRING_TYPES = (pa.types.is_string, pa.types.is_binary, pa.types.is_large_string, pa.types.is_large_binary)


def filter_rows(table: pa.Table, keep: np.ndarray) -> pa.Table:
    """`table.filter(keep)` for a numpy boolean mask (the table itself if it keeps all)."""
    if keep.all():
        return table
    rows, mask = np.flatnonzero(keep), pa.array(keep, pa.bool_())
    return pa.Table.from_arrays([filter_column(column, keep, rows, mask) for column in table.columns],
                                schema=table.schema)


def filter_column(column: pa.Array | pa.ChunkedArray, keep: np.ndarray, rows: np.ndarray | None = None,
                  mask: pa.Array | None = None) -> pa.Array | pa.ChunkedArray:
    """`column.filter(keep)` for a numpy boolean mask (`rows`, `mask`: its positions and
    its Arrow array, if the caller has them)."""
    if not _is_string(column.type) or column.null_count == len(column):  # all null: nothing to copy
        return column.filter(pa.array(keep, pa.bool_()) if mask is None else mask)
    return take_strings(column, np.flatnonzero(keep) if rows is None else rows)


def take_strings(column: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """`column.take(rows)` for a string or binary column: one array, its data buffer of
    the exact size (past 2 GB of values in a 32-bit-offset type, Arrow's chunked take).
    `rows` ascending, as from a mask."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    kind = column.type
    large = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
    width = 8 if large else 4
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    n = len(rows)
    starts = np.cumsum([0] + [len(c) for c in chunks])
    bounds = np.searchsorted(rows, starts)
    pieces = []  # (chunk, its rows as slots of its buffers)
    total = 0
    for i, chunk in enumerate(chunks):
        part = rows[bounds[i]:bounds[i + 1]]
        if not len(part):
            continue
        slots = part - starts[i] + chunk.offset
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64 if large else np.int32)
        total += int((offsets[slots + 1] - offsets[slots]).sum(dtype=np.int64))
        pieces.append((chunk, slots))
    if not large and total > np.iinfo(np.int32).max:  # more than one string array holds: Arrow splits it
        return column.take(pa.array(rows))
    out_offsets = pa.allocate_buffer((n + 1) * width)
    np.frombuffer(out_offsets, dtype=np.int64 if large else np.int32)[0] = 0
    out_data = pa.allocate_buffer(total)
    at, done = 0, 0
    with memoryview(out_offsets) as offsets_view:
        for chunk, slots in pieces:
            _, offsets, data = chunk.buffers()
            at = select_kernel.gather_strings(offsets, data if data is not None else b"", large, slots,
                                              offsets_view[(1 + done) * width:], out_data, at)
            done += len(slots)
    validity, nulls = None, 0
    if any(c.null_count for c, _ in pieces):
        valid = np.concatenate([c.is_valid().to_numpy(zero_copy_only=False)[s - c.offset] for c, s in pieces])
        nulls = n - int(valid.sum())
        validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(kind, n, [validity, out_offsets, out_data], null_count=nulls)


def _is_string(kind: pa.DataType) -> bool:
    return any(test(kind) for test in _STRING_TYPES)

"""Rows selected into exactly sized buffers (`data_platform.selection`,
`_native/select_kernel.c`) must be Arrow's filter, value for value."""

import numpy as np
import pyarrow as pa
import pytest

from data_platform._native import select_kernel
from data_platform.selection import filter_column, filter_rows, take_strings

STRING_TYPES = [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()]


def values(rng, n):
    return [None if rng.random() < 0.1 else "é" * int(rng.integers(0, 4)) + "x" * int(rng.integers(0, 40))
            for _ in range(n)]


@pytest.mark.parametrize("kind", STRING_TYPES, ids=str)
@pytest.mark.parametrize("share", [0.0, 0.02, 0.5, 0.97, 1.0])
def test_a_filtered_string_column_is_arrows_with_its_data_exactly_sized(kind, share):
    """Chunks of several sizes (one empty, one a slice with an offset), nulls, empty
    strings; kept rows alone, in runs, or all of them."""
    rng = np.random.default_rng(int(share * 100))
    vals = values(rng, 1500)
    if kind in (pa.binary(), pa.large_binary()):
        vals = [None if v is None else v.encode() for v in vals]
    column = pa.chunked_array([pa.array(vals[:700], kind), pa.array([], kind), pa.array(vals[700:701], kind),
                               pa.array(vals[701:], kind).slice(9)])
    keep = rng.random(len(column)) < share
    got = take_strings(column, np.flatnonzero(keep))
    got.validate(full=True)
    expected = column.filter(pa.array(keep)).combine_chunks()
    assert got.type == kind and got.equals(expected)
    kept = [v for v, k in zip(column.to_pylist(), keep) if k and v is not None]
    assert got.buffers()[2].size == sum(len(v.encode() if isinstance(v, str) else v) for v in kept)
    assert got.null_count == expected.null_count


def test_a_filtered_table_is_arrows_and_a_mask_keeping_all_returns_the_table():
    rng = np.random.default_rng(5)
    n = 2000
    table = pa.table({"id": pa.array(np.arange(n)), "text": pa.array(values(rng, n)),
                      "when": pa.array(np.arange(n), pa.timestamp("us", tz="UTC")),
                      "stand_in": pa.nulls(n, pa.string()), "flag": pa.array(rng.random(n) < 0.5)})
    keep = rng.random(n) < 0.9
    got = filter_rows(table, keep)
    assert got.schema == table.schema and got.equals(table.filter(pa.array(keep)))
    assert filter_rows(table, np.ones(n, dtype=bool)) is table
    assert filter_column(table.column("stand_in"), keep).null_count == int(keep.sum())


def test_the_kernel_refuses_rows_or_outputs_outside_the_buffers():
    array = pa.array(["ab", "cde", None, "f"])
    _, offsets, data = array.buffers()
    out_offsets, out_data = bytearray(16), bytearray(6)

    def gather(rows, out=out_data, out_at=0):
        return select_kernel.gather_strings(offsets, data, False, np.array(rows, np.int64), out_offsets, out, out_at)

    assert gather([0, 1, 3]) == 6 and bytes(out_data) == b"abcdef"
    assert np.frombuffer(out_offsets, np.int32)[:3].tolist() == [2, 5, 6]
    with pytest.raises(ValueError, match="outside"):
        gather([4])
    with pytest.raises(ValueError, match="outside"):
        gather([-1])
    with pytest.raises(ValueError, match="too small"):
        gather([0, 1, 3], out=bytearray(5))
    with pytest.raises(ValueError, match="too small"):
        gather([1], out_at=4)
    bad = np.array([0, 2, 1, 4, 9], np.int32).tobytes()  # offsets that decrease, then leave the data
    with pytest.raises(ValueError, match="offsets"):
        select_kernel.gather_strings(bad, data, False, np.array([1], np.int64), out_offsets, out_data, 0)
    with pytest.raises(ValueError, match="offsets"):
        select_kernel.gather_strings(bad, data, False, np.array([3], np.int64), out_offsets, out_data, 0)

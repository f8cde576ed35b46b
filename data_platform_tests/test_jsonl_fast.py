"""The compiled JSON Lines fast path (`readers._FlatRows`, `_native/jsonl_kernel.c`) must
build exactly the table Arrow's reader builds, or give the block back (None) to it."""

import json
import math
import random
import struct
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from data_platform import readers
from data_platform._native import jsonl_kernel
from data_platform.readers import _FlatRows, _parse_json, read_tables

SCHEMA = pa.schema([("s", pa.string()), ("i", pa.int64()), ("d", pa.float64()), ("b", pa.bool_()),
                    ("t", pa.string())])


def arrow_table(block: bytes, schema: pa.Schema) -> pa.Table | None:
    try:
        return _parse_json(block, schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def assert_same(fast: pa.Table, expected: pa.Table) -> None:
    fast.validate(full=True)
    assert fast.schema == expected.schema
    assert fast.equals(expected), (fast.to_pylist()[:5], expected.to_pylist()[:5])
    for name in fast.column_names:  # doubles bit for bit (-0.0 is not 0.0)
        if pa.types.is_floating(fast.schema.field(name).type):
            a = fast.column(name).combine_chunks().fill_null(1.5).to_numpy().view(np.int64)
            b = expected.column(name).combine_chunks().fill_null(1.5).to_numpy().view(np.int64)
            assert (a == b).all(), name


def check(block: bytes, schema: pa.Schema = SCHEMA) -> pa.Table | None:
    """The fast table (asserted equal to Arrow's) or None (Arrow's then stands)."""
    fast = _FlatRows(schema).parse(block)
    if fast is not None:
        expected = arrow_table(block, schema)
        assert expected is not None, f"fast path took a block Arrow refuses: {block[:200]!r}"
        assert_same(fast, expected)
    return fast


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


ACCEPTED = {
    "plain": lines('{"s": "a", "i": 1, "d": 1.5, "b": true, "t": "x"}', '{"s": "b", "i": -2, "d": -0.25, "b": false, "t": "y"}'),
    "nulls and missing keys": lines('{"s": null, "i": null}', '{}', '{"d": null, "b": null, "t": null}', '{"t": "only"}'),
    "keys in any order": lines('{"t": "x", "b": true, "d": 2, "i": 3, "s": "z"}', '{"i": 4, "s": "w"}'),
    "whitespace and CRLF": b'  {  "s" :\t"a" ,"i":1 }  \r\n\t{"s":"b"}\r\n',
    "no final newline": b'{"s": "a"}\n{"s": "b"}',
    "escapes": lines(r'{"s": "q\" b\\ s\/ \b\f\n\r\t end"}', r'{"s": "\u00e9\u20ac\ud83d\ude00 \u0041"}'),
    "raw unicode": lines('{"s": "héllo wörld ñ 日本語 😀 \u2028"}', '{"t": "Ελληνικά"}'),
    "integers": lines('{"i": 0}', '{"i": 9223372036854775807}', '{"i": -9223372036854775808}', '{"i": 42}'),
    "doubles": lines('{"d": 0}', '{"d": -0.0}', '{"d": 1e308}', '{"d": 2.2250738585072014e-308}',
                     '{"d": 0.1}', '{"d": 123456789012345678901234567890}', '{"d": 1.7976931348623157e308}',
                     '{"d": 3.141592653589793238462643383279}', '{"d": 1E-5}', '{"d": 5e+22}', '{"d": 9007199254740993}',
                     '{"d": 0.30000000000000004}', '{"d": -12}', '{"d": 1.0e-22}', '{"d": 4.35e-10}'),
    "long strings": lines(json.dumps({"s": "x" * 100_000, "t": "é" * 50_000})),
    "empty strings": lines('{"s": "", "t": ""}', '{"s": "a"}'),
}

REFUSED = {
    "unexpected key": lines('{"s": "a", "other": 1}'),
    "duplicate key": lines('{"s": "a", "s": "b"}'),
    "blank line": b'{"s": "a"}\n\n{"s": "b"}\n',
    "blank line of spaces": b'{"s": "a"}\n   \n',
    "not an object": lines('["a"]'),
    "nested value": lines('{"s": {"x": 1}}'),
    "number in a string column": lines('{"s": 1}'),
    "string in an integer column": lines('{"i": "1"}'),
    "fraction in an integer column": lines('{"i": 1.0}'),
    "exponent in an integer column": lines('{"i": 1e3}'),
    "integer overflow": lines('{"i": 9223372036854775808}'),
    "negative overflow": lines('{"i": -9223372036854775809}'),
    "leading zero": lines('{"i": 01}'),
    "NaN": lines('{"d": NaN}'),
    "Infinity": lines('{"d": Infinity}'),
    "double overflow": lines('{"d": 1e400}'),
    "subnormal double": lines('{"d": 4.9e-324}'),
    "bare point": lines('{"d": 1.}'),
    "truthy string": lines('{"b": "true"}'),
    "lone high surrogate": lines(r'{"s": "\ud83d x"}'),
    "lone low surrogate": lines(r'{"s": "\ude00"}'),
    "escaped NUL": lines(r'{"s": "a\u0000b"}'),
    "bad escape": lines(r'{"s": "\x41"}'),
    "raw control character": b'{"s": "a\x01b"}\n',
    "invalid UTF-8": b'{"s": "a\xff"}\n',
    "overlong UTF-8": b'{"s": "\xc0\xaf"}\n',
    "UTF-8 surrogate": b'{"s": "\xed\xa0\x80"}\n',
    "truncated UTF-8": b'{"s": "\xe2\x82"}\n',
    "unterminated string": lines('{"s": "abc'),
    "trailing garbage": lines('{"s": "a"} x'),
    "two objects on a line": lines('{"s": "a"}{"s": "b"}'),
    "missing colon": lines('{"s" "a"}'),
    "trailing comma": lines('{"s": "a",}'),
    "escaped key": lines(r'{"\u0073": "a"}'),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_fast_path_takes_flat_rows_and_builds_arrows_table(name):
    assert check(ACCEPTED[name]) is not None


@pytest.mark.parametrize("name", REFUSED)
def test_fast_path_gives_back_what_it_does_not_take(name):
    assert _FlatRows(SCHEMA).parse(REFUSED[name]) is None


def test_a_wrong_newline_count_gives_the_block_back():
    block = lines('{"s": "a"}', '{"s": "b"}', '{"s": "c"}')
    assert jsonl_kernel.count_lines(block) == 3 and jsonl_kernel.count_lines(block[:-1]) == 2
    flat = _FlatRows(SCHEMA)
    assert flat.parse(block, 3).num_rows == 3
    assert flat.parse(block, 2) is None and flat.parse(block, 4) is None
    assert flat.parse(block[:-1], 2).num_rows == 3  # the last line without its newline


def test_newlines_are_counted_and_found_at_every_position_of_their_64_byte_windows():
    """The kernel finds newlines 64 bytes at a time (16 per vector compare, summed every
    255 vectors): lines of every length from 0 to 130 bytes, blocks ending anywhere, and
    runs of newlines long enough to fill the per-lane counts."""
    rng = random.Random(7)
    for size in [*range(0, 140), 4079, 4080, 4081, 70_000]:
        buf = bytes(rng.choice(b"ab\n") for _ in range(size))
        assert jsonl_kernel.count_lines(buf) == buf.count(b"\n"), size
    assert jsonl_kernel.count_lines(b"\n" * 100_003) == 100_003
    flat = _FlatRows(SCHEMA)
    rows = [json.dumps({"s": "x" * n, "i": n}, separators=(",", ":")) for n in range(0, 121)]
    rng.shuffle(rows)
    block = "\n".join(rows).encode()  # the last line without its newline
    for cut in range(0, len(block), 37):  # blocks ending at every offset of a window
        head = block[:block.rfind(b"\n", 0, cut + 1) + 1] if cut else block
        if head:
            assert_same(flat.parse(head), arrow_table(head, SCHEMA))


def test_names_with_quotes_or_backslashes_are_matched_only_through_their_escapes():
    """A key's raw bytes are compared in place with the expected name only where the
    name holds no quote, backslash or control byte; those names' keys are escaped in
    JSON, so the kernel gives their blocks back and Arrow reads them."""
    schema = pa.schema([("a\\", pa.int64()), ('q"', pa.int64()), ("s", pa.string())])
    block = lines(json.dumps({"a\\": 1, 'q"': 2, "s": "x"}), json.dumps({"s": "y"}))
    assert _FlatRows(schema).parse(block) is None
    assert arrow_table(block, schema).to_pylist() == [{"a\\": 1, 'q"': 2, "s": "x"}, {"a\\": None, 'q"': None, "s": "y"}]
    plain = lines(json.dumps({"s": "y"}), '{"s": "z"}')
    assert check(plain, schema).column("s").to_pylist() == ["y", "z"]


def test_string_buffers_grow_past_a_small_first_reservation():
    flat = _FlatRows(SCHEMA)
    block = lines(*(json.dumps({"s": f"{i}-" + "y" * (i % 300), "t": "é" * (i % 50)}) for i in range(2000)))
    flat.sizes = (64,) * len(SCHEMA)
    fast = flat.parse(block)
    assert_same(fast, arrow_table(block, SCHEMA))
    assert flat.sizes[0] >= fast.column("s").chunk(0).buffers()[2].size  # the next block reserves what this used


def test_many_columns_in_any_order():
    """Hundreds of keys per row in a different order each (found through the names' hash
    table), names that prefix one another, non-ASCII names, keys left out."""
    rng = random.Random(12)
    names = [f"c{i}" for i in range(150)] + [f"c{i}x" for i in range(100)] + ["é", "ée", "日本", "c", "x" * 80]
    kinds = [pa.string(), pa.int64(), pa.float64(), pa.bool_()]
    schema = pa.schema([(n, kinds[i % 4]) for i, n in enumerate(names)])
    values = {pa.string(): lambda: json.dumps(_random_string(rng)), pa.int64(): lambda: str(rng.randrange(-99, 99)),
              pa.float64(): lambda: _random_double(rng), pa.bool_(): lambda: rng.choice(["true", "false", "null"])}
    rows = []
    for _ in range(300):
        fields = [f for f in schema if rng.random() < 0.9]
        rng.shuffle(fields)
        rows.append("{" + ", ".join(f"{json.dumps(f.name, ensure_ascii=False)}: {values[f.type]()}" for f in fields) + "}")
    assert check(lines(*rows), schema) is not None


def test_a_file_the_fast_path_keeps_giving_back_is_left_to_arrow(tmp_path, monkeypatch):
    """Every block ends with a row the kernel does not take (an escaped key): after a few
    blocks it is not asked again, and the tables are Arrow's all along."""
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 16)
    rows = [json.dumps({"s": f"v{i}", "i": i}) if i % 300 else r'{"\u0073": "escaped", "i": 0}' for i in range(1, 12_000)]
    path = tmp_path / "a.jsonl"
    path.write_bytes(lines(*rows))
    calls = []
    original = jsonl_kernel.parse
    monkeypatch.setattr(jsonl_kernel, "parse", lambda *a: calls.append(1) or original(*a))
    table = pa.concat_tables(read_tables(path, "a.jsonl", lambda r: None))
    assert table.num_rows == len(rows) and table.column("s").to_pylist()[:2] == ["v1", "v2"]
    assert 4 <= len(calls) <= 6, len(calls)  # of ~17 blocks


def test_schema_with_other_types_is_left_to_arrow():
    schema = pa.schema([("s", pa.string()), ("tags", pa.list_(pa.string()))])
    assert not _FlatRows(schema).usable
    assert _FlatRows(schema).parse(lines('{"s": "a"}')) is None


TIMESTAMPS = pa.schema([("s", pa.string()), ("at", pa.timestamp("us", tz="UTC")), ("i", pa.int64()),
                        ("day", pa.timestamp("us", tz="UTC"))])


def test_timestamps_are_converted_by_arrow_from_their_raw_tokens():
    """Timestamp columns go to Arrow's reader as a side JSON Lines of their raw tokens:
    every form Arrow takes (offsets, fractions, a space, dates alone, escapes), nulls and
    missing keys, in any key order, give Arrow's table."""
    block = lines(
        '{"s": "a", "at": "2024-08-16T00:33:43Z", "i": 1, "day": "2024-08-16"}',
        '{"at": "2024-08-16 00:33:43", "s": "b"}',
        '{"at": "2024-02-29T23:59:59.123456+02:00", "day": null}',
        r'{"day": "2024-01-01T00:00:00\u005a", "at": null, "s": "q\"uote"}',
        '{"i": 5}',
        '{"at": "1970-01-01T00:00:00.5-11:30", "day": "2000-12-31T23:59", "i": -3}',
    )
    table = check(block, TIMESTAMPS)
    assert table is not None and table.column("at").null_count == 2


@pytest.mark.parametrize("row", ['{"at": "not a date"}', '{"at": "2024-02-30T00:00:00Z"}', '{"at": 1723768423}',
                                 '{"at": true}', '{"at": "2024-08-16T00:33:43Z" "x"}'])
def test_a_timestamp_arrow_refuses_gives_the_block_back(row):
    block = lines('{"s": "a", "at": "2024-08-16T00:33:43Z"}', row)
    assert _FlatRows(TIMESTAMPS).parse(block) is None


def test_damaged_timestamp_blocks_are_never_taken_differently():
    rng = random.Random(8)
    taken = refused = 0
    for _ in range(600):
        rows = [json.dumps({"at": f"20{rng.randrange(10, 30)}-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T0{rng.randrange(10)}:30:00Z",
                            "s": "x", "day": "2024-05-06"}) for _ in range(rng.randrange(1, 5))]
        data = bytearray(lines(*rows))
        for _ in range(rng.randrange(1, 3)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.choice(b'"\\{}:,0123456789-TZ+ \n')
            else:
                del data[at]
        if check(bytes(data), TIMESTAMPS) is None:
            refused += 1
        else:
            taken += 1
    assert taken > 50 and refused > 50, (taken, refused)


def test_random_timestamps_equal_arrows():
    rng = random.Random(21)
    rows = []
    for _ in range(3000):
        when = f"{rng.randrange(1900, 2100):04d}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        time = rng.choice(["", "minutes", "seconds", "fraction"])
        if time:
            when += f"{rng.choice('T ')}{rng.randrange(24):02d}:{rng.randrange(60):02d}"
        if time in ("seconds", "fraction"):
            when += f":{rng.randrange(60):02d}" + (f".{rng.randrange(10**6):06d}" if time == "fraction" else "")
        if time:
            when += rng.choice(["", "Z", "+05:30", "-0800"])
        row = {"at": when, "i": rng.randrange(100)}
        if rng.random() < 0.2:
            row["day"] = when[:10]
        rows.append(json.dumps(row))
    assert arrow_table(lines(*rows), TIMESTAMPS) is not None  # every form is one Arrow takes
    assert check(lines(*rows), TIMESTAMPS) is not None


def _random_string(rng: random.Random) -> str:
    alphabet = ["a", "Z", " ", "\"", "\\", "/", "\n", "\t", "\x7f", "é", "€", "😀", "\u2028", "\x1f", "0", "{", "}", ","]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def _random_double(rng: random.Random) -> str:
    choice = rng.randrange(5)
    if choice == 0:  # any finite bit pattern, as Python writes it (shortest repr)
        while True:
            value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if math.isfinite(value) and (value == 0 or abs(value) >= sys.float_info.min):
                return repr(value)
    if choice == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 20)}f}"
    if choice == 2:
        return f"{rng.uniform(-10, 10):.{rng.randrange(1, 25)}e}".replace("e", rng.choice(["e", "E"]))
    if choice == 3:
        return str(rng.randrange(-10**25, 10**25))
    # normal doubles only: subnormal and overflowing ones are left to Arrow (see REFUSED)
    return f"{rng.randrange(0, 10**rng.randrange(1, 20))}.{rng.randrange(0, 10**rng.randrange(1, 20))}e{rng.randrange(-280, 280)}"


def test_short_decimals_round_as_arrow_rounds():
    """Prices, scores and coordinates: the compiled path's exact shortcut for at most
    19 significant digits and powers of ten up to 1e22."""
    rng = random.Random(3)
    values = []
    for _ in range(20_000):
        digits = rng.randrange(1, 10)
        whole = rng.randrange(0, 10 ** rng.randrange(0, 8))
        values.append(f"{rng.choice(['', '-'])}{whole}.{rng.randrange(0, 10 ** digits):0{digits}d}"
                      + rng.choice(["", f"e{rng.randrange(-15, 15)}"]))
    assert check(lines(*(f'{{"d": {v}}}' for v in values))) is not None


def _random_row(rng: random.Random) -> str:
    row = {}
    for name, kind in (("s", "s"), ("i", "i"), ("d", "d"), ("b", "b"), ("t", "s")):
        if rng.random() < 0.15:
            continue  # missing
        if rng.random() < 0.1:
            row[name] = None
        elif kind == "s":
            row[name] = _random_string(rng)
        elif kind == "i":
            row[name] = rng.choice([0, 1, -1, 2**63 - 1, -2**63, rng.randrange(-2**63, 2**63)])
        elif kind == "b":
            row[name] = rng.random() < 0.5
    keys = list(row)
    rng.shuffle(keys)
    parts = []
    for key in keys:
        value = row[key]
        text = _random_double(rng) if key == "d" and value is not None else json.dumps(
            value, ensure_ascii=rng.random() < 0.5)
        parts.append(f'{" " * rng.randrange(2)}"{key}"{" " * rng.randrange(2)}:{" " * rng.randrange(2)}{text}')
    return "{" + ",".join(parts) + "}"


def test_random_rows_are_taken_and_equal_arrows():
    rng = random.Random(20261201)
    for _ in range(60):
        block = lines(*(_random_row(rng) for _ in range(rng.randrange(1, 200))))
        assert check(block) is not None, block[:300]


def test_randomly_damaged_blocks_are_never_taken_differently():
    """Bytes flipped, dropped or inserted: whatever the fast path still takes, Arrow takes
    too, with the same table; most damaged blocks are given back."""
    rng = random.Random(7)
    taken = refused = 0
    for _ in range(1500):
        data = bytearray(lines(*(_random_row(rng) for _ in range(rng.randrange(1, 6)))))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[at] = rng.choice(b'"\\{}[],:0123456789.eE-+ntfaluse \n\r\t\x00\x80\xc3\xa9\xff')
            elif op == 1:
                del data[at]
            else:
                data.insert(at, rng.choice(b'"\\{},:0-.e \n'))
        if check(bytes(data)) is None:
            refused += 1
        else:
            taken += 1
    assert taken > 100 and refused > 100, (taken, refused)


@pytest.mark.parametrize("bad_rate, created_at", [("0.01", pa.string()), ("0", pa.timestamp("us", tz="UTC"))])
def test_generated_uploads_take_the_fast_path_through_the_reader(tmp_path, monkeypatch, bad_rate, created_at):
    """The generator's rows: with malformed timestamps in the first block `created_at` is
    text; without, a timestamp column (its tokens converted by Arrow)."""
    out = tmp_path / "gen.jsonl"
    from data_platform_tests.test_neardup import GEN_DATA

    subprocess.run([sys.executable, str(GEN_DATA), "--rows", "30000", "--format", "jsonl", "--out", str(out), "--seed", "5",
                    "--bad-rate", bad_rate], check=True, capture_output=True)
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 20)
    calls = []
    original = jsonl_kernel.parse

    def counted(*args):
        result = original(*args)
        calls.append(result is not None)
        return result
    monkeypatch.setattr(jsonl_kernel, "parse", counted)
    fast = pa.concat_tables(read_tables(out, "gen.jsonl", lambda r: None))
    assert len(calls) >= 5 and all(calls), calls  # every block after the first, none given back
    assert fast.schema.field("created_at").type == created_at
    monkeypatch.setattr(_FlatRows, "parse", lambda self, block, newlines=-1: None)
    assert_same(fast, pa.concat_tables(read_tables(out, "gen.jsonl", lambda r: None)))

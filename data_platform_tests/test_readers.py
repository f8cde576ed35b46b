"""The streaming readers on their own: formats, types, rejected rows, broken files."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest

from data_platform import readers
from data_platform.readers import UnreadableUpload, read_tables
from data_platform_tests.support import jsonl, parquet_bytes


def read(tmp_path: Path, name: str, data: bytes, **kwargs):
    path = tmp_path / "upload"
    path.write_bytes(data)
    rejected = []
    tables = list(read_tables(path, name, rejected.append))
    table = pa.concat_tables(tables) if tables else None
    return table, rejected


ROWS = [{"id": i, "name": f"n{i}", "score": i / 2, "at": "2026-01-02T03:04:05Z"} for i in range(50)]


@pytest.mark.parametrize("name,data", [
    ("a.jsonl", jsonl(ROWS)),
    ("a.ndjson", jsonl(ROWS)),
    ("a.jsonl.gz", gzip.compress(jsonl(ROWS))),
    ("a.csv", ("id,name,score,at\n" + "".join(f"{r['id']},{r['name']},{r['score']},{r['at']}\n"
                                              for r in ROWS)).encode()),
    ("a.csv.gz", gzip.compress(("id,name,score,at\n" + "".join(f"{r['id']},{r['name']},{r['score']},{r['at']}\n"
                                                               for r in ROWS)).encode())),
    ("a.parquet", parquet_bytes(pa.Table.from_pylist(ROWS))),
])
def test_formats_read_with_inferred_normalised_types(tmp_path, name, data):
    table, rejected = read(tmp_path, name, data)
    assert rejected == []
    assert table.num_rows == 50
    assert table.column("id").to_pylist() == list(range(50))
    assert pa.types.is_integer(table.schema.field("id").type)
    assert pa.types.is_floating(table.schema.field("score").type)
    if not name.startswith("a.parquet"):
        assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")


def test_jsonl_bad_lines_are_rejected_with_line_numbers(tmp_path):
    lines = [json.dumps(r) for r in ROWS[:5]]
    lines[1] = '{"id": 1, "name": "broken'                                   # malformed JSON
    lines[3] = '[1, 2, 3]'                                                   # not an object
    data = ("\n".join(lines) + "\n").encode()
    table, rejected = read(tmp_path, "a.jsonl", data)
    assert table.column("id").to_pylist() == [0, 2, 4]
    assert [(r.line, r.reason) for r in rejected] == [(2, "malformed_json"), (4, "not_an_object")]
    assert rejected[0].raw.startswith('{"id": 1')


def test_jsonl_rows_that_break_the_inferred_schema_later_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_BYTES", 4096)  # several blocks from a small file
    rows = [{"id": i, "name": f"n{i}"} for i in range(400)]
    text = [json.dumps(r) for r in rows]
    text[300] = json.dumps({"id": "three hundred", "name": "x"})
    text[350] = json.dumps({"id": 350, "name": "y", "surprise": True})
    table, rejected = read(tmp_path, "a.jsonl", ("\n".join(text) + "\n").encode())
    assert table.num_rows == 398
    assert [(r.line, r.reason) for r in rejected] == [(301, "type_mismatch"), (351, "unexpected_field")]
    assert 300 not in table.column("id").to_pylist()


def test_csv_bad_rows_are_rejected_and_good_rows_kept(tmp_path, monkeypatch):
    # Types come from the first block; a value that breaks them later rejects its row.
    monkeypatch.setattr(readers, "BLOCK_BYTES", 4096)
    good = "".join(f"{i},{i}.5\n" for i in range(1000))
    data = ("id,amount\n" + good + "1000,2.5,extra\nthree,4.5\n1001,5.5\n").encode()
    table, rejected = read(tmp_path, "a.csv", data)
    assert table.column("id").to_pylist() == list(range(1000)) + [1001]
    assert pa.types.is_integer(table.schema.field("id").type)
    assert sorted((r.line, r.reason) for r in rejected) == [(1002, "wrong_column_count"), (1003, "type_mismatch")]
    assert "three" in rejected[-1].raw


def test_csv_value_in_first_block_that_is_not_a_number_makes_the_column_text(tmp_path):
    table, rejected = read(tmp_path, "a.csv", b"id,amount\n1,2.5\nthree,4.5\n")
    assert rejected == [] and table.column("id").to_pylist() == ["1", "three"]


def test_csv_with_quoted_newlines(tmp_path):
    data = b'id,text\n1,"line one\nline two"\n2,plain\n'
    table, rejected = read(tmp_path, "a.csv", data)
    assert rejected == [] and table.column("text").to_pylist() == ["line one\nline two", "plain"]


@pytest.mark.parametrize("name,data,reason", [
    ("a.jsonl", b"", "empty_file"),
    ("a.xlsx", b"PK\x03\x04", "unsupported_format"),
    ("README", b"hello", "unsupported_format"),
    ("a.jsonl", b"\x00\x01\x02binary\x00", "binary_content"),
    ("a.csv", "id,name\n1,é\n".encode("utf-16"), "invalid_encoding"),
    ("a.csv", "id,name\n1,caf\xe9 cr\xe8me\n2,b\n".encode("latin-1"), "invalid_encoding"),
    ("a.parquet", parquet_bytes(pa.table({"a": [1, 2]}))[:-30], "unreadable_parquet"),
    ("a.parquet", b"id,name\n1,2\n", "unreadable_parquet"),
    ("a.jsonl.gz", b"not gzip at all", "corrupt_compression"),
    ("a.jsonl.gz", gzip.compress(jsonl(ROWS))[:-40], "corrupt_compression"),
    ("a.csv", b"a,a\n1,2\n", "invalid_header"),
    ("a.parquet.gz", gzip.compress(b"PAR1"), "unsupported_format"),
])
def test_unreadable_files_raise_with_a_reason(tmp_path, name, data, reason):
    with pytest.raises(UnreadableUpload) as err:
        read(tmp_path, name, data)
    assert err.value.reason == reason
    assert err.value.detail


def test_memory_is_bounded_by_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_BYTES", 64 * 1024)
    data = jsonl([{"id": i, "text": "x" * 100} for i in range(20000)])
    path = tmp_path / "u"
    path.write_bytes(data)
    sizes = [t.nbytes for t in read_tables(path, "a.jsonl", lambda r: None)]
    assert len(sizes) > 20 and max(sizes) < 256 * 1024


def test_line_checks_give_the_same_table_arrow_would(tmp_path, monkeypatch):
    """A later block with bad lines takes the line-by-line path; its good rows must come
    out exactly as Arrow's own parse of them."""
    monkeypatch.setattr(readers, "BLOCK_BYTES", 2048)
    rows = [{"id": i, "score": float(i) + 0.5, "ok": i % 2 == 0, "at": f"2026-01-0{1 + i % 9}T10:00:00Z",
             "tags": ["a", "b"][: i % 3], "meta": {"k": i}} for i in range(200)]
    rows[150]["score"] = 3  # an int in a float column is fine for Arrow too
    text = [json.dumps(r) for r in rows]
    bad = {120: '{"id": "x"}', 130: '{"id": 1, "at": "not a time"}', 140: '{"id": 1, "ok": "yes"}',
           160: '{"id": 1, "meta": {"k": "str"}}', 170: '{"id": 1, "tags": "notalist"}'}
    for i, line in bad.items():
        text[i] = line
    table, rejected = read(tmp_path, "a.jsonl", ("\n".join(text) + "\n").encode())
    assert [(r.line, r.reason) for r in rejected] == [(i + 1, "type_mismatch") for i in sorted(bad)]
    expected, _ = read(tmp_path, "b.jsonl", ("\n".join(t for i, t in enumerate(text) if i not in bad) + "\n").encode())
    assert table.schema == expected.schema
    assert table.to_pylist() == expected.to_pylist()

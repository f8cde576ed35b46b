"""Ingestion core end to end, on a local directory and on the S3 endpoint, with the
catalog on SQLite and on PostgreSQL: what lands, where it goes, and nothing lost."""

import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from data_platform import ingestion
from data_platform.catalog import DELETED, DUPLICATE, FRESH, LANDING, QUARANTINED
from data_platform_tests.support import ingest_everything, jsonl, parquet_bytes, read_data

ROWS = [{"id": i, "email": f"user{i}@example.com", "amount": i * 1.5} for i in range(100)]


def status(catalog, key):
    (upload,) = [u for u in catalog.list_uploads() if u.landing_key == key]
    return upload


def test_upload_becomes_fresh_parquet(store, catalog):
    key = "landing/acme/tickets/2026/batch.jsonl"
    store.put_bytes(key, jsonl(ROWS))
    scan, outcomes, failures = ingest_everything(store, catalog)
    assert scan.registered == 1 and failures == []
    upload = status(catalog, key)
    assert (upload.state, upload.rows, upload.quarantined_rows) == (FRESH, 100, 0)
    assert upload.object_key == f"data/acme/tickets/upload-{upload.id:010d}.parquet"
    stored = read_data(store, upload.object_key).to_pylist()
    # Everything kept, except the email column, detected as personal data and pseudonymised.
    assert [{k: v for k, v in r.items() if k != "email"} for r in stored] == [
        {k: v for k, v in r.items() if k != "email"} for r in ROWS]
    assert all(r["email"].startswith("ps_") and "@" not in r["email"] for r in stored)
    assert len({r["email"] for r in stored}) == 100
    assert json.loads(upload.detail)["pii_detected"] == {"email": "email"}
    assert store.head(key) is None  # the inbox empties
    assert [t["to_state"] for t in catalog.audit_trail(upload.id)] == [LANDING, FRESH]
    import hashlib
    assert upload.sha256 == hashlib.sha256(jsonl(ROWS)).hexdigest()


def test_rejected_rows_are_written_as_json_dumps_writes_them(tmp_path):
    """Each line of rejected_rows.jsonl is what json.dumps(row.as_dict(), ensure_ascii=False)
    gives, for raw text with quotes, backslashes, control characters, non-ASCII, lone
    surrogates escaped in JSON, and none at all."""
    from data_platform.readers import RejectedRow

    raws = ['{"a": "x\\"y"}', "tab\there\nnew line \x00 \x1f \x7f", "ünï 東京 😀", '\\"', "", None,
            json.dumps({"k": "\ud800"}), "\u2028\u2029"]
    rows = [RejectedRow(i + 1, f"reason \"{i}\"", f"detail\\{i}\n", raw) for i, raw in enumerate(raws)]
    rejects = ingestion._Rejects(tmp_path)
    for row in rows:
        rejects(row)
    rejects.close()
    written = (tmp_path / "rejected_rows.jsonl").read_text(encoding="utf-8")
    assert written == "".join(json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in rows)
    # split at "\n" only: U+2028 stays raw in the JSON (ensure_ascii=False) and str.splitlines breaks there
    assert [json.loads(line) for line in written.split("\n")[:-1]] == [r.as_dict() for r in rows]
    assert rejects.count == len(rows) and rejects.samples == [r.as_dict() for r in rows]


def test_bad_rows_go_to_quarantine_with_line_numbers_good_rows_go_on(store, catalog):
    lines = [json.dumps(r) for r in ROWS[:10]]
    lines[4] = "{oops"
    key = "landing/acme/tickets/mixed.jsonl"
    store.put_bytes(key, ("\n".join(lines) + "\n").encode())
    ingest_everything(store, catalog)
    upload = status(catalog, key)
    assert (upload.state, upload.rows, upload.quarantined_rows) == (FRESH, 9, 1)
    prefix = f"quarantine/acme/tickets/upload-{upload.id:010d}/"
    rejected = [json.loads(x) for x in store.get_bytes(prefix + "rejected_rows.jsonl").splitlines()]
    assert rejected == [{"line": 5, "reason": "malformed_json", "detail": rejected[0]["detail"], "raw": "{oops"}]
    report = json.loads(store.get_bytes(prefix + "report.json"))
    assert report["rejected_rows"] == 1 and report["rows_kept"] == 9 and report["whole_file"] is False


BROKEN = [
    ("empty.jsonl", b"", "empty_file"),
    ("sheet.xlsx", b"PK\x03\x04 spreadsheet", "unsupported_format"),
    ("noextension", b"a,b\n1,2\n", "unsupported_format"),
    ("binary.jsonl", bytes(range(256)) * 4, "binary_content"),
    ("utf16.csv", "id,name\n1,Zoë\n".encode("utf-16"), "invalid_encoding"),
    ("latin1.csv", "id,name\n1,Zoë Müller\n".encode("latin-1"), "invalid_encoding"),
    ("truncated.parquet", parquet_bytes(pa.table({"a": list(range(1000))}))[:-50], "unreadable_parquet"),
    ("renamed.parquet", b"id,name\n1,2\n", "unreadable_parquet"),
    ("fake.jsonl.gz", b"plain text, not gzip", "corrupt_compression"),
    ("cut.jsonl.gz", gzip.compress(jsonl(ROWS))[:-60], "corrupt_compression"),
    ("header_only.csv", b"id,name\n", "no_rows"),
    ("blank_lines.jsonl", b"\n\n   \n", "no_rows"),
    ("empty_table.parquet", parquet_bytes(pa.table({"a": pa.array([], pa.int64())})), "no_rows"),
    ("all_bad.jsonl", b"{not json\n[1,2]\n\"string\"\n", "no_valid_rows"),
    ("dup_columns.csv", b"id,id\n1,2\n", "invalid_header"),
    ("nameless_column.csv", b"id,,x\n1,2,3\n", "invalid_header"),
    ("double.parquet.gz", gzip.compress(b"PAR1xxxxPAR1"), "unsupported_format"),
    ("array.json", b'[{"id": 1}, {"id": 2}]', "no_valid_rows"),
]


@pytest.mark.parametrize("name,data,reason", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_upload_is_quarantined_whole_with_original_bytes(s3_store, sqlite_catalog, name, data, reason):
    store, catalog = s3_store, sqlite_catalog
    key = f"landing/acme/tickets/{name}"
    store.put_bytes(key, data)
    _, _, failures = ingest_everything(store, catalog)
    assert failures == []
    upload = status(catalog, key)
    assert (upload.state, upload.reason) == (QUARANTINED, reason)
    prefix = f"quarantine/acme/tickets/upload-{upload.id:010d}/"
    assert upload.object_key == prefix
    assert store.get_bytes(f"{prefix}original/{name}") == data  # nothing lost
    report = json.loads(store.get_bytes(prefix + "report.json"))
    assert report["reason"] == reason and report["whole_file"] is True and report["detail"]
    assert report["landing_key"] == key and report["size"] == len(data)
    assert store.head(key) is None
    # The pipeline stays healthy: a good upload right after still ingests.
    store.put_bytes("landing/acme/tickets/good.jsonl", jsonl(ROWS[:3]))
    ingest_everything(store, catalog)
    assert status(catalog, "landing/acme/tickets/good.jsonl").state == FRESH


def test_broken_uploads_on_local_directory_and_postgresql(local_store, postgresql_catalog):
    for name, data, _ in BROKEN:
        local_store.put_bytes(f"landing/acme/tickets/{name}", data)
    ingest_everything(local_store, postgresql_catalog)
    got = {u.landing_key.rsplit("/", 1)[1]: (u.state, u.reason) for u in postgresql_catalog.list_uploads()}
    assert got == {name: (QUARANTINED, reason) for name, _, reason in BROKEN}
    assert [o.key for o in local_store.list("landing/")] == []


def test_same_bytes_twice_become_duplicate_pointing_at_the_first(store, catalog):
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    ingest_everything(store, catalog)
    store.put_bytes("landing/acme/other-dataset/copy.jsonl", jsonl(ROWS))
    store.put_bytes("landing/globex/tickets/a.jsonl", jsonl(ROWS))  # another tenant: not a duplicate
    ingest_everything(store, catalog)
    first = status(catalog, "landing/acme/tickets/a.jsonl")
    dup = status(catalog, "landing/acme/other-dataset/copy.jsonl")
    assert (dup.state, dup.duplicate_of, dup.object_key, dup.reason) == (DUPLICATE, first.id, first.object_key,
                                                                          "duplicate_content")
    assert status(catalog, "landing/globex/tickets/a.jsonl").state == FRESH
    assert not list(store.list("data/acme/other-dataset/"))


def test_same_bytes_in_one_batch_are_ingested_once(store, catalog):
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    store.put_bytes("landing/acme/tickets/b.jsonl", jsonl(ROWS))
    ingest_everything(store, catalog)
    states = sorted(u.state for u in catalog.list_uploads())
    assert states == [DUPLICATE, FRESH]
    assert len(list(store.list("data/acme/tickets/"))) == 1


def test_object_deleted_before_ingestion_is_recorded_not_crashed(store, catalog):
    from data_platform.intake import scan_landing
    from data_platform.ingestion import ingest_pending

    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    scan_landing(store, catalog)
    store.delete("landing/acme/tickets/a.jsonl")
    result = ingest_pending(store, catalog, "acme", "tickets", claimer="r")
    assert result.failures == []
    upload = status(catalog, "landing/acme/tickets/a.jsonl")
    assert (upload.state, upload.reason) == (DELETED, "vanished_before_ingestion")


class ProcessDied(BaseException):
    """Not an Exception: nothing in the code catches it, as with a killed process."""


@pytest.mark.parametrize("crash_at", ["open_read", "data_written", "mark_fresh", "delete_if_unchanged"])
def test_crash_at_each_step_loses_nothing_and_rerun_converges(s3_store, postgresql_catalog, monkeypatch, crash_at):
    """The process dies before reading, after writing data (the data object completed),
    at the commit, or after the commit but before the landing delete. The next tick and
    run converge."""
    import sqlalchemy as sa

    from data_platform.catalog.schema import uploads
    from data_platform.ingestion import ingest_pending
    from data_platform.intake import scan_landing

    store, catalog = s3_store, postgresql_catalog
    key = "landing/acme/tickets/a.jsonl"
    store.put_bytes(key, jsonl(ROWS))
    scan_landing(store, catalog)

    target = catalog if crash_at == "mark_fresh" else store
    method = "open_write" if crash_at == "data_written" else crash_at
    original = getattr(target, method)

    def crash(*args, **kwargs):
        if crash_at != "mark_fresh":
            original(*args, **kwargs)  # the effect happens, then the process dies
        raise ProcessDied(crash_at)

    def open_write(key):
        writer = original(key)
        if key.startswith("data/"):
            commit = writer.commit

            def commit_then_die():
                commit()  # the data object is complete, then the process dies
                raise ProcessDied(crash_at)
            writer.commit = commit_then_die
        return writer

    monkeypatch.setattr(target, method, open_write if crash_at == "data_written" else crash)
    with pytest.raises(ProcessDied):
        ingest_pending(store, catalog, "acme", "tickets", claimer="run-1")
    monkeypatch.setattr(target, method, original)
    # The original bytes are still in landing, or the catalog already says where they went.
    if store.head(key) is not None:
        assert store.get_bytes(key) == jsonl(ROWS)
    else:
        assert status(catalog, key).state == FRESH

    # Time passes: the dead run's lease expires. Then the next tick and run converge.
    with catalog.engine.begin() as conn:
        conn.execute(sa.update(uploads).values(claimed_until=sa.func.now() - sa.text("interval '1 hour'")))
    _, _, failures = ingest_everything(store, catalog, claimer="run-2")
    assert failures == []
    upload = status(catalog, key)
    assert (upload.state, upload.rows) == (FRESH, 100)
    assert store.head(key) is None
    assert [o.key for o in store.list("data/")] == [upload.object_key]
    assert read_data(store, upload.object_key).num_rows == 100
    assert len(catalog.list_uploads()) == 1


def test_upload_that_keeps_failing_is_quarantined_after_max_attempts(local_store, sqlite_catalog, monkeypatch):
    from data_platform.ingestion import ingest_pending
    from data_platform.intake import scan_landing

    local_store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    scan_landing(local_store, sqlite_catalog)
    original = local_store.open_write
    monkeypatch.setattr(local_store, "open_write", lambda *a: (_ for _ in ()).throw(OSError("disk on fire")))
    for _ in range(ingestion.MAX_ATTEMPTS):
        result = ingest_pending(local_store, sqlite_catalog, "acme", "tickets", claimer="r")
        assert len(result.failures) == 1 and "disk on fire" in result.failures[0][2]
    monkeypatch.setattr(local_store, "open_write", original)
    result = ingest_pending(local_store, sqlite_catalog, "acme", "tickets", claimer="r")
    upload = status(sqlite_catalog, "landing/acme/tickets/a.jsonl")
    assert (upload.state, upload.reason) == (QUARANTINED, "ingestion_failed")
    assert "disk on fire" in json.loads(local_store.get_bytes(upload.object_key + "report.json"))["detail"]


ARENA_PROBE = """
import sys, threading
if sys.argv[1] == "platform":
    import data_platform
import pyarrow as pa
pool = pa.jemalloc_memory_pool()
block = pa.allocate_buffer(4 << 20, memory_pool=pool)
page = block.address >> 12  # jemalloc starts a large block anywhere in its first page
del block
other = []
thread = threading.Thread(target=lambda: other.append(pa.allocate_buffer(4 << 20, memory_pool=pool).address >> 12))
thread.start(); thread.join()
print("reused" if other[0] == page else "fresh")
"""


def test_importing_the_platform_first_gives_arrow_one_jemalloc_arena_for_all_threads():
    """A block one thread frees is the next another allocates (tables are parsed in one
    thread and freed in another): Arrow's jemalloc reads its options when pyarrow loads,
    so the package sets them on import. Without it, the other thread's arena gives fresh
    pages; a value the environment sets wins."""
    env = {k: v for k, v in os.environ.items() if k != "JE_ARROW_MALLOC_CONF"}

    def probe(mode: str, **extra: str) -> str:
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], env={**env, **extra},
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert probe("platform") == "reused"
    assert probe("pyarrow alone") == "fresh"
    assert probe("platform", JE_ARROW_MALLOC_CONF="narenas:4") == "fresh"

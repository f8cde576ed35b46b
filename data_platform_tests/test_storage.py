import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ResponseStreamingError
from botocore.response import StreamingBody

from data_platform import storage
from data_platform.storage import LocalObjectStore, ObjectChanged, open_store
from data_platform_tests.test_faults import BreakingStream


def test_put_get_head_delete(store):
    store.put_bytes("data/acme/t/a.bin", b"hello")
    assert store.get_bytes("data/acme/t/a.bin") == b"hello"
    info = store.head("data/acme/t/a.bin")
    assert info.size == 5 and info.etag and info.last_modified.tzinfo is not None
    store.delete("data/acme/t/a.bin")
    assert store.head("data/acme/t/a.bin") is None
    store.delete("data/acme/t/a.bin")  # idempotent


def test_list_is_complete_past_one_page(store):
    keys = {f"landing/acme/t/{i:05d}.jsonl" for i in range(1105)}
    for key in keys:
        store.put_bytes(key, b"{}\n")
    store.put_bytes("landing2/other", b"x")
    listed = {o.key for o in store.list("landing/")}
    assert listed == keys


def test_download_streams_and_hashes(store, tmp_path):
    payload = b"x" * (20 * 1024 * 1024 + 3)
    store.put_bytes("landing/a/b/big.bin", payload)
    info = store.head("landing/a/b/big.bin")
    sink = io.BytesIO()
    got, sha = store.download("landing/a/b/big.bin", sink, if_etag=info.etag)
    assert sink.getvalue() == payload
    assert sha == hashlib.sha256(payload).hexdigest()
    assert got.etag == info.etag


def test_download_refuses_a_replaced_object(store):
    store.put_bytes("landing/a/b/x.csv", b"one")
    old = store.head("landing/a/b/x.csv")
    with pytest.raises(ObjectChanged):
        store.download("landing/a/b/x.csv", io.BytesIO(), if_etag="0" * 32)
    store.delete("landing/a/b/x.csv")
    with pytest.raises(ObjectChanged):
        store.download("landing/a/b/x.csv", io.BytesIO(), if_etag=old.etag)


def test_delete_if_unchanged_spares_a_newer_version(store):
    store.put_bytes("landing/a/b/x.csv", b"one")
    old = store.head("landing/a/b/x.csv")
    store.put_bytes("landing/a/b/x.csv", b"two, newer")
    assert store.delete_if_unchanged("landing/a/b/x.csv", old.etag) is False
    assert store.get_bytes("landing/a/b/x.csv") == b"two, newer"


def test_copy_and_pyarrow_filesystem_read_back(store, tmp_path):
    table = pa.table({"a": [1, 2, 3]})
    local = tmp_path / "t.parquet"
    pq.write_table(table, local)
    store.upload_file(local, "data/acme/t/t.parquet")
    store.copy("data/acme/t/t.parquet", "archive/acme/t/t.parquet")
    read = pq.read_table(store.fs_path("archive/acme/t/t.parquet"), filesystem=store.filesystem)
    assert read.equals(table)


def test_large_upload_uses_multipart(s3_store, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    local = tmp_path / "big.bin"
    local.write_bytes(b"y" * (11 * 1024 * 1024))
    s3_store.upload_file(local, "data/a/b/big.bin")
    info = s3_store.head("data/a/b/big.bin")
    assert info.size == 11 * 1024 * 1024
    assert info.etag.endswith("-3")  # three parts: S3's multipart ETag form


def test_streamed_write_appears_only_on_commit(store):
    writer = store.open_write("data/a/b/x.bin")
    writer.write(b"abc")
    writer.write(memoryview(b"def"))
    assert writer.tell() == 6
    assert store.head("data/a/b/x.bin") is None
    writer.commit()
    assert store.get_bytes("data/a/b/x.bin") == b"abcdef"
    assert (writer.sha256, writer.size) == (hashlib.sha256(b"abcdef").hexdigest(), 6)  # for the catalog
    writer.abort()  # after commit: nothing happens
    assert store.get_bytes("data/a/b/x.bin") == b"abcdef"

    with store.open_write("data/a/b/y.bin") as writer:
        writer.write(b"never committed")
    with pytest.raises(RuntimeError), store.open_write("data/a/b/x.bin") as writer:
        writer.write(b"replacement that fails half-way")
        raise RuntimeError("encoder failed")
    assert [o.key for o in store.list("data/")] == ["data/a/b/x.bin"]
    assert store.get_bytes("data/a/b/x.bin") == b"abcdef"


def test_streamed_write_sends_parts_as_they_fill(s3_store, monkeypatch):
    monkeypatch.setattr(storage, "PART_BYTES", 5 * 1024 * 1024)
    client, bucket = s3_store._client, s3_store.bucket
    chunk = b"z" * (1024 * 1024)
    writer = s3_store.open_write("data/a/b/big.bin")
    for _ in range(11):
        writer.write(chunk)
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [s3_store._k("data/a/b/big.bin")]  # sending, not visible yet
    assert s3_store.head("data/a/b/big.bin") is None
    writer.commit()
    info = s3_store.head("data/a/b/big.bin")
    assert info.size == 11 * 1024 * 1024 and info.etag.endswith("-3")
    assert s3_store.get_bytes("data/a/b/big.bin") == chunk * 11
    assert writer.sha256 == hashlib.sha256(chunk * 11).hexdigest()

    with s3_store.open_write("data/a/b/dropped.bin") as writer:
        for _ in range(6):
            writer.write(chunk)
    assert s3_store.head("data/a/b/dropped.bin") is None
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def _break_gets(store, after: int, kind: str = "reset", times: int = 1, on_break=None) -> list:
    """Break the bodies of the store's next `times` GETs after `after` bytes (see
    test_faults.BreakingStream); returns every GET's Content-Range (None: a whole object)."""
    seen = []

    def hook(http_response, parsed, **_):
        if http_response.status_code >= 300 or "Body" not in parsed:
            return
        seen.append(parsed.get("ContentRange"))
        if len(seen) <= times:
            n = parsed["ContentLength"]
            stream = BreakingStream(parsed["Body"]._raw_stream, min(after, n - 1), kind, n, on_break)
            parsed["Body"] = StreamingBody(stream, n)

    store._client.meta.events.register("after-call.s3.GetObject", hook)
    return seen


@pytest.mark.parametrize("kind", ["reset", "truncated", "timeout", "short"])
def test_a_get_broken_mid_body_resumes_where_it_stopped(s3_store, monkeypatch, kind):
    monkeypatch.setattr(storage, "PART_BYTES", 5 * 1024 * 1024)
    payload = bytes(range(256)) * (11 * 4096)  # 11 MiB, sent as a multipart upload (an ETag "...-3")
    with s3_store.open_write("landing/a/b/big.bin") as writer:
        writer.write(payload)
        writer.commit()
    info = s3_store.head("landing/a/b/big.bin")
    seen = _break_gets(s3_store, after=4_000_001, kind=kind, times=2)
    sink = io.BytesIO()
    got, sha = s3_store.download("landing/a/b/big.bin", sink, if_etag=info.etag)
    assert sink.getvalue() == payload and sha == hashlib.sha256(payload).hexdigest() and got == info
    # resumed from the bytes reached (the resume broke too, and was resumed in turn), not restarted
    assert seen == [None, f"bytes 4000001-{len(payload) - 1}/{len(payload)}",
                    f"bytes 8000002-{len(payload) - 1}/{len(payload)}"]
    assert s3_store.get_bytes("landing/a/b/big.bin") == payload  # (no faults left) the other entry point
    _break_gets(s3_store, after=12345, kind=kind)
    assert s3_store.get_bytes("landing/a/b/big.bin") == payload


def test_an_object_replaced_before_the_resume_is_object_changed_not_mixed(s3_store):
    old, new = b"o" * 100_000, b"N" * 100_000
    s3_store.put_bytes("landing/a/b/x.jsonl", old)
    _break_gets(s3_store, after=40_000, on_break=lambda: s3_store.put_bytes("landing/a/b/x.jsonl", new))
    sink = io.BytesIO()
    with pytest.raises(ObjectChanged):
        s3_store.download("landing/a/b/x.jsonl", sink)
    assert sink.getvalue() == old[:40_000]  # nothing of the new version was handed out
    _break_gets(s3_store, after=1, on_break=lambda: s3_store.delete("landing/a/b/x.jsonl"))  # deleted meanwhile
    with pytest.raises(ObjectChanged), s3_store.open_read("landing/a/b/x.jsonl") as (_, src):
        src.read()


def test_a_read_that_keeps_breaking_gives_up_and_stays_failed(s3_store):
    s3_store.put_bytes("landing/a/b/x.bin", b"x" * 50_000)
    seen = _break_gets(s3_store, after=1000, times=100)
    with s3_store.open_read("landing/a/b/x.bin") as (_, src):
        with pytest.raises(ResponseStreamingError):
            src.read()
        assert len(seen) == 1 + storage.READ_RESUMES
        with pytest.raises(ResponseStreamingError):  # a caller reading on never sees a clean end
            src.read(10)
    assert len(seen) == 1 + storage.READ_RESUMES


def test_local_store_cannot_escape_root(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    for key in ("../outside", "a/../../outside", "/etc/passwd", ".tmp/x", ""):
        with pytest.raises(ValueError):
            store.put_bytes(key, b"x")
    assert not (tmp_path / "outside").exists()


def test_local_writes_are_atomic_and_hide_temp_files(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    store.put_bytes("landing/a/b/x.csv", b"a,b\n1,2\n")
    assert [o.key for o in store.list("")] == ["landing/a/b/x.csv"]
    store.delete("landing/a/b/x.csv")
    assert not (tmp_path / "root" / "landing").exists()  # empty folders tidied


def test_open_store_by_url(tmp_path, s3_endpoint):
    assert isinstance(open_store(str(tmp_path / "o")), LocalObjectStore)
    assert isinstance(open_store((tmp_path / "o").as_uri()), LocalObjectStore)
    s3 = open_store("s3://bucket/some/prefix")
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    with pytest.raises(ValueError):
        open_store("ftp://x/y")
    with pytest.raises(ValueError):
        open_store("s3:///nobucket")

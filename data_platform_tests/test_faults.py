"""Fault injection at the S3 endpoint: a share of every S3 call answered with throttling
(503 SlowDown), a server error (500) or a connection reset, during ingestion, a
training-set build and an erasure. botocore's standard retries absorb most; what still
fails must fail cleanly, and re-running converges: every upload in exactly one state,
no row lost or kept twice, the subject gone, and `verify` clean.

Faults in the middle of a GET's body (`BodyFaults`: the headers arrived with 200, then
the stream breaks) are injected on botocore's `after-call.s3.GetObject` event, so they
reach every read through `ObjectStore.open_read`, `download` and `get_bytes` (ingestion's
streamed text, the Parquet upload it downloads, training-set and erasure downloads,
`verify`). pyarrow's `S3FileSystem` (Parquet reads in training sets, features, exports)
talks to S3 through Arrow's own C++ client: no botocore hook reaches it, so those reads
are not covered here."""

import gzip
import hashlib
import io
import random
from collections import Counter
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError
from botocore.response import StreamingBody
from urllib3.exceptions import IncompleteRead, ProtocolError, ReadTimeoutError

from data_platform import erasure, integrity
from data_platform import training_sets as tsets
from data_platform.catalog import COMPLETE, FRESH, USED, NoFreshData, utcnow
from data_platform.config import Settings
from data_platform.privacy import load_pseudonym_key
from data_platform_tests.support import ingest_everything, jsonl, parquet_bytes

SHARE = 0.3


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data

    def read(self, *_):
        data, self.data = self.data, b""
        return data


class Faults:
    """A before-send hook on the store's boto3 client: seeded, counts what it injected."""

    def __init__(self, client, seed: int):
        self.rng, self.injected, self.calls, self.on = random.Random(seed), 0, 0, True
        client.meta.events.register("before-send.s3", self)

    def __call__(self, request, **_):
        self.calls += 1
        if not self.on or self.rng.random() >= SHARE:
            return None
        self.injected += 1
        kind = self.rng.choice(("throttle", "error", "reset"))
        if kind == "reset":
            raise ConnectionClosedError(endpoint_url=request.url)
        code, status = ("SlowDown", 503) if kind == "throttle" else ("InternalError", 500)
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Body(body))


class BreakingStream(io.RawIOBase):
    """The raw (urllib3) stream under a botocore `StreamingBody`, breaking after `after`
    bytes the way urllib3 2.x does, so that botocore's own code turns it into what
    callers see: "reset" and "truncated" raise urllib3's ProtocolError (botocore:
    ResponseStreamingError), "timeout" its ReadTimeoutError (botocore: ReadTimeoutError,
    an OSError), and "short" just ends early (as urllib3 1.x did; botocore's Content-Length
    check raises IncompleteReadError). `on_break` runs once, when the break happens."""

    def __init__(self, raw, after: int, kind: str, length: int, on_break=None):
        super().__init__()
        self.raw, self.left, self.kind, self.length, self.on_break = raw, after, kind, length, on_break
        self.sent, self.broke = 0, False

    def readable(self) -> bool:
        return True

    def read(self, amt=None):
        want = self.left if amt is None or amt < 0 else min(amt, self.left)
        if want == 0 and (amt is None or amt < 0 or amt > 0):
            return self._break(partial=b"")
        data = self.raw.read(want)
        self.left -= len(data)
        self.sent += len(data)
        if amt is None or amt < 0:  # "read it all": the break comes within this call
            return self._break(partial=data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _break(self, partial: bytes) -> bytes:
        if not self.broke and self.on_break is not None:
            self.on_break()
        self.broke = True
        if self.kind == "short":
            return partial
        if self.kind == "timeout":
            raise ReadTimeoutError(None, None, "Read timed out. (injected)")
        cause = (IncompleteRead(self.sent, self.length - self.sent) if self.kind == "truncated"
                 else ConnectionResetError(104, "Connection reset by peer (injected)"))
        raise ProtocolError(f"Connection broken: {cause!r}", cause)

    def close(self) -> None:
        self.raw.close()
        super().close()


class BodyFaults:
    """An after-call hook on the store's GetObject: for a seeded share of GETs that
    carry at least two bytes, the body breaks after 1..n-1 of them (a fault strictly
    mid-body), each kind in turn. At most `per_key` GETs of one key break (the first and
    a resume, by default): fewer than the store's READ_RESUMES, so a read that gives up
    would be a bug, not bad luck of the seed. Counts by kind what it injected."""

    KINDS = ("reset", "truncated", "timeout", "short")

    def __init__(self, client, seed: int, share: float = SHARE, kinds=KINDS, per_key: int = 2):
        self.rng, self.share, self.kinds, self.per_key, self.on = random.Random(seed), share, kinds, per_key, True
        self.gets, self.injected, self.by_key, self.streams, self.in_ranges = 0, Counter(), Counter(), [], 0
        client.meta.events.register("after-call.s3.GetObject", self)

    def __call__(self, http_response, parsed, **_):
        body = parsed.get("Body")
        if http_response.status_code >= 300 or not isinstance(body, StreamingBody):
            return
        self.gets += 1
        key, length = http_response.url.split("?")[0], parsed["ContentLength"]
        if not self.on or length < 2 or self.by_key[key] >= self.per_key or self.rng.random() >= self.share:
            return
        self.by_key[key] += 1
        kind = self.kinds[sum(self.injected.values()) % len(self.kinds)]  # each kind in turn
        stream = BreakingStream(body._raw_stream, self.rng.randrange(1, length), kind, length)
        parsed["Body"] = StreamingBody(stream, length)
        self.injected[kind] += 1
        self.in_ranges += "ContentRange" in parsed  # a resumed read broke again
        self.streams.append(stream)


def _until_quiet(step, rounds: int = 12):
    """Run `step` until it raises no more (what an operator or Dagster's retry does)."""
    errors = []
    for _ in range(rounds):
        try:
            return step(), errors
        except NoFreshData:
            raise
        except Exception as err:  # noqa: BLE001 - an injected fault that outlasted the retries
            errors.append(err)
    raise AssertionError(f"did not converge: {errors[-3:]}")


def test_ingestion_training_set_and_erasure_converge_under_s3_faults(s3_store, postgresql_catalog):
    store, catalog = s3_store, postgresql_catalog
    alice = "alice.faults@example.org"
    expected_rows = 0
    for i in range(6):
        rows = [{"id": f"{i}-{j}", "email": alice if j == 0 else f"u{i}-{j}@example.org", "n": j}
                for j in range(40)]
        store.put_bytes(f"landing/acme/events/f{i}.jsonl", jsonl(rows))
        expected_rows += len(rows)
    faults = Faults(store._client, seed=7)

    # Ingestion: failed attempts are released and retried by the next run; a run that
    # fails as a whole (the contract lookup outlasting its retries) is retried by the sensor.
    for _ in range(12):
        try:
            ingest_everything(store, catalog)
        except Exception:  # noqa: BLE001 - a failed run, as Dagster would record it
            continue
        if all(u.state == FRESH for u in catalog.list_uploads(tenant="acme")):
            break
    uploads = catalog.list_uploads(tenant="acme")
    assert len(uploads) == 6 and {u.state for u in uploads} == {FRESH}
    assert sum(u.rows for u in uploads) == expected_rows  # no row lost, none kept twice

    # A training set: a build that dies mid-way is completed by the next call (after its lease).
    def build():
        stale = [ts for ts in catalog.training_sets(tenant="acme") if ts.state == "building"]
        now = utcnow() + (tsets.LEASE + timedelta(seconds=1) if stale else timedelta(0))
        try:
            return tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme"), actor="t", now=now)
        except NoFreshData:
            return None  # the crashed build held everything and was just completed

    _until_quiet(build)
    sets = catalog.training_sets(tenant="acme")
    assert [ts.state for ts in sets] == [COMPLETE] and sets[0].rows == expected_rows
    assert {u.state for u in catalog.list_uploads(tenant="acme")} == {USED}

    # Erasure: a retried request resumes where it stopped and ends with one receipt.
    subject = erasure.Subject(load_pseudonym_key(Settings.from_env()), "acme", alice)
    receipt, _ = _until_quiet(lambda: erasure.forget(store, catalog, subject, client_id="faults"))
    assert faults.injected > 10 and faults.calls > faults.injected  # faults really happened

    faults.on = False  # the checks below read the truth
    uploads = catalog.list_uploads(tenant="acme")
    assert sum(u.rows for u in uploads) == expected_rows - 6  # one row of alice per upload
    for u in uploads:
        emails = pq.read_table(store.fs_path(u.object_key), filesystem=store.filesystem).column("email")
        assert len(emails) == u.rows
    again = erasure.forget(store, catalog, subject, client_id="faults")
    assert again.get("already_done") and again["request_id"] == receipt["request_id"]
    report = integrity.verify(store, catalog, tenant="acme")
    assert report.ok, report.as_dict()


def test_ingestion_converges_under_faults_in_the_middle_of_get_bodies(s3_store, postgresql_catalog):
    """Several uploads (JSON Lines, gzipped JSON Lines, CSV: streamed into the parser;
    Parquet: downloaded first) while a share of GETs break mid-body or arrive truncated.
    The store resumes a broken read with a Range GET pinned to the object's ETag, so
    every upload is ingested in one pass, hashed over its true bytes, each row once."""
    store, catalog = s3_store, postgresql_catalog

    def rows(tag: str, n: int = 1500) -> list[dict]:
        return [{"id": f"{tag}-{j}", "email": f"{tag}.{j}@example.org", "n": j} for j in range(n)]

    landed = {
        "a.jsonl": jsonl(rows("a")),
        "b.jsonl": jsonl(rows("b")),
        "c.jsonl.gz": gzip.compress(jsonl(rows("c"))),
        "d.csv": ("id,email,n\n" + "".join(f"{r['id']},{r['email']},{r['n']}\n" for r in rows("d"))).encode(),
        "e.parquet": parquet_bytes(pa.Table.from_pylist(rows("e"))),
    }
    for name, data in landed.items():
        store.put_bytes(f"landing/acme/events/{name}", data)
    expected_ids = {r["id"] for tag in "abcde" for r in rows(tag)}
    faults = BodyFaults(store._client, seed=11, share=0.6)

    scan, outcomes, failures = ingest_everything(store, catalog)
    assert not failures, failures  # every break was resumed: no attempt failed
    uploads = catalog.list_uploads(tenant="acme")
    assert len(uploads) == len(landed) and {u.state for u in uploads} == {FRESH}
    assert {u.attempts for u in uploads} == {1}
    by_name = {u.landing_key.rsplit("/", 1)[1]: u for u in uploads}
    for name, data in landed.items():  # hashed over the true bytes, not a broken or doubled stream
        assert by_name[name].sha256 == hashlib.sha256(data).hexdigest(), name

    # Faults really happened, strictly inside bodies, of every kind, while ingesting;
    # some broke a resumed (Range) GET again.
    assert set(faults.injected) == set(BodyFaults.KINDS), faults.injected
    assert faults.in_ranges > 0
    assert all(s.broke and 0 < s.sent < s.length for s in faults.streams)
    during_ingestion = sum(faults.injected.values())

    # `verify` streams every object again, still under faults, and finds them intact.
    report = integrity.verify(store, catalog, tenant="acme")
    assert report.ok, report.as_dict()
    assert sum(faults.injected.values()) > during_ingestion
    faults.on = False
    ids = [i for u in uploads
           for i in pq.read_table(store.fs_path(u.object_key), filesystem=store.filesystem).column("id").to_pylist()]
    assert len(ids) == len(expected_ids) and set(ids) == expected_ids  # no row lost, none kept twice
    assert sum(u.rows for u in uploads) == len(expected_ids)

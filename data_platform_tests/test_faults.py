"""Fault injection at the S3 endpoint: a share of every S3 call answered with throttling
(503 SlowDown), a server error (500) or a connection reset, during ingestion, a
training-set build and an erasure. botocore's standard retries absorb most; what still
fails must fail cleanly, and re-running converges: every upload in exactly one state,
no row lost or kept twice, the subject gone, and `verify` clean."""

import random
from datetime import timedelta

import pyarrow.parquet as pq
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

from data_platform import erasure, integrity
from data_platform import training_sets as tsets
from data_platform.catalog import COMPLETE, FRESH, USED, NoFreshData, utcnow
from data_platform.config import Settings
from data_platform.privacy import load_pseudonym_key
from data_platform_tests.support import ingest_everything, jsonl

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

"""Contracts, Great Expectations and pseudonymisation through the whole ingestion, over
the S3 endpoint with the catalog on PostgreSQL, on data from shared/bench/gen_data.py
(whose ground truth says how many bad rows of each kind it planted)."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_platform.catalog import FRESH, QUARANTINED
from data_platform.config import Settings
from data_platform.indexes import uploads_holding_subject
from data_platform.privacy import Pseudonymizer, load_pseudonym_key
from data_platform.reporting import dataset_findings
from data_platform.defs.ingestion.assets import CONTRACT_CHECK, fresh_data
from data_platform.defs.ingestion.sensors import landing_sensor
from data_platform.defs.resources import CatalogResource, ObjectStoreResource

ROOT = Path(__file__).resolve().parents[1]
GEN_DATA = ROOT.parent / "shared" / "bench" / "gen_data.py"
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def generate(tmp_path: Path, rows: int, seed: int, **rates) -> tuple[Path, dict]:
    out = tmp_path / f"gen-{seed}.jsonl"
    args = [sys.executable, str(GEN_DATA), "--rows", str(rows), "--seed", str(seed), "--out", str(out)]
    for name, value in rates.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    subprocess.run(args, check=True, capture_output=True)
    return out, json.loads(Path(f"{out}.meta.json").read_text())["counts"]


@pytest.fixture
def platform(s3_store, pg_catalog_url, postgresql_catalog):
    s3_store.put_bytes("_platform/contracts/acme/tickets.yaml",
                       (ROOT / "examples/contracts/acme/tickets.yaml").read_bytes())
    resources = {"object_store": ObjectStoreResource(storage_url="s3://test-bucket/root"),
                 "catalog": CatalogResource(catalog_url=pg_catalog_url)}
    with dg.instance_for_test() as instance:
        yield s3_store, postgresql_catalog, resources, instance


def ingest(instance, resources, raise_on_error=True):
    result = landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return [dg.materialize([fresh_data], partition_key=r.partition_key, instance=instance, resources=resources,
                           raise_on_error=raise_on_error)
            for r in result.run_requests]


def test_contract_rejects_planted_bad_rows_and_no_personal_data_reaches_data(platform, tmp_path):
    store, catalog, resources, instance = platform
    path, truth = generate(tmp_path, 3000, seed=11, dup_rate=0, near_dup_rate=0, bad_rate=0.03)
    store.put_bytes("landing/acme/tickets/day1.jsonl", path.read_bytes())
    store.put_bytes("landing/globex/tickets/day1.jsonl", path.read_bytes())  # no contract for globex

    runs = ingest(instance, resources)
    assert all(r.success for r in runs)
    uploads = {u.landing_key: u for u in catalog.list_uploads()}
    acme, globex = uploads["landing/acme/tickets/day1.jsonl"], uploads["landing/globex/tickets/day1.jsonl"]
    assert acme.state == FRESH and globex.state == FRESH

    # Every planted bad row is rejected with the failing check as its reason.
    expected = {"not_null:record_id": truth["bad_null_record_id"], "between:priority": truth["bad_priority"],
                "type:created_at": truth["bad_timestamp"]}
    assert json.loads(acme.detail)["rejected_by_reason"] == expected
    assert acme.rows == truth["rows"] - sum(expected.values())
    rejected = [json.loads(line) for line in store.get_bytes(
        f"quarantine/acme/tickets/upload-{acme.id:010d}/rejected_rows.jsonl").splitlines()]
    assert len(rejected) == sum(expected.values())
    assert all(r["raw"] for r in rejected)

    # Stored with the contract's types.
    data = pq.read_table(store.fs_path(acme.object_key), filesystem=store.filesystem)
    assert data.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert data.schema.field("priority").type == pa.int64()
    assert set(data.column("priority").to_pylist()) <= {1, 2, 3, 4}

    # The asset check reports the contract's results.
    (run,) = [r for r in runs if r.get_asset_materialization_events()[0].partition == "acme/tickets"]
    (check,) = run.get_asset_check_evaluations()
    assert check.check_name == CONTRACT_CHECK and check.passed
    assert check.metadata["rows_failing_by_check"].value == expected
    # Quality is on the materialization: a float the UI plots run after run, and a table.
    (materialization,) = run.asset_materializations_for_node("fresh_data")
    quality = json.loads(acme.detail)["quality"]
    assert materialization.metadata["dataset_quality"].value == acme.quality == quality["score"]
    assert 0.5 < acme.quality < 1
    (record,) = materialization.metadata["quality_by_upload"].value.records
    assert record.data["upload_id"] == acme.id and record.data["validity"] == round(acme.rows / truth["rows"], 4)
    assert set(quality["languages"]["text"]) >= {"en", "fr", "es", "de"}

    # No raw email, phone or IP from the input reaches data/, for either tenant.
    source = pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])
    raw_values = {v for col in ("user_email", "ip_address") for v in source.column(col).to_pylist() if v}
    # user_id is personal only because acme's contract says so (values cannot show it).
    declared_only = {v for v in source.column("user_id").to_pylist() if v}
    data_keys = [o.key for o in store.list("data/")]
    assert len(data_keys) == 2
    pseudonyms = {}
    for key in data_keys:
        table = pq.read_table(store.fs_path(key), filesystem=store.filesystem)
        for name in table.column_names:
            if not pa.types.is_string(table.schema.field(name).type):
                continue
            for value in table.column(name).to_pylist():
                if value is None:
                    continue
                assert not EMAIL.search(value), (key, name, value)
                assert not IPV4.search(value), (key, name, value)
                assert value not in raw_values
                if key.startswith("data/acme/"):
                    assert value not in declared_only
        pseudonyms[key.split("/")[1]] = table.column("user_email").to_pylist()
        first_email = source.column("user_email")[0].as_py()
        assert hashlib.sha256(first_email.encode()).hexdigest() not in json.dumps(pseudonyms[key.split("/")[1]])
    # Same people, different tenants: different pseudonyms.
    assert not set(pseudonyms["acme"]) & set(pseudonyms["globex"])
    assert json.loads(globex.detail)["contract"] is None
    assert set(json.loads(globex.detail)["pii_detected"]) >= {"user_email", "ip_address"}


def test_file_breaking_the_contract_beyond_the_threshold_is_quarantined_whole(platform, tmp_path):
    store, catalog, resources, instance = platform
    path, truth = generate(tmp_path, 400, seed=5, dup_rate=0, near_dup_rate=0, bad_rate=0.5)
    store.put_bytes("landing/acme/tickets/bad.jsonl", path.read_bytes())
    (run,) = ingest(instance, resources, raise_on_error=False)
    assert not run.success  # the blocking check failed: nothing downstream may use this run
    (upload,) = catalog.list_uploads()
    assert (upload.state, upload.reason) == (QUARANTINED, "too_many_invalid_rows")
    report = json.loads(store.get_bytes(upload.object_key + "report.json"))
    assert report["validation"]["rows_failing_validation"] > 0.2 * truth["rows"]
    assert store.get_bytes(upload.object_key + "original/bad.jsonl") == path.read_bytes()
    (check,) = run.get_asset_check_evaluations()
    assert not check.passed and check.metadata["uploads_quarantined_whole"].value == 1
    assert not list(store.list("data/"))


def test_pseudonyms_are_stable_across_runs(platform, tmp_path):
    store, catalog, resources, instance = platform
    path, _ = generate(tmp_path, 200, seed=3, dup_rate=0, near_dup_rate=0, bad_rate=0)
    store.put_bytes("landing/acme/tickets/a.jsonl", path.read_bytes())
    ingest(instance, resources)
    # New tickets from the same people, in a different file, ingested by a later run.
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["record_id"] = row["record_id"].replace("rec-", "rec-b-")
    store.put_bytes("landing/acme/tickets/b.jsonl", "".join(json.dumps(r) + "\n" for r in reversed(rows)).encode())
    ingest(instance, resources)
    a, b = sorted(catalog.list_uploads(), key=lambda u: u.id)
    assert a.state == b.state == FRESH and a.rows == b.rows == 200
    ta = pq.read_table(store.fs_path(a.object_key), filesystem=store.filesystem)
    tb = pq.read_table(store.fs_path(b.object_key), filesystem=store.filesystem)
    assert set(ta.column("user_email").to_pylist()) == set(tb.column("user_email").to_pylist())
    by_record_a = dict(zip(ta.column("record_id").to_pylist(), ta.column("user_email").to_pylist()))
    by_record_b = dict(zip((r.replace("rec-b-", "rec-") for r in tb.column("record_id").to_pylist()),
                           tb.column("user_email").to_pylist()))
    assert by_record_a == by_record_b


def test_rows_already_kept_by_earlier_uploads_are_dropped(platform, tmp_path):
    store, catalog, resources, instance = platform
    path, truth = generate(tmp_path, 300, seed=21, dup_rate=0.1, near_dup_rate=0, bad_rate=0)
    store.put_bytes("landing/acme/tickets/a.jsonl", path.read_bytes())
    ingest(instance, resources)
    (a,) = catalog.list_uploads()
    assert a.rows == truth["rows"] - truth["exact_dup"]
    assert json.loads(a.detail)["duplicate_rows_removed"] == {"within_file": truth["exact_dup"],
                                                              "of_earlier_uploads": 0}
    # The same rows again in another order, plus one new row: only the new one is kept.
    lines = path.read_text().splitlines()
    extra = json.loads(lines[0])
    extra["record_id"] = "rec-new-1"
    store.put_bytes("landing/acme/tickets/b.jsonl", ("\n".join(reversed(lines)) + "\n" + json.dumps(extra)
                                                     + "\n").encode())
    # And a file of nothing but known rows.
    store.put_bytes("landing/acme/tickets/c.jsonl", ("\n".join(lines[:50]) + "\n").encode())
    ingest(instance, resources)
    uploads = {u.landing_key.rsplit("/", 1)[1]: u for u in catalog.list_uploads()}
    assert (uploads["b.jsonl"].state, uploads["b.jsonl"].rows) == (FRESH, 1)
    assert (uploads["c.jsonl"].state, uploads["c.jsonl"].reason) == ("duplicate", "all_rows_duplicate")
    total = sum(pq.read_table(store.fs_path(u.object_key), filesystem=store.filesystem).num_rows
                for u in uploads.values() if u.state == FRESH)
    assert total == truth["rows"] - truth["exact_dup"] + 1


def test_erasure_index_finds_every_upload_holding_a_subject(platform, tmp_path):
    store, catalog, resources, instance = platform
    path, _ = generate(tmp_path, 400, seed=31, dup_rate=0, near_dup_rate=0, bad_rate=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    store.put_bytes("landing/acme/tickets/a.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:250]).encode())
    store.put_bytes("landing/acme/other/b.jsonl", "".join(json.dumps(r) + "\n" for r in rows[200:]).encode())
    ingest(instance, resources)
    by_name = {u.landing_key.rsplit("/", 1)[1]: u for u in catalog.list_uploads()}
    a, b = by_name["a.jsonl"], by_name["b.jsonl"]
    assert a.state == b.state == FRESH
    pseudonyms = Pseudonymizer(load_pseudonym_key(Settings.from_env()), "acme")

    def found(value, kind):
        return sorted(uploads_holding_subject(store, catalog, "acme", pseudonyms.pseudonym(value, kind)))

    both = rows[220]["user_email"]
    only_a = sorted({r["user_email"] for r in rows[:200]} - {r["user_email"] for r in rows[200:]})[0]
    only_b = sorted({r["ip_address"] for r in rows[250:]} - {r["ip_address"] for r in rows[:250]})[0]
    assert found(both, "email") == sorted([a.id, b.id])
    assert found(only_a, "email") == [a.id]
    assert found(only_b, "ip") == [b.id]
    assert found("nobody@example.org", "email") == []
    # Case and spaces do not hide a subject (emails are normalised before hashing) ...
    assert found(f"  {both.upper()} ", "email") == sorted([a.id, b.id])
    # ... and another tenant's pseudonym of the same address finds nothing here.
    other = Pseudonymizer(load_pseudonym_key(Settings.from_env()), "globex").pseudonym(both, "email")
    assert uploads_holding_subject(store, catalog, "acme", other) == []
    # The index holds no raw value and no pseudonym text: only 64-bit keys.
    for run in catalog.tenant_index_runs("acme", "subjects"):
        table = pq.read_table(pa.BufferReader(store.get_bytes(run.object_key)))
        assert table.schema.names == ["subject"] and table.schema.field("subject").type == pa.int64()
        assert run.entries == table.num_rows > 0


def test_unique_columns_reject_every_copy_of_a_repeated_value(platform):
    store, catalog, resources, instance = platform
    store.put_bytes("_platform/contracts/acme/accounts.yaml", b"""
version: 3
columns:
  account: {type: string, required: true}
  handle: {type: string, unique: true}
  plan: {type: string, allowed: [free, pro]}
primary_key: [account]
validation: {max_failing_share: 0.6}
""")
    rows = [{"account": "a1", "handle": "ada", "plan": "pro"},
            {"account": "a2", "handle": "bob", "plan": "free"},
            {"account": "a3", "handle": "ada", "plan": "free"},   # repeats a1's handle
            {"account": "a4", "handle": None, "plan": "free"},    # nulls never break unique
            {"account": "a5", "handle": None, "plan": "pro"},
            {"account": "a2", "handle": "cyd", "plan": "pro"},    # repeats a2's primary key
            {"account": "a6", "handle": "dan", "plan": "pro"}]
    store.put_bytes("landing/acme/accounts/day1.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    (run,) = ingest(instance, resources)
    (upload,) = catalog.list_uploads()
    assert upload.state == FRESH
    # Which copy came first is not the contract's business: every copy is rejected, for
    # a person to decide.
    assert json.loads(upload.detail)["rejected_by_reason"] == {"unique:handle": 2, "primary_key": 2}
    kept = pq.read_table(store.fs_path(upload.object_key), filesystem=store.filesystem)
    assert sorted(kept.column("account").to_pylist()) == ["a4", "a5", "a6"]
    rejected = [json.loads(line) for line in store.get_bytes(
        f"quarantine/acme/accounts/upload-{upload.id:010d}/rejected_rows.jsonl").splitlines()]
    assert sorted((r["reason"], json.loads(r["raw"])["account"]) for r in rejected) == [
        ("primary_key", "a2"), ("primary_key", "a2"), ("unique:handle", "a1"), ("unique:handle", "a3")]
    (check,) = run.get_asset_check_evaluations()
    assert check.metadata["rows_failing_by_check"].value == {"unique:handle": 2, "primary_key": 2}


def test_near_duplicates_are_flagged_across_uploads_and_dropped_when_the_contract_says(platform, tmp_path):
    store, catalog, resources, instance = platform
    path, truth = generate(tmp_path, 4000, seed=41, dup_rate=0, near_dup_rate=0.08, bad_rate=0)
    lines = path.read_text().splitlines(keepends=True)
    # tickets: flag (the example contract); tickets_strict: the same contract with drop.
    contract = (ROOT / "examples/contracts/acme/tickets.yaml").read_text()
    store.put_bytes("_platform/contracts/acme/tickets_strict.yaml",
                    contract.replace("near_duplicates: flag", "near_duplicates: drop").encode())
    # (other record ids in the second dataset: the same bytes twice would be one upload)
    variants = {"tickets": lines, "tickets_strict": [line.replace('"rec-', '"rec-s-') for line in lines]}
    for dataset, rows in variants.items():
        store.put_bytes(f"landing/acme/{dataset}/a.jsonl", "".join(rows[:2000]).encode())
    ingest(instance, resources)
    for dataset, rows in variants.items():
        store.put_bytes(f"landing/acme/{dataset}/b.jsonl", "".join(rows[2000:]).encode())
    ingest(instance, resources)
    uploads = {(u.dataset, u.landing_key.rsplit("/", 1)[1]): u for u in catalog.list_uploads()}
    assert {k: (u.state, u.reason, u.detail if u.state != FRESH else None) for k, u in uploads.items()} == {
        k: (FRESH, None, None) for k in uploads}

    flagged = {}
    for name in ("a.jsonl", "b.jsonl"):
        upload = uploads["tickets", name]
        report = json.loads(upload.detail)["near_duplicates"]
        assert report["action"] == "flag" and report["text_columns"] == ["text"]
        data = pq.read_table(store.fs_path(upload.object_key), filesystem=store.filesystem)
        assert data.num_rows == upload.rows  # flagged rows are kept ...
        of_upload = data.column("_near_duplicate_of_upload")
        assert len(of_upload) - of_upload.null_count == report["flagged"]  # ... and say which row they repeat
        assert set(of_upload.drop_null().to_pylist()) <= {uploads["tickets", "a.jsonl"].id, upload.id}
        flagged[name] = report
    # The generator planted truth["near_dup"]; the detector finds about as many (the exact
    # per-row recall and precision are in test_neardup.py).
    found = sum(r["flagged"] for r in flagged.values())
    assert abs(found - truth["near_dup"]) <= 0.1 * truth["near_dup"], (found, truth)
    # b's copies of rows that a holds point at a: the earlier upload is recorded.
    assert flagged["b.jsonl"]["of_earlier_uploads"] > 0
    assert flagged["b.jsonl"]["matched_uploads"] == {str(uploads["tickets", "a.jsonl"].id):
                                                     flagged["b.jsonl"]["of_earlier_uploads"]}

    # With drop, the same rows are gone and the data has no flag columns.
    for name in ("a.jsonl", "b.jsonl"):
        strict = uploads["tickets_strict", name]
        report = json.loads(strict.detail)["near_duplicates"]
        assert report["action"] == "drop" and report["dropped"] == flagged[name]["flagged"]
        assert strict.rows == uploads["tickets", name].rows - report["dropped"]
        data = pq.read_table(store.fs_path(strict.object_key), filesystem=store.filesystem)
        assert "_near_duplicate_of_upload" not in data.column_names
    findings = dataset_findings(catalog)
    assert findings["acme/tickets"]["near_duplicates"] == {"flagged": found, "dropped": 0}
    assert findings["acme/tickets_strict"]["near_duplicates"] == {"flagged": 0, "dropped": found}
    # Each fresh upload registered its run of the near-duplicate index.
    for dataset in ("tickets", "tickets_strict"):
        runs = catalog.index_runs(catalog.dataset_id("acme", dataset), "near_dup")
        assert [r.upload_id for r in runs] == [uploads[dataset, "a.jsonl"].id, uploads[dataset, "b.jsonl"].id]



def _added(reports: list[dict]) -> dict:
    total: dict = {}
    for report in reports:
        for name, value in report.items():
            if isinstance(value, dict):
                total[name] = _added([total.get(name, {}), value])
            elif isinstance(value, int) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
    return total


def test_one_run_of_several_uploads_adds_up_their_findings_in_the_asset_metadata(platform, tmp_path):
    """The sensor gives a run every upload pending in its partition. The materialisation
    adds up what each upload's report found, near-duplicates and the earlier upload they
    repeat included (a run of two uploads once failed here, after both were committed)."""
    store, catalog, resources, instance = platform
    path, _ = generate(tmp_path, 3000, seed=43, near_dup_rate=0.08)
    lines = path.read_text().splitlines(keepends=True)
    store.put_bytes("landing/acme/tickets/a.jsonl", "".join(lines[:1500]).encode())
    store.put_bytes("landing/acme/tickets/b.jsonl", "".join(lines[1500:] + lines[:100]).encode())
    (result,) = ingest(instance, resources)
    assert result.success
    uploads = sorted(catalog.list_uploads(), key=lambda u: u.id)
    assert [(u.landing_key.rsplit("/", 1)[1], u.state) for u in uploads] == [("a.jsonl", FRESH), ("b.jsonl", FRESH)]
    reports = [json.loads(u.detail) for u in uploads]
    near = [r["near_duplicates"] for r in reports]
    assert near[1]["matched_uploads"].get(str(uploads[0].id), 0) > 0  # b repeats texts of a
    (materialization,) = result.asset_materializations_for_node("fresh_data")
    metadata = {name: value.value for name, value in materialization.metadata.items()}
    assert metadata["uploads_processed"] == 2
    assert metadata["rows_ingested"] == sum(u.rows for u in uploads)
    assert metadata["near_duplicates"] == _added(near)
    assert metadata["near_duplicates"]["flagged"] == near[0]["flagged"] + near[1]["flagged"] > 0
    removed = metadata["duplicate_rows_removed"]
    assert removed == _added([r["duplicate_rows_removed"] for r in reports])
    assert removed["of_earlier_uploads"] >= 100  # b's copies of a's first 100 rows
    for key in ("pseudonymised_values", "redacted_in_text"):
        assert metadata[key] == _added([r[key] for r in reports]) and metadata[key]

def test_failing_values_of_personal_data_columns_never_reach_the_ui(platform):
    store, catalog, resources, instance = platform
    store.put_bytes("_platform/contracts/acme/people.yaml", b"""
version: 1
columns:
  id: {type: string, required: true}
  email: {type: string, pii: email, regex: "@example\\\\.org$"}
  note: {type: string, allowed: [ok]}
""")
    rows = [{"id": str(i), "email": f"user{i}@example.org", "note": "ok"} for i in range(20)]
    rows[3]["email"] = "leaked.person@elsewhere.com"  # breaks the regex: rejected before pseudonymisation
    rows[5]["note"] = "bad"  # not personal data: its sample stays visible
    store.put_bytes("landing/acme/people/day1.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    (run,) = ingest(instance, resources)
    (upload,) = catalog.list_uploads(dataset="people")
    assert upload.state == FRESH and upload.quarantined_rows == 2
    (evaluation,) = run.get_asset_check_evaluations()
    shown = json.dumps({k: str(v.value) for k, v in evaluation.metadata.items()})
    assert "leaked.person" not in shown and "<email withheld>" in shown and "bad" in shown
    # Nothing in the run's event log either; quarantine keeps the raw row for the operator.
    events = json.dumps([str(e) for e in instance.all_logs(run.run_id)])
    assert "leaked.person" not in events
    rejected = store.get_bytes(f"quarantine/acme/people/upload-{upload.id:010d}/rejected_rows.jsonl").decode()
    assert "leaked.person@elsewhere.com" in rejected

"""The integrity check over a real lifecycle: clean when nothing was touched; a tampered,
a deleted and an orphan object each reported with the right kind (by the function, the
CLI with exit 1, and the Dagster asset's checks); trust on first verify with --record."""

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg
import pytest

from data_platform import backups, cli, integrity, layout
from data_platform.catalog import FRESH, INGESTED, QUARANTINED
from data_platform.catalog.schema import uploads
from data_platform.defs.governance.integrity import (
    NO_CHANGED_OBJECTS, NO_MISSING_OBJECTS, NO_ORPHANED_OBJECTS, integrity as integrity_asset, integrity_job,
    integrity_schedule,
)
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform_tests.test_backups import lifecycle


def _flip(store, key: str) -> None:
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 1  # same size, one bit changed
    store.put_bytes(key, bytes(data))


def _found(report: integrity.IntegrityReport) -> set[tuple[str, str, str]]:
    return {(f.kind, f.what, f.key) for f in report.findings}


@pytest.fixture
def lived(store, sqlite_catalog):
    made = lifecycle(store, sqlite_catalog)
    backups.create_backup(store, sqlite_catalog)
    return store, sqlite_catalog, made


def test_a_clean_platform_verifies_and_record_fills_data_checksums(lived):
    store, catalog, made = lived
    report = integrity.verify(store, catalog, orphan_min_age=0)
    assert report.ok, report.as_dict()
    ingested = [u for u in catalog.list_uploads() if u.state in INGESTED]
    assert report.checked["data"] == len(ingested) and report.recorded == 0
    assert {"quarantine_original", "index_run", "training_set_manifest", "training_set_part", "feature_manifest",
            "feature_part", "export_manifest", "export_part", "backup_object"} <= set(report.checked)
    # Ingestion records each data object's checksum as it streams it out (archiving copies
    # the bytes, erasure records the new ones): every data object is hashed and compared.
    for u in ingested:
        assert (u.data_sha256, u.data_size) == (
            hashlib.sha256(store.get_bytes(u.object_key)).hexdigest(), store.head(u.object_key).size)
    assert report.hashed >= len(ingested)

    # Catalogs from before those columns: trust on first verify with --record.
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().values(data_sha256=None, data_size=None))
    unrecorded = integrity.verify(store, catalog)
    assert unrecorded.ok and unrecorded.existence_only >= len(ingested) and unrecorded.recorded == 0
    recorded = integrity.verify(store, catalog, record=True)
    assert recorded.ok and recorded.recorded == len(ingested)
    for u in catalog.list_uploads():
        if u.state in INGESTED:
            assert (u.data_sha256, u.data_size) == (
                hashlib.sha256(store.get_bytes(u.object_key)).hexdigest(), store.head(u.object_key).size)
    again = integrity.verify(store, catalog, record=True)
    assert again.ok and again.recorded == 0 and again.hashed >= len(ingested)


def test_tampered_deleted_and_orphan_objects_are_each_reported(lived):
    store, catalog, made = lived
    integrity.verify(store, catalog, record=True)  # trust on first verify: checksums of data recorded
    fresh = next(u for u in catalog.list_uploads(tenant="acme") if u.state == FRESH)
    quarantined = next(u for u in catalog.list_uploads(tenant="acme") if u.state == QUARANTINED)
    original = quarantined.object_key + layout.safe_original_name(quarantined.landing_key)
    set_part = json.loads(store.get_bytes(f"{made['training_set'].prefix}manifest.json"))["parts"][0]["key"]
    export_part = json.loads(store.get_bytes(made["export"]))["parts"][0]["key"]
    index_run = next(info.key for info in store.list("_platform/indexes/rows/acme/"))
    feature_manifest = f"{made['feature'].prefix}manifest.json"

    _flip(store, fresh.object_key)
    _flip(store, set_part)
    store.put_bytes(original, b"not the original bytes")
    store.put_bytes(feature_manifest, store.get_bytes(feature_manifest) + b"\n")
    store.delete(export_part)
    store.delete(index_run)
    orphans = ["data/acme/orders/upload-0000009999.parquet", "training_sets/acme/ghost/v0001/x/part-00000.parquet",
               f"{made['export'][:-len('manifest.json')]}20990101T000000Z-abcdef/orders/part-00000.parquet",
               f"{made['training_set'].prefix}stray.bin"]
    for key in orphans:
        store.put_bytes(key, b"nobody's")

    report = integrity.verify(store, catalog, orphan_min_age=0)
    assert not report.ok
    assert _found(report) == {
        ("changed", "data", fresh.object_key), ("changed", "training_set_part", set_part),
        ("changed", "quarantine_original", original), ("changed", "feature_manifest", feature_manifest),
        ("missing", "export_part", export_part), ("missing", "index_run", index_run),
        ("orphaned", "orphan_object", orphans[0]), ("orphaned", "training_set_part", orphans[1]),
        ("orphaned", "export_part", orphans[2]), ("orphaned", "training_set_part", orphans[3]),
    }
    changed = {f.key: f for f in report.of_kind("changed")}
    assert fresh.data_sha256 and changed[fresh.object_key].expected["sha256"] == fresh.data_sha256
    assert changed[fresh.object_key].actual["sha256"] != changed[fresh.object_key].expected["sha256"]
    assert changed[original].actual["size"] == len(b"not the original bytes") != quarantined.size

    # Young unnamed objects may be a write whose commit is to come: not reported (those
    # under training_sets/, features/, exports/ are counted; cleanup's prefixes are its own).
    young = integrity.verify(store, catalog)
    assert not young.of_kind("orphaned") and young.not_yet_orphaned == 3
    # Another tenant's pass sees none of acme's problems.
    assert integrity.verify(store, catalog, tenant="beta", orphan_min_age=0).ok


def test_the_cli_exits_1_and_lists_each_finding(s3_store, postgresql_catalog, pg_catalog_url, monkeypatch, capsys):
    store, catalog = s3_store, postgresql_catalog
    made = lifecycle(store, catalog)
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    monkeypatch.setenv("DATA_PLATFORM_TEMP_OBJECT_HOURS", "0")
    assert cli.main(["verify", "--record", "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    # Nothing to record: ingestion recorded every data checksum already.
    assert clean["ok"] and clean["recorded"] == 0 and clean["counts"] == {"missing": 0, "changed": 0, "orphaned": 0}

    tampered = next(u.object_key for u in catalog.list_uploads(tenant="acme") if u.state == FRESH)
    deleted = json.loads(store.get_bytes(f"{made['feature'].prefix}manifest.json"))["parts"][0]["key"]
    orphan = "archive/acme/orders/upload-0000008888.parquet"
    _flip(store, tampered)
    store.delete(deleted)
    store.put_bytes(orphan, b"x")
    assert cli.main(["verify", "--json"]) == 1
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert not report["ok"] and report["counts"] == {"missing": 1, "changed": 1, "orphaned": 1}
    assert [(f["what"], f["key"]) for f in report["missing"]] == [("feature_part", deleted)]
    assert [(f["what"], f["key"]) for f in report["changed"]] == [("data", tampered)]
    assert [(f["what"], f["key"]) for f in report["orphaned"]] == [("orphan_object", orphan)]
    change = report["changed"][0]
    assert change["expected"]["sha256"] and change["actual"]["sha256"] != change["expected"]["sha256"]
    assert report["missing"][0]["expected"]["sha256"] and report["missing"][0]["actual"] is None
    assert len(out.err.strip().splitlines()) == 1 and "1 missing, 1 changed, 1 orphaned" in out.err
    assert cli.main(["verify", "--tenant", "Bad/Name", "--json"]) == 1
    assert "invalid tenant" in capsys.readouterr().err


def test_the_integrity_asset_checks_fail_when_they_should(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    made = lifecycle(store, catalog)
    resources = {"object_store": ObjectStoreResource(storage_url=str(store.root)),
                 "catalog": CatalogResource(catalog_url=catalog.url)}

    def run() -> dict:
        result = dg.materialize([integrity_asset], resources=resources)
        assert result.success  # findings fail the checks, not the run
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    checks = run()
    assert {name: c.passed for name, c in checks.items()} == {
        NO_MISSING_OBJECTS: True, NO_CHANGED_OBJECTS: True, NO_ORPHANED_OBJECTS: True}

    set_part = json.loads(store.get_bytes(f"{made['training_set'].prefix}manifest.json"))["parts"][0]["key"]
    _flip(store, set_part)
    store.delete(made["export"])  # the manifest goes: its parts are named by nothing now
    checks = run()
    assert not checks[NO_CHANGED_OBJECTS].passed and checks[NO_MISSING_OBJECTS].passed
    assert checks[NO_CHANGED_OBJECTS].severity == dg.AssetCheckSeverity.ERROR
    assert checks[NO_CHANGED_OBJECTS].metadata["count"].value == 1
    assert checks[NO_CHANGED_OBJECTS].metadata["keys"].value == [set_part]
    assert checks[NO_ORPHANED_OBJECTS].passed  # the export's parts are minutes old: not orphans yet

    assert integrity_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert integrity_schedule.job_name == integrity_job.name and integrity_schedule.execution_timezone == "UTC"
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 5, 0, tzinfo=UTC))
    assert len(integrity_schedule.evaluate_tick(context).run_requests) == 1
    assert integrity.orphan_min_age_hours() == 24

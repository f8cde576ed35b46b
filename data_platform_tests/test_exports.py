"""Weekly ML exports: what a week holds, the three formats read back, atomic replacement
with a crash before the manifest, verification (tampered and missing parts, through the
CLI), tenant settings and isolation, and the Dagster asset and schedule over S3."""

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from data_platform import exports, layout
from data_platform.catalog import ARCHIVED, FRESH, QUARANTINED, USED, Catalog
from data_platform.catalog.schema import uploads
from data_platform.contracts import ContractError, ContractRegistry, TenantSettings
from data_platform.definitions import defs
from data_platform.defs.exports.assets import ml_exports, week_of_partition
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.training_sets import TrainingSetRequest, create_training_set
from data_platform_tests.support import ingest_everything, jsonl, read_data

WEEK = "2026-W47"
MONDAY = datetime(2026, 11, 16)  # naive UTC, as the catalog keeps times
CLI = [str(Path(sys.executable).with_name("data-platform"))]


class Crash(BaseException):
    """A process killed mid-way: not an Exception, so nothing cleans up after it."""


def _rows(prefix: str, n: int) -> list[dict]:
    # Values that each format must carry exactly: commas, quotes, newlines, nulls, UTC times.
    return [{"id": f"{prefix}-{i}", "n": i, "score": i + 0.25, "ok": i % 2 == 0,
             "text": f'row {i}, "quoted"\nsecond line' if i % 3 == 0 else (None if i % 3 == 1 else f"plain {i}"),
             "at": f"2026-11-1{6 + i % 3}T0{i % 10}:30:15Z"} for i in range(n)]


def _ingest(store, catalog, files: dict[str, list[dict]]) -> dict[str, int]:
    """Land `{tenant/dataset/name: rows}`, ingest, and return {name: upload id}."""
    for path, rows in files.items():
        store.put_bytes(f"landing/{path}.jsonl", jsonl(rows))
    _, outcomes, failures = ingest_everything(store, catalog)
    assert not failures and all(o.state == FRESH for o in outcomes), outcomes
    by_key = {u.landing_key: u.id for u in catalog.list_uploads()}
    return {path: by_key[f"landing/{path}.jsonl"] for path in files}


def _set(catalog: Catalog, upload_id: int, **values) -> None:
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().where(uploads.c.id == upload_id).values(**values))


def _in_week(catalog: Catalog, ids, when: datetime = MONDAY + timedelta(days=2)) -> None:
    for upload_id in ids:
        _set(catalog, upload_id, ingested_at=when)


def _parts_by_hash(store, manifest: dict) -> None:
    """Byte for byte: each part's sha256 and size are the manifest's."""
    for part in manifest["parts"]:
        data = store.get_bytes(part["key"])
        assert hashlib.sha256(data).hexdigest() == part["sha256"] and len(data) == part["bytes"], part["key"]


def _source_rows(store, catalog: Catalog, ids) -> list[dict]:
    out = []
    for upload_id in ids:
        table = read_data(store, catalog.get(upload_id).object_key)
        out += [{**r, "_upload_id": upload_id} for r in table.to_pylist()]
    return sorted(out, key=lambda r: r["id"])


# -- weeks ----------------------------------------------------------------------------------------


def test_week_keys_name_real_iso_weeks_and_their_utc_windows():
    week = exports.Week.parse(WEEK)
    assert (week.start, week.end) == (datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))
    assert exports.Week.containing(datetime(2026, 11, 22, 23, 59, tzinfo=UTC)).key == WEEK
    assert exports.Week.containing(datetime(2026, 11, 23, tzinfo=UTC)).key == "2026-W48"
    assert exports.Week.parse("2026-W01").start == datetime(2025, 12, 29, tzinfo=UTC)  # ISO: Jan 1 is a Thursday
    assert exports.Week.parse("2026-W53").end == datetime(2027, 1, 4, tzinfo=UTC)  # 2026 has 53 weeks
    assert layout.export_prefix("acme", WEEK) == "exports/acme/2026-W47/"
    for bad in ("2025-W53", "2026-W00", "2026-W54", "2026-47", "2026-w47", "../x", "2026-W47/.."):
        with pytest.raises(layout.InvalidKey):
            layout.check_week(bad)
        with pytest.raises(exports.ExportError):
            exports.Week.parse(bad)
    with pytest.raises(layout.InvalidKey):
        layout.export_prefix("../acme", WEEK)


def test_a_week_holds_fresh_and_used_uploads_ingested_inside_its_utc_window(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    ids = _ingest(store, catalog, {f"acme/events/{n}": _rows(n, 3) for n in
                                   ("before", "first", "last", "after", "used", "archived", "gone")})
    tick = timedelta(microseconds=1)
    week_end = MONDAY + timedelta(days=7)
    _in_week(catalog, [ids["acme/events/before"]], MONDAY - tick)
    _in_week(catalog, [ids["acme/events/first"]], MONDAY)
    _in_week(catalog, [ids["acme/events/last"]], week_end - tick)
    _in_week(catalog, [ids["acme/events/after"]], week_end)
    _in_week(catalog, [ids[f"acme/events/{n}"] for n in ("used", "archived", "gone")])
    # Fresh uploads of other weeks must not be swept into the training set below.
    _set(catalog, ids["acme/events/archived"], state=ARCHIVED)
    _set(catalog, ids["acme/events/gone"], state=QUARANTINED)
    for name in ("before", "first", "last", "after"):
        _set(catalog, ids[f"acme/events/{name}"], quality=0.1)
    _set(catalog, ids["acme/events/used"], quality=0.9)
    create_training_set(store, catalog, TrainingSetRequest("acme", min_quality=0.5), actor="t")
    assert catalog.get(ids["acme/events/used"]).state == USED

    result = exports.export_week(store, catalog, "acme", WEEK)
    files = result.manifest["files"]
    assert sorted(f["upload_id"] for f in files) == sorted(ids[f"acme/events/{n}"] for n in ("first", "last", "used"))
    assert {f["upload_id"]: f["state"] for f in files}[ids["acme/events/used"]] == USED
    assert result.manifest["rows"] == 9 and result.manifest["window"] == {
        "start": "2026-11-16T00:00:00+00:00", "end": "2026-11-23T00:00:00+00:00"}
    # An empty week is a manifest with no parts, not an error.
    empty = exports.export_week(store, catalog, "acme", "2026-W40")
    assert empty.manifest["empty"] and empty.manifest["parts"] == [] and empty.manifest["rows"] == 0
    assert exports.verify_export(store, "exports/acme/2026-W40/")["ok"]


# -- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_each_format_reads_back_as_the_source_rows(store, sqlite_catalog, fmt, monkeypatch):
    catalog = sqlite_catalog
    ids = _ingest(store, catalog, {"acme/events/a": _rows("a", 7), "acme/events/b": _rows("b", 5),
                                   "acme/clicks/c": [{"id": f"c{i}", "clicked": True} for i in range(4)]})
    _in_week(catalog, ids.values())
    monkeypatch.setattr(exports, "GROUP_BYTES", 1)  # one part per file: several parts per dataset
    result = exports.export_week(store, catalog, "acme", WEEK, fmt=fmt, run_id="run-1")
    manifest = result.manifest
    assert manifest["format"] == fmt and manifest["run_id"] == "run-1" and len(manifest["parts"]) == 3
    assert all(p["key"].startswith(f"exports/acme/{WEEK}/{manifest['export_id']}/") and p["key"].endswith(f".{fmt}")
               for p in manifest["parts"])
    assert [p["key"].rsplit("/", 1)[1] for p in manifest["parts"] if p["dataset"] == "events"] == [
        f"part-00000.{fmt}", f"part-00001.{fmt}"]
    _parts_by_hash(store, manifest)
    assert exports.verify_export(store, f"exports/acme/{WEEK}/")["problems"] == []
    events = [p for p in manifest["parts"] if p["dataset"] == "events"]
    expected = _source_rows(store, catalog, [ids["acme/events/a"], ids["acme/events/b"]])
    got = []
    for part in events:
        data = store.get_bytes(part["key"])
        if fmt == "parquet":
            got += pq.read_table(io.BytesIO(data)).to_pylist()
        elif fmt == "jsonl":
            got += [json.loads(line) for line in data.decode().splitlines()]
        else:
            got += list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    got.sort(key=lambda r: r["id"])
    if fmt == "jsonl":
        expected = [{**r, "at": r["at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")} for r in expected]
    elif fmt == "csv":
        def text(v):
            return "" if v is None else ("true" if v else "false") if isinstance(v, bool) else (
                v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(v, datetime) else str(v))
        expected = [{k: text(v) for k, v in r.items()} for r in expected]
    assert got == expected and len(got) == 12
    assert list(got[0]) == [f["name"] for f in manifest["schemas"]["events"]]  # the schema's column order
    assert {f["name"]: f["type"] for f in manifest["schemas"]["events"]}["at"] == "timestamp[us, tz=UTC]"


# -- atomic replacement ---------------------------------------------------------------------------


def test_rerunning_a_week_replaces_it_atomically_even_after_a_crash_before_the_manifest(store, sqlite_catalog,
                                                                                        monkeypatch):
    catalog = sqlite_catalog
    ids = _ingest(store, catalog, {"acme/events/a": _rows("a", 6)})
    _in_week(catalog, ids.values())
    first = exports.export_week(store, catalog, "acme", WEEK, fmt="parquet")
    old_keys = [p["key"] for p in first.manifest["parts"]]
    prefix = layout.export_prefix("acme", WEEK)

    # More data arrives in the week; the re-run dies just before its manifest PUT.
    more = _ingest(store, catalog, {"acme/events/b": _rows("b", 4)})
    _in_week(catalog, more.values())
    real_put = store.put_bytes

    def crash_at_manifest(key, data):
        if key.endswith("/manifest.json"):
            raise Crash()
        real_put(key, data)

    monkeypatch.setattr(store, "put_bytes", crash_at_manifest)
    with pytest.raises(Crash):
        exports.export_week(store, catalog, "acme", WEEK, fmt="csv")
    monkeypatch.setattr(store, "put_bytes", real_put)
    # The old export is the week's export, complete and verifiable; the crash left orphan parts.
    assert exports.read_manifest(store, "acme", WEEK)["export_id"] == first.manifest["export_id"]
    assert exports.verify_export(store, prefix)["problems"] == []
    _parts_by_hash(store, first.manifest)
    ids_in_store = {i.key[len(prefix):].split("/")[0] for i in store.list(prefix)
                    if not i.key.endswith("manifest.json")}
    (orphan,) = ids_in_store - {first.manifest["export_id"]}

    # The next run: at the moment its manifest goes in, the old export is still whole.
    seen = []

    def check_then_put(key, data):
        if key.endswith("/manifest.json"):
            seen.append(exports.verify_export(store, prefix))
        real_put(key, data)

    monkeypatch.setattr(store, "put_bytes", check_then_put)
    second = exports.export_week(store, catalog, "acme", WEEK, fmt="csv")
    monkeypatch.setattr(store, "put_bytes", real_put)
    assert seen[0]["ok"] and seen[0]["export_id"] == first.manifest["export_id"]
    assert second.manifest["replaces"] == first.manifest["export_id"] and second.manifest["rows"] == 10
    assert second.removed == [first.manifest["export_id"]]  # the young orphan may be a run in progress
    assert not any(store.exists(k) for k in old_keys)
    assert exports.verify_export(store, prefix)["ok"]
    # An hour later the orphan is swept too, and the week holds exactly one export.
    third = exports.export_week(store, catalog, "acme", WEEK, fmt="csv", now=datetime.now(UTC) + timedelta(hours=2))
    assert set(third.removed) == {second.manifest["export_id"], orphan}
    left = {i.key for i in store.list(prefix)}
    assert left == {prefix + "manifest.json"} | {p["key"] for p in third.manifest["parts"]}
    _parts_by_hash(store, third.manifest)


def test_a_failed_export_removes_its_own_parts_and_keeps_the_old_export(local_store, sqlite_catalog, monkeypatch):
    store, catalog = local_store, sqlite_catalog
    ids = _ingest(store, catalog, {"acme/events/a": _rows("a", 3)})
    _in_week(catalog, ids.values())
    first = exports.export_week(store, catalog, "acme", WEEK)
    real_put = store.put_bytes

    def refuse_manifest(key, data):
        if key.endswith("/manifest.json"):
            raise OSError("store said no")
        real_put(key, data)

    monkeypatch.setattr(store, "put_bytes", refuse_manifest)
    with pytest.raises(OSError):
        exports.export_week(store, catalog, "acme", WEEK)
    prefix = layout.export_prefix("acme", WEEK)
    left = {i.key for i in store.list(prefix)}
    assert left == {prefix + "manifest.json"} | {p["key"] for p in first.manifest["parts"]}


# -- verification through the CLI ---------------------------------------------------------------------


def _cli(env, *args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=120)


def test_cli_exports_a_week_and_verify_export_finds_tampered_and_missing_parts(s3_store, postgresql_catalog,
                                                                               pg_catalog_url, tmp_path):
    store, catalog = s3_store, postgresql_catalog
    ids = _ingest(store, catalog, {"acme/events/a": _rows("a", 5), "acme/clicks/c": [{"id": "c1", "x": 1}],
                                   "other/events/o": _rows("o", 2)})
    _in_week(catalog, ids.values())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_PLATFORM_")}
    env.update(DATA_PLATFORM_HOME=str(tmp_path / "home"), DATA_PLATFORM_STORAGE_URL="s3://test-bucket/root",
               DATA_PLATFORM_CATALOG_URL=pg_catalog_url)

    out = _cli(env, "export", "--tenant", "acme", "--week", WEEK, "--format", "jsonl", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["format"], result["rows"], result["parts"], result["files"]) == ("jsonl", 6, 2, 2)
    assert result["url"] == f"s3://test-bucket/root/exports/acme/{WEEK}/manifest.json"
    for path in (f"exports/acme/{WEEK}/", f"exports/acme/{WEEK}/manifest.json", result["url"]):
        ok = _cli(env, "verify-export", path, "--json")
        assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] and json.loads(ok.stdout)["parts_checked"] == 2

    events, clicks = sorted(result["manifest"]["parts"], key=lambda p: p["dataset"] != "events")
    data = bytearray(store.get_bytes(events["key"]))
    data[10] ^= 1  # same size, one bit changed
    store.put_bytes(events["key"], bytes(data))
    store.delete(clicks["key"])
    bad = _cli(env, "verify-export", f"exports/acme/{WEEK}", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert not report["ok"] and report["problems"] == [f"{clicks['key']}: missing",
                                                       f"{events['key']}: sha256 differs from the manifest"]
    assert len(bad.stderr.strip().splitlines()) == 1 and "2 problem(s)" in bad.stderr

    # One-line errors: a bad week, a path outside the store, a tenant's broken settings.
    for args, message in ((("export", "--tenant", "acme", "--week", "2026-W54"), "2026-W54"),
                          (("verify-export", "s3://elsewhere/exports/acme/2026-W47/"), "not below the store root"),
                          (("verify-export", "data/acme/events"), "expected exports/")):
        failed = _cli(env, *args, "--json")
        assert failed.returncode == 1 and failed.stdout == "" and message in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
    store.put_bytes("_platform/contracts/acme/_tenant.yaml", b"export: {format: xlsx}\n")
    failed = _cli(env, "export", "--tenant", "acme", "--week", WEEK, "--json")
    assert failed.returncode == 1 and "_platform/contracts/acme/_tenant.yaml: export.format: expected one of " \
        "parquet, csv, jsonl, got 'xlsx'" in failed.stderr
    # The other tenant's export was never touched.
    assert not any(store.list("exports/other/"))


# -- tenants -------------------------------------------------------------------------------------------


def test_tenant_settings_are_found_like_contracts_and_checked(local_store, tmp_path):
    registry = ContractRegistry(tmp_path / "contracts", local_store)
    assert registry.tenant_settings("acme") == TenantSettings("parquet", True, None)
    local_store.put_bytes("_platform/contracts/acme/_tenant.yaml", b"export: {format: csv}\n")
    assert registry.tenant_settings("acme").export_format == "csv"
    directory = tmp_path / "contracts" / "acme"
    directory.mkdir(parents=True)
    (directory / "_tenant.yml").write_text("export:\n  format: jsonl\n  enabled: false\n")
    assert registry.tenant_settings("acme") == TenantSettings("jsonl", False, str(directory / "_tenant.yml"))
    for text, problem in (("export: {format: xlsx}", "export.format: expected one of parquet, csv, jsonl"),
                          ("export: {enabled: yes please}", "export.enabled: expected true or false"),
                          ("export: {fromat: csv}", "export.fromat: unknown key 'fromat'"),
                          ("exports: {}", "exports: unknown key"),
                          ("export: [csv]", "export: expected a mapping"),
                          ("export: {format: csv", "invalid YAML")):
        (directory / "_tenant.yml").write_text(text)
        with pytest.raises(ContractError, match=f"^{re.escape(str(directory / '_tenant.yml'))}: .*{problem}"):
            registry.tenant_settings("acme")
    with pytest.raises(layout.InvalidKey):
        registry.tenant_settings("../acme")


def test_a_tenants_export_holds_only_its_own_data_and_verify_keeps_it_in_its_prefix(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    ids = _ingest(store, catalog, {"acme/events/a": _rows("a", 3), "other/events/o": _rows("o", 4)})
    _in_week(catalog, ids.values())
    other = exports.export_week(store, catalog, "other", WEEK)
    acme = exports.export_week(store, catalog, "acme", WEEK)
    assert [f["upload_id"] for f in acme.manifest["files"]] == [ids["acme/events/a"]]
    assert all(p["key"].startswith("exports/acme/") for p in acme.manifest["parts"])
    exports.export_week(store, catalog, "acme", WEEK)  # replacing acme's week leaves other's alone
    assert exports.verify_export(store, "exports/other/2026-W47")["ok"]
    assert store.exists(other.manifest["parts"][0]["key"])
    # A manifest that points into another tenant's export is reported, not followed.
    forged = {**acme.manifest, "parts": other.manifest["parts"]}
    store.put_bytes(f"exports/acme/{WEEK}/manifest.json", json.dumps(forged).encode())
    report = exports.verify_export(store, (store.root / "exports/acme/2026-W47/manifest.json").as_uri())
    assert not report["ok"] and any("not under the export's prefix" in p for p in report["problems"])
    # A catalog row that claims another tenant's object is refused before anything is read.
    _set(catalog, ids["acme/events/a"], object_key=catalog.get(ids["other/events/o"]).object_key)
    with pytest.raises(exports.ExportError, match="is not acme's data"):
        exports.export_week(store, catalog, "acme", WEEK)


# -- Dagster ---------------------------------------------------------------------------------------------


def test_the_schedule_asks_once_per_week_at_the_configured_time(monkeypatch):
    schedule = defs.get_repository_def().get_schedule_def("ml_exports_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING and schedule.execution_timezone == "UTC"

    def asked(now: datetime) -> str:
        context = dg.build_schedule_context(scheduled_execution_time=now, repository_def=defs.get_repository_def())
        (request,) = schedule.evaluate_tick(context).run_requests
        assert request.run_key == f"ml_exports:{request.partition_key}"  # one run per week, whatever the ticks
        return request.partition_key

    # Default: Monday 03:00 UTC, the week that just ended.
    monkeypatch.delenv("DATA_PLATFORM_EXPORT_AT", raising=False)
    assert asked(datetime(2026, 11, 23, 2, 45, tzinfo=UTC)) == "2026-11-09"  # not yet: still the week before
    assert asked(datetime(2026, 11, 23, 3, 0, tzinfo=UTC)) == "2026-11-16"
    assert week_of_partition("2026-11-16") == WEEK
    assert asked(datetime(2026, 1, 5, 3, 0, tzinfo=UTC)) == "2025-12-29" and week_of_partition("2025-12-29") == "2026-W01"
    # Configured later in the week: the week ended on Monday is asked for on Wednesday 18:30.
    monkeypatch.setenv("DATA_PLATFORM_EXPORT_AT", "wed 18:30")
    assert asked(datetime(2026, 11, 25, 18, 15, tzinfo=UTC)) == "2026-11-09"
    assert asked(datetime(2026, 11, 25, 18, 30, tzinfo=UTC)) == "2026-11-16"
    monkeypatch.setenv("DATA_PLATFORM_EXPORT_AT", "someday")
    with pytest.raises(dg.DagsterError) as failed:  # the tick fails, in the UI, with the reason
        asked(datetime(2026, 11, 25, 18, 30, tzinfo=UTC))
    assert "DATA_PLATFORM_EXPORT_AT='someday'" in str(failed.value.__cause__)
    assert defs.resolve_job_def("ml_exports_job").partitions_def.get_partition_keys()[0] == "2025-12-29"


def test_the_weekly_asset_exports_every_tenant_over_s3(s3_store, postgresql_catalog, pg_catalog_url, tmp_path,
                                                        monkeypatch):
    store, catalog = s3_store, postgresql_catalog
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    monkeypatch.setenv("DATA_PLATFORM_CONTRACTS_DIR", str(tmp_path / "contracts"))
    ids = _ingest(store, catalog, {"acme/events/a": _rows("a", 8), "acme/events/b": _rows("b", 3),
                                   "acme/clicks/c": [{"id": "c", "x": 1}], "other/events/o": _rows("o", 5),
                                   "quiet/events/q": _rows("q", 2), "off/events/f": _rows("f", 2)})
    _in_week(catalog, [i for name, i in ids.items() if not name.startswith("quiet/")])
    store.put_bytes("_platform/contracts/other/_tenant.yaml", b"export: {format: jsonl}\n")
    (tmp_path / "contracts" / "off").mkdir(parents=True)
    (tmp_path / "contracts" / "off" / "_tenant.yaml").write_text("export: {enabled: false}\n")

    resources = {"object_store": ObjectStoreResource(), "catalog": CatalogResource()}
    result = dg.materialize([ml_exports], partition_key="2026-11-16", resources=resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    (mat,) = result.asset_materializations_for_node("ml_exports")
    meta = mat.metadata
    by_tenant = {r.data["tenant"]: r.data for r in meta["tenants"].value.records}
    assert {t: (r["status"], r["format"]) for t, r in by_tenant.items()} == {
        "acme": ("exported", "parquet"), "other": ("exported", "jsonl"), "quiet": ("empty", "parquet"),
        "off": ("disabled", "parquet")}
    assert meta["week"].value == WEEK and meta["dagster/row_count"].value == 17 and meta["tenants_exported"].value == 3
    assert meta["parts"].value == 3 and meta["tenants_empty"].value == 1
    for tenant in ("acme", "other", "quiet"):
        manifest = exports.read_manifest(store, tenant, WEEK)
        assert manifest["run_id"] == result.run_id and by_tenant[tenant]["manifest_key"] == \
            f"exports/{tenant}/{WEEK}/manifest.json"
        _parts_by_hash(store, manifest)
        catalog_rows = {u.id: u.rows for u in catalog.list_uploads(tenant=tenant)}
        assert {f["upload_id"]: f["rows"] for f in manifest["files"]} == (
            {} if tenant == "quiet" else catalog_rows)
        assert manifest["rows"] == sum(f["rows"] for f in manifest["files"]) == by_tenant[tenant]["rows"]
        assert exports.verify_export(store, f"s3://test-bucket/root/exports/{tenant}/{WEEK}/")["ok"]
    assert exports.read_manifest(store, "quiet", WEEK)["empty"]
    assert not any(store.list("exports/off/"))
    parquet_rows = sum(pq.read_table(io.BytesIO(store.get_bytes(p["key"]))).num_rows
                       for p in exports.read_manifest(store, "acme", WEEK)["parts"])
    assert parquet_rows == 12

    # A tenant whose settings are broken fails the run by name; the others are still exported.
    (tmp_path / "contracts" / "off" / "_tenant.yaml").write_text("export: {format: xml}\n")
    again = dg.materialize([ml_exports], partition_key="2026-11-16", resources=resources, raise_on_error=False,
                           instance=dg.DagsterInstance.ephemeral())
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "off: " in failure.event_specific_data.error.message and "export.format" in \
        failure.event_specific_data.error.message
    assert exports.read_manifest(store, "acme", WEEK)["run_id"] == again.run_id

"""Training sets: exactly-once claims of fresh data, snapshots with manifests, lineage,
crash recovery, samples. Real pipeline, real catalogs (SQLite and PostgreSQL), both stores."""

import json
import multiprocessing
import threading
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from data_platform import training_sets as tsets
from data_platform.catalog import (
    BUILDING, COMPLETE, FRESH, RELEASED, USED, Catalog, NoFreshData, TransitionConflict, utcnow,
)
from data_platform.catalog.schema import training_set_files, uploads
from data_platform.storage import LocalObjectStore
from data_platform.training_sets import TrainingSetError, TrainingSetRequest, create_training_set
from data_platform_tests.support import ingest_everything, jsonl


def _rows(prefix: str, n: int, start: int = 0) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "value": i, "text": f"row {prefix} number {i} says something"}
            for i in range(start, start + n)]


def _land(store, tenant: str, dataset: str, name: str, rows: list[dict]) -> None:
    store.put_bytes(f"landing/{tenant}/{dataset}/{name}.jsonl", jsonl(rows))


@pytest.fixture
def fresh(store, catalog):
    """Three fresh uploads in acme/events (10, 20, 30 rows) and one in acme/clicks."""
    for i, n in enumerate((10, 20, 30)):
        _land(store, "acme", "events", f"e{i}", _rows(f"e{i}", n))
    _land(store, "acme", "clicks", "c0", [{"id": f"c{i}", "clicked": True} for i in range(5)])
    _land(store, "other", "events", "o0", _rows("o", 7))
    _, outcomes, failures = ingest_everything(store, catalog)
    assert not failures and all(o.state == FRESH for o in outcomes), outcomes
    return store, catalog


def _states(catalog: Catalog, tenant: str = "acme") -> dict[int, str]:
    return {u.id: u.state for u in catalog.list_uploads(tenant=tenant)}


def test_a_training_set_snapshots_fresh_data_marks_it_used_and_writes_a_manifest(fresh):
    store, catalog = fresh
    result = create_training_set(store, catalog, TrainingSetRequest("acme", name="churn", consumer="trainer-1"),
                                 actor="cli", run_id="run-1")
    ts, manifest = result.training_set, result.manifest
    assert ts.state == COMPLETE and ts.version == 1 and ts.prefix == "training_sets/acme/churn/v0001/"
    assert set(_states(catalog).values()) == {USED}
    assert {u.state for u in catalog.list_uploads(tenant="other")} == {FRESH}  # other tenants untouched
    assert manifest["rows"] == ts.rows == 65 and len(manifest["files"]) == ts.files == 4
    assert {f["dataset"] for f in manifest["files"]} == {"events", "clicks"}
    # The manifest in the store is the one recorded, and every part matches its checksum.
    stored = tsets.read_manifest(store, ts)
    assert stored == manifest and tsets.verify_snapshot(store, stored) == []
    events = tsets.table_of(store, manifest, "events")
    assert events.num_rows == 60 and set(events.column(tsets.SOURCE_COLUMN).to_pylist()) == {
        f["upload_id"] for f in manifest["files"] if f["dataset"] == "events"}
    assert sorted(events.column("value").to_pylist()) == sorted(list(range(10)) + list(range(20)) + list(range(30)))
    # Usage lineage: which set, which run, which consumer.
    lineage = catalog.usage_lineage([f["upload_id"] for f in manifest["files"]])
    assert all(entries == [{"training_set": "churn", "version": 1, "training_set_id": ts.id, "kind": "build",
                            "consumer": "trainer-1", "run_id": "run-1", "at": entries[0]["at"]}]
               for entries in lineage.values()) and len(lineage) == 4
    assert all(u.uses == 1 for u in catalog.list_uploads(tenant="acme"))
    # A second set of the same name has nothing fresh left: a clear error, and no version is used up.
    with pytest.raises(NoFreshData, match="no fresh data for tenant 'acme'"):
        create_training_set(store, catalog, TrainingSetRequest("acme", name="churn"), actor="cli")
    assert [t.version for t in catalog.training_sets(tenant="acme")] == [1]


def test_filters_select_datasets_quality_and_a_row_budget_of_whole_files(fresh):
    store, catalog = fresh
    with catalog.engine.begin() as conn:  # give one events file a low quality score
        low = conn.execute(sa.select(uploads.c.id).where(uploads.c.rows == 20)).scalar_one()
        conn.execute(uploads.update().where(uploads.c.id == low).values(quality=0.1))
    with pytest.raises(NoFreshData, match="max_rows=5 is smaller than the oldest matching fresh file"):
        create_training_set(store, catalog, TrainingSetRequest("acme", datasets=("events",), max_rows=5), actor="t")
    ts = create_training_set(store, catalog, TrainingSetRequest("acme", datasets=("events",), min_quality=0.5,
                                                                max_rows=45), actor="t").training_set
    # Oldest first, whole files, the low-quality file skipped: 10 + 30 = 40 <= 45.
    assert ts.rows == 40 and ts.files == 2
    assert ts.filters == {"datasets": ["events"], "min_quality": 0.5, "max_rows": 45, "sample_rows": None}
    states = {u.rows: u.state for u in catalog.list_uploads(tenant="acme", dataset="events")}
    assert states == {10: USED, 20: FRESH, 30: USED}


def test_requests_are_checked_before_anything_is_claimed():
    for bad in (dict(tenant="Acme"), dict(tenant="acme", name="../x"), dict(tenant="acme", min_quality=1.5),
                dict(tenant="acme", max_rows=0), dict(tenant="acme", datasets=("a/b",)),
                dict(tenant="acme", consumer="bad consumer")):
        with pytest.raises(TrainingSetError):
            TrainingSetRequest(**bad)


def test_versions_count_up_per_name_and_training_path_is_the_newest(fresh):
    store, catalog = fresh
    first = create_training_set(store, catalog, TrainingSetRequest("acme", datasets=("clicks",)), actor="t")
    second = create_training_set(store, catalog, TrainingSetRequest("acme", datasets=("events",)), actor="t")
    assert (first.training_set.version, second.training_set.version) == (1, 2)
    assert tsets.latest_training_set(catalog, "acme").id == second.training_set.id
    assert tsets.latest_training_set(catalog, "other") is None


def test_a_recorded_read_adds_a_use_to_every_file(fresh):
    store, catalog = fresh
    ts = create_training_set(store, catalog, TrainingSetRequest("acme"), actor="t").training_set
    assert catalog.record_read(ts.id, consumer="model-b", run_id="train-7") == 4
    assert {u.uses for u in catalog.list_uploads(tenant="acme")} == {2}
    kinds = {e["kind"] for entries in catalog.usage_lineage(tenant="acme").values() for e in entries}
    assert kinds == {"build", "read"}


class Crash(BaseException):
    """A builder killed mid-way: not an Exception, so nothing cleans up after it."""


@pytest.mark.parametrize("step", ["after_claim", "after_first_part", "after_manifest"])
def test_a_build_that_crashes_is_completed_by_the_next_run_never_orphaned(fresh, monkeypatch, step):
    store, catalog = fresh
    real_upload, real_put, real_complete = store.upload_file, store.put_bytes, catalog.complete_training_set

    def crash_on_part(path, key, progress=None):
        if step == "after_claim":
            raise Crash()
        real_upload(path, key, progress)
        if step == "after_first_part":
            raise Crash()

    def crash_after_manifest(key, data):
        real_put(key, data)
        if key.endswith("manifest.json") and step == "after_manifest":
            raise Crash()

    monkeypatch.setattr(store, "upload_file", crash_on_part)
    monkeypatch.setattr(store, "put_bytes", crash_after_manifest)
    with pytest.raises(Crash):
        create_training_set(store, catalog, TrainingSetRequest("acme", name="nightly"), actor="run-a")
    monkeypatch.setattr(store, "upload_file", real_upload)
    monkeypatch.setattr(store, "put_bytes", real_put)
    [crashed] = catalog.training_sets(tenant="acme")
    assert crashed.state == BUILDING and set(_states(catalog).values()) == {USED}  # claimed, held by the set
    # Within the lease nobody takes it over: a new build finds nothing fresh.
    with pytest.raises(NoFreshData):
        create_training_set(store, catalog, TrainingSetRequest("acme", name="nightly"), actor="run-b")
    # After the lease the next run completes it from the same files, then goes on with its own request.
    later = utcnow() + tsets.LEASE + timedelta(seconds=1)
    with pytest.raises(NoFreshData):
        create_training_set(store, catalog, TrainingSetRequest("acme", name="nightly"), actor="run-c", now=later)
    [done] = catalog.training_sets(tenant="acme")
    assert done.state == COMPLETE and done.id == crashed.id and done.rows == 65
    manifest = tsets.read_manifest(store, done)
    assert manifest["completed_by"] == "run-c" and tsets.verify_snapshot(store, manifest) == []
    assert tsets.table_of(store, manifest).num_rows == 65
    assert real_complete  # the real method was used throughout


def test_a_crash_inside_the_claim_transaction_claims_nothing(fresh, monkeypatch):
    store, catalog = fresh
    before = _states(catalog)

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(catalog, "_record_usage", crash)  # after the files moved, before the commit
    with pytest.raises(Crash):
        create_training_set(store, catalog, TrainingSetRequest("acme"), actor="t")
    assert _states(catalog) == before and catalog.training_sets() == []
    assert {u.uses for u in catalog.list_uploads(tenant="acme")} == {0}


def test_the_crashed_builder_cannot_complete_after_being_taken_over(fresh):
    store, catalog = fresh
    prefix_of = lambda v: f"training_sets/acme/x/v{v:04d}/"  # noqa: E731
    ts, _ = catalog.claim_training_set(tenant="acme", name="x", prefix_of=prefix_of, filters={}, consumer="c",
                                       actor="slow", run_id=None, lease=timedelta(seconds=1))
    taken = catalog.take_over_stale_training_sets("acme", "fast", lease=timedelta(minutes=5),
                                                  now=utcnow() + timedelta(seconds=2))
    assert [t.id for t in taken] == [ts.id]
    with pytest.raises(TransitionConflict):
        catalog.renew_training_set(ts.id, "slow", lease=timedelta(minutes=5))
    with pytest.raises(TransitionConflict):
        catalog.complete_training_set(ts.id, "slow", manifest_sha256="0" * 64, rows=1, size=1, detail={})


def test_data_that_cannot_be_combined_releases_the_claim(fresh):
    store, catalog = fresh
    # A later upload of acme/clicks whose `clicked` column is text where the first has booleans.
    _land(store, "acme", "clicks", "c1", [{"id": "x", "clicked": {"nested": [1, 2]}}])
    ingest_everything(store, catalog)
    with pytest.raises(TrainingSetError, match="dataset 'clicks': the files' schemas cannot be combined"):
        create_training_set(store, catalog, TrainingSetRequest("acme", datasets=("clicks",)), actor="t")
    [released] = catalog.training_sets(tenant="acme")
    assert released.state == RELEASED and "cannot be combined" in released.detail
    clicks = catalog.list_uploads(tenant="acme", dataset="clicks")
    assert {u.state for u in clicks} == {FRESH} and {u.uses for u in clicks} == {0}
    assert catalog.usage_lineage([u.id for u in clicks]) == {}


def test_a_sample_is_used_only_when_asked_for(fresh):
    store, catalog = fresh
    create_training_set(store, catalog, TrainingSetRequest("acme"), actor="t")
    with pytest.raises(NoFreshData):
        create_training_set(store, catalog, TrainingSetRequest("acme"), actor="t")
    result = create_training_set(store, catalog, TrainingSetRequest("acme", datasets=("events",), sample_rows=25),
                                 actor="t")
    ts, manifest = result.training_set, result.manifest
    assert ts.sample and manifest["sample"] is True and ts.state == COMPLETE
    table = tsets.table_of(store, manifest)
    assert 0 < table.num_rows <= 25 and manifest["rows"] == table.num_rows
    assert set(table.column(tsets.SOURCE_COLUMN).to_pylist()) <= {
        u.id for u in catalog.list_uploads(tenant="acme", dataset="events")}
    events = catalog.list_uploads(tenant="acme", dataset="events")
    assert {u.state for u in events} == {USED} and {u.uses for u in events} == {2}


# -- exactly once under concurrency (PostgreSQL) -----------------------------------------


def _many_fresh(store, catalog, n: int) -> None:
    for i in range(n):
        _land(store, "acme", "events", f"f{i:03d}", _rows(f"f{i}", 3))
    _, outcomes, failures = ingest_everything(store, catalog)
    assert not failures and sum(o.state == FRESH for o in outcomes) == n


def _assert_exactly_once(catalog: Catalog, n_files: int) -> None:
    with catalog.engine.connect() as conn:
        held = conn.execute(sa.select(training_set_files.c.upload_id)).scalars().all()
    assert len(held) == len(set(held)), "a file is in two training sets"
    used = {u.id for u in catalog.list_uploads(tenant="acme") if u.state == USED}
    assert set(held) == used, "a used file is in no training set, or a set holds a file that is not used"
    sets = catalog.training_sets(tenant="acme")
    assert all(ts.state == COMPLETE for ts in sets)
    assert sum(ts.files for ts in sets) == len(used) == n_files


def test_concurrent_builds_in_threads_never_share_a_file(local_store, postgresql_catalog):
    store, catalog = local_store, postgresql_catalog
    _many_fresh(store, catalog, 24)
    errors, barrier = [], threading.Barrier(6)

    def build(i: int) -> None:
        barrier.wait()
        try:
            # Two names: builds of one name take turns, builds of different names race on the rows.
            create_training_set(store, catalog, TrainingSetRequest("acme", name=f"shared-{i % 2}", max_rows=12),
                                actor=f"thread-{i}")
        except NoFreshData:
            pass
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    for _round in range(3):
        threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    _assert_exactly_once(catalog, 24)
    sets = catalog.training_sets(tenant="acme")
    # 24 files of 3 rows, at most 12 rows per set: 6 sets, or more when two builders'
    # SKIP LOCKED scans interleave and one of them gets a shorter run of files.
    assert len(sets) >= 6 and all(ts.rows <= 12 for ts in sets)
    for name in ("shared-0", "shared-1"):
        versions = sorted(ts.version for ts in sets if ts.name == name)
        assert versions == list(range(1, len(versions) + 1))


def _build_in_process(root: str, catalog_url: str, name: str, results) -> None:
    store, catalog = LocalObjectStore(root), Catalog(catalog_url)
    built = 0
    while True:
        try:
            create_training_set(store, catalog, TrainingSetRequest("acme", name=name, max_rows=6), actor=name)
            built += 1
        except NoFreshData:
            results.put((name, built))
            return


def test_concurrent_builds_in_processes_never_share_a_file(local_store, postgresql_catalog, pg_catalog_url):
    store, catalog = local_store, postgresql_catalog
    _many_fresh(store, catalog, 30)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(str(store.root), pg_catalog_url, f"proc{i}", results))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    built = dict(results.get(timeout=5) for _ in procs)
    assert sum(built.values()) == 15  # 30 files of 3 rows, 6 rows per set
    _assert_exactly_once(catalog, 30)


def test_manifest_is_json_with_the_contract_version_and_part_checksums(fresh):
    store, catalog = fresh
    manifest = create_training_set(store, catalog, TrainingSetRequest("acme"), actor="t").manifest
    raw = json.loads(store.get_bytes(f"{manifest['prefix']}manifest.json"))
    assert raw["contract_versions"] == {"clicks": [None], "events": [None]}  # no contracts: inferred types
    for part in raw["parts"]:
        assert part["key"].startswith(raw["prefix"]) and len(part["sha256"]) == 64
        assert pq.ParquetFile(store.fs_path(part["key"]), filesystem=store.filesystem).metadata.num_rows == part["rows"]


def test_a_crashed_sample_build_is_completed_with_the_same_seed(fresh, monkeypatch):
    store, catalog = fresh
    create_training_set(store, catalog, TrainingSetRequest("acme"), actor="t")  # nothing fresh after this
    real_upload = store.upload_file

    def crash(path, key, progress=None):
        raise Crash()

    monkeypatch.setattr(store, "upload_file", crash)
    with pytest.raises(Crash):
        create_training_set(store, catalog, TrainingSetRequest("acme", name="s", sample_rows=30), actor="a")
    monkeypatch.setattr(store, "upload_file", real_upload)
    later = utcnow() + tsets.LEASE + timedelta(seconds=1)
    with pytest.raises(NoFreshData):  # its own request: nothing fresh, and no sample asked for
        create_training_set(store, catalog, TrainingSetRequest("acme", name="s"), actor="b", now=later)
    sample = next(ts for ts in catalog.training_sets(tenant="acme") if ts.name == "s")
    assert sample.state == COMPLETE and sample.sample
    manifest = tsets.read_manifest(store, sample)
    assert manifest["completed_by"] == "b" and 0 < manifest["rows"] <= 30
    assert tsets.table_of(store, manifest).num_rows == manifest["rows"]

"""Feature store: definitions, registration (also concurrent), immutable versions, tenant
scoping, and point-in-time retrieval against a brute-force reference."""

import hashlib
import io
import json
import random
import re
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_platform import features as fs
from data_platform import layout
from data_platform.catalog import ARCHIVED, COMPLETE, FAILED, FRESH, Catalog, Identity, TransitionConflict, utcnow
from data_platform.catalog.schema import uploads
from data_platform.features import FeatureDefinition, FeatureError, FeatureNotFound
from data_platform_tests.support import ingest_everything, jsonl

T0 = datetime(2026, 3, 1, tzinfo=UTC)
_files = iter(range(1, 10**9))


def add_fresh(store, catalog: Catalog, table: pa.Table, *, tenant: str = "acme", dataset: str = "orders",
              state: str = FRESH) -> int:
    """Put a Parquet file where ingestion leaves fresh data and catalogue it (what an
    ingestion's commit leaves behind), in the state asked for."""
    n = next(_files)
    (upload,) = catalog.register([(Identity(f"landing/{tenant}/{dataset}/f{n}.parquet", f"e{n}", 1, utcnow()),
                                   tenant, dataset)], actor="test")
    key = (layout.archive_key if state == ARCHIVED else layout.data_key)(tenant, dataset, upload.id)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    store.put_bytes(key, sink.getvalue())
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().where(uploads.c.id == upload.id).values(
            state=state, object_key=key, rows=table.num_rows, sha256=hashlib.sha256(sink.getvalue()).hexdigest(),
            ingested_at=utcnow(), state_since=utcnow()))
    return upload.id


def definition(**overrides) -> dict:
    spec = {"name": "customer_orders", "entities": ["customer_id"], "event_timestamp": "ordered_at",
            "features": {"amount": "float", "items": "integer"}, "source": {"dataset": "orders"},
            "owner": "team-growth", "description": "what customers order"}
    spec.update(overrides)
    return spec


def orders(rows: list[tuple]) -> pa.Table:
    """(customer_id, ordered_at, amount, items) rows."""
    return pa.table({
        "customer_id": pa.array([r[0] for r in rows], pa.int64()),
        "ordered_at": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([r[2] for r in rows], pa.float64()),
        "items": pa.array([r[3] for r in rows], pa.int64()),
        "note": pa.array(["x"] * len(rows)),
    })


def entities(rows: list[tuple], ts_name: str = "event_timestamp") -> pa.Table:
    return pa.table({"customer_id": pa.array([r[0] for r in rows], pa.int64()),
                     ts_name: pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC"))})


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


# -- definitions ---------------------------------------------------------------------------


def test_definition_file_parses_and_equal_definitions_hash_alike(tmp_path):
    path = tmp_path / "customer_orders.yaml"
    path.write_text("""
name: customer_orders
entities: {customer_id: integer}
event_timestamp: ordered_at
created_timestamp: loaded_at
features:
  amount: {type: float, description: order value in EUR}
  items: integer
source: {dataset: orders, transform: "data_platform_tests.feature_transforms:with_amount_cents"}
ttl: 7d
owner: team-growth
""")
    parsed = FeatureDefinition.load(path)
    assert parsed.ttl_seconds == 7 * 86400 and parsed.entity_names == ["customer_id"]
    assert parsed.features[0].description == "order value in EUR"
    as_json = tmp_path / "same.json"
    as_json.write_text(json.dumps({**parsed.to_dict(), "ttl": 604800, "ttl_seconds": None} | {
        "entities": {"customer_id": "integer"}, "features": {"amount": {"type": "float",
                                                                         "description": "order value in EUR"},
                                                              "items": "integer"}} | {"ttl_seconds": None}))
    spec = json.loads(as_json.read_text())
    spec.pop("ttl_seconds")
    assert FeatureDefinition.parse(spec).sha256 == parsed.sha256
    assert FeatureDefinition.from_dict(parsed.to_dict()) == parsed
    assert "transform=" in parsed.code_version() and "definition=" in parsed.code_version()


@pytest.mark.parametrize("change, message", [
    ({"features": {"amount": "decimal"}}, "features.amount: type 'decimal' is not one of"),
    ({"features": {"customer_id": "integer"}}, "features: column 'customer_id' appears twice"),
    ({"ttl": "0d"}, "ttl: must be positive"),
    ({"ttl": "a week"}, "ttl: 'a week' is not a duration"),
    ({"name": "Bad Name"}, "name: must match"),
    ({"entities": []}, "entities: at least one"),
    ({"features": {"a:b": "float"}}, "features.a:b: column names match"),
    ({"source": {"dataset": "orders", "transform": "os.system"}}, "source.transform: `package.module:function`"),
    ({"colour": "red"}, "colour: unknown key"),
])
def test_bad_definitions_fail_with_the_field_and_the_problem(change, message):
    with pytest.raises(FeatureError, match="^definition: " + re.escape(message)):
        FeatureDefinition.parse(definition(**change))


def test_only_marked_transformations_are_accepted(sqlite_catalog):
    unmarked = definition(source={"dataset": "orders",
                                  "transform": "data_platform_tests.feature_transforms:not_marked"})
    with pytest.raises(FeatureError, match="is not marked with @data_platform.features.feature_transformation"):
        fs.register_feature_table(sqlite_catalog, "acme", unmarked, actor="t")
    with pytest.raises(FeatureError, match="cannot be loaded"):
        fs.register_feature_table(sqlite_catalog, "acme", definition(
            source={"dataset": "orders", "transform": "no_such_module:f"}), actor="t")
    assert sqlite_catalog.feature_definitions("acme") == []


# -- registration -------------------------------------------------------------------------


def test_registration_is_idempotent_and_a_change_is_a_new_revision(catalog):
    first = fs.register_feature_table(catalog, "acme", definition(ttl="1d"), actor="alice")
    again = fs.register_feature_table(catalog, "acme", definition(ttl=86400), actor="bob")
    assert (first.created, first.record.revision) == (True, 1)
    assert (again.created, again.record.revision, again.record.created_by) == (False, 1, "alice")
    changed = fs.register_feature_table(catalog, "acme", definition(ttl="2d"), actor="bob")
    assert (changed.created, changed.record.revision) == (True, 2)
    # Going back to an earlier definition is a change too: it becomes the latest, as revision 3.
    back = fs.register_feature_table(catalog, "acme", definition(ttl="1d"), actor="bob")
    assert (back.created, back.record.revision, back.record.definition_sha256) == (
        True, 3, first.record.definition_sha256)
    assert [d.revision for d in catalog.feature_definitions("acme")] == [3]
    assert fs.get_definition(catalog, "acme", "customer_orders", revision=2)[1].ttl_seconds == 2 * 86400
    with pytest.raises(FeatureError, match="is for tenant 'other', not 'acme'"):
        fs.register_feature_table(catalog, "acme", definition(tenant="other"), actor="t")


def _in_threads(n: int, fn) -> list:
    out, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def test_concurrent_registrations_neither_collide_nor_get_lost(postgresql_catalog):
    catalog = postgresql_catalog
    same = _in_threads(8, lambda i: fs.register_feature_table(catalog, "acme", definition(), actor=f"w{i}"))
    assert sum(r.created for r in same) == 1 and {r.record.revision for r in same} == {1}
    changed = _in_threads(8, lambda i: fs.register_feature_table(catalog, "acme", definition(ttl=f"{i + 1}h"),
                                                                 actor=f"w{i}"))
    assert sorted(r.record.revision for r in changed) == list(range(2, 10))
    with catalog.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT revision, definition FROM feature_definitions "
                                      "WHERE tenant = 'acme' ORDER BY revision").all()
    assert [r for r, _ in stored] == list(range(1, 10))
    assert sorted(json.loads(d)["ttl_seconds"] for _, d in stored[1:]) == [3600 * (i + 1) for i in range(8)]


def test_concurrent_builds_get_distinct_versions(local_store, postgresql_catalog):
    store, catalog = local_store, postgresql_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1), (2, day(1), 20.0, 2)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    built = _in_threads(6, lambda i: fs.materialise_feature_table(store, catalog, "acme", "customer_orders",
                                                                   actor=f"w{i}"))
    assert sorted(b.version.version for b in built) == list(range(1, 7))
    assert len({b.version.prefix for b in built}) == 6
    assert [v.state for v in fs.list_versions(catalog, "acme", "customer_orders")] == [COMPLETE] * 6
    assert all(fs.verify_version(store, catalog, b.version) == [] for b in built)


# -- versions ----------------------------------------------------------------------------


def test_a_version_is_a_streamed_snapshot_with_a_manifest(store, catalog):
    a = add_fresh(store, catalog, orders([(1, day(0), 10.0, 1), (None, day(1), 99.0, 9), (2, None, 98.0, 9)]))
    b = add_fresh(store, catalog, orders([(2, day(2), 20.5, 2), (1, day(3), 30.0, None)]))
    add_fresh(store, catalog, orders([(3, day(1), 1.0, 1)]), dataset="other_dataset")
    fs.register_feature_table(catalog, "acme", definition(entities={"customer_id": "string"},
                                                          features={"amount": "float32", "items": "int32"}),
                              actor="t")
    built = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="alice", run_id="r1")
    version, manifest = built.version, built.manifest
    assert (version.version, version.state, version.rows, version.revision) == (1, COMPLETE, 3, 1)
    assert version.prefix == "features/acme/customer_orders/v0001/"
    assert manifest["schema"] == [{"name": "customer_id", "type": "string"},
                                  {"name": "ordered_at", "type": "timestamp[us, tz=UTC]"},
                                  {"name": "amount", "type": "float"}, {"name": "items", "type": "int32"}]
    assert manifest["rows_read"] == 5 and manifest["rows_dropped_null_key_or_timestamp"] == 2
    assert [s["upload_id"] for s in manifest["sources"]] == [a, b]
    assert [s["rows"] for s in manifest["sources"]] == [1, 2]
    for source in manifest["sources"]:  # the sha256 of the very object read
        assert hashlib.sha256(store.get_bytes(source["object_key"])).hexdigest() == source["sha256"]
    for part in manifest["parts"]:
        assert part["key"].startswith(version.prefix)
        assert hashlib.sha256(store.get_bytes(part["key"])).hexdigest() == part["sha256"]
    body = store.get_bytes(f"{version.prefix}manifest.json")
    assert hashlib.sha256(body).hexdigest() == version.manifest_sha256
    assert [(s["upload_id"], s["rows"]) for s in catalog.feature_version_sources(version)] == [(a, 1), (b, 2)]
    assert manifest["code_version"] == version.code_version and version.code_version.startswith("data_platform==")
    table = fs.read_version(store, catalog, version)
    assert table.column("customer_id").to_pylist() == ["1", "2", "1"]  # written in upload order
    assert table.column("items").to_pylist() == [1, 2, None]
    assert (manifest["event_timestamp_min"], manifest["event_timestamp_max"]) == (
        day(0).isoformat(), day(3).isoformat())


def test_complete_versions_are_never_rewritten(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    v1 = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t").version
    before = {o.key: (o.etag, store.get_bytes(o.key)) for o in store.list(v1.prefix)}
    add_fresh(store, catalog, orders([(1, day(1), 11.0, 2)]))
    fs.register_feature_table(catalog, "acme", definition(ttl="3d"), actor="t")
    v2 = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t").version
    assert (v2.version, v2.revision, v2.rows) == (2, 2, 2)
    assert {o.key: (o.etag, store.get_bytes(o.key)) for o in store.list(v1.prefix)} == before
    assert fs.verify_version(store, catalog, v1) == [] and fs.get_version(catalog, "acme", "customer_orders", 1) == v1
    with pytest.raises(TransitionConflict):  # the catalog refuses to complete it again
        catalog.complete_feature_version(v1, rows=0, size=0, schema=[], manifest_sha256="0" * 64, sources=[])
    # A tampered part or manifest is found, never read silently.
    part = fs.read_manifest(store, catalog, v1)["parts"][0]["key"]
    store.put_bytes(part, b"tampered")
    assert fs.verify_version(store, catalog, v1) == [f"{part}: sha256 differs from the manifest"]
    store.put_bytes(f"{v1.prefix}manifest.json", b"{}")
    with pytest.raises(FeatureError, match="differs from the one recorded"):
        fs.read_manifest(store, catalog, v1)


def test_a_build_never_writes_over_objects_already_in_its_prefix(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    # As if the catalog had been restored from a backup older than the bucket.
    store.put_bytes("features/acme/customer_orders/v0001/part-00000.parquet", b"from before the restore")
    with pytest.raises(FeatureError, match="already holds objects; refusing"):
        fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    assert store.get_bytes("features/acme/customer_orders/v0001/part-00000.parquet") == b"from before the restore"
    assert [v.state for v in fs.list_versions(catalog, "acme")] == [FAILED]
    with pytest.raises(FeatureNotFound):
        fs.get_version(catalog, "acme", "customer_orders")
    assert fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t").version.version == 2


def test_a_failed_build_is_recorded_and_its_number_not_reused(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]))
    fs.register_feature_table(catalog, "acme", definition(features={"amount": "float", "missing": "integer"}),
                              actor="t")
    with pytest.raises(FeatureError, match=r"no column\(s\) missing \(it has customer_id"):
        fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    (failed,) = fs.list_versions(catalog, "acme", "customer_orders")
    assert failed.state == FAILED and "missing" in failed.detail
    fs.register_feature_table(catalog, "acme", definition(features={"note": "integer"}), actor="t")
    with pytest.raises(FeatureError, match="column 'note' \\(string\\) cannot be cast to int64"):
        fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    assert fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t").version.version == 3
    with pytest.raises(FeatureError, match="has no ingested data in dataset 'nothing'"):
        fs.register_feature_table(catalog, "acme", definition(name="empty", source="nothing"), actor="t")
        fs.materialise_feature_table(store, catalog, "acme", "empty", actor="t")
    assert fs.list_versions(catalog, "acme", "empty") == []  # no number spent on nothing


class Crash(BaseException):
    """A builder killed mid-way: nothing cleans up after it."""


def test_a_build_whose_builder_died_is_marked_failed_after_a_while(local_store, sqlite_catalog, monkeypatch):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(store, "put_bytes", crash)  # the manifest is never written
    with pytest.raises(Crash):
        fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    monkeypatch.undo()
    (stuck,) = fs.list_versions(catalog, "acme", "customer_orders")
    assert stuck.state == "building"
    assert fs.abandon_stale_builds(catalog, now=utcnow() + fs.ABANDONED_AFTER - timedelta(minutes=1)) == []
    later = utcnow() + fs.ABANDONED_AFTER + timedelta(minutes=1)
    assert fs.abandon_stale_builds(catalog, now=later) == [("acme", "customer_orders", 1)]
    (failed,) = fs.list_versions(catalog, "acme", "customer_orders")
    assert failed.state == FAILED and "abandoned" in failed.detail
    # Its parts are leftovers for cleanup; the next build takes the next number.
    assert catalog.failed_feature_version_prefixes("acme") == [failed.prefix]
    assert fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t").version.version == 2


def test_transformation_runs_per_batch_and_archived_files_are_read(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.25, 1)]), state=ARCHIVED)
    add_fresh(store, catalog, orders([(1, day(1), 0.5, 1)]), state="deprecated")  # on its way out: not read
    add_fresh(store, catalog, orders([(2, day(1), 3.0, 1)]), state="used")
    fs.register_feature_table(catalog, "acme", definition(
        features={"amount_cents": "integer"},
        source={"dataset": "orders", "transform": "data_platform_tests.feature_transforms:with_amount_cents"}),
        actor="t")
    built = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    assert fs.read_version(store, catalog, built.version).column("amount_cents").to_pylist() == [1025, 300]
    assert ";transform=" in built.version.code_version
    fs.register_feature_table(catalog, "acme", definition(
        name="broken", source={"dataset": "orders",
                               "transform": "data_platform_tests.feature_transforms:returns_a_list"}), actor="t")
    with pytest.raises(FeatureError, match="returned list, not a pyarrow.Table"):
        fs.materialise_feature_table(store, catalog, "acme", "broken", actor="t")


def test_a_file_archived_during_the_build_is_read_from_the_archive(local_store, sqlite_catalog, monkeypatch):
    store, catalog = local_store, sqlite_catalog
    upload_id = add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    real_start = catalog.start_feature_version

    def start_then_archive(*args, **kwargs):  # retention archives the file just after the listing
        version = real_start(*args, **kwargs)
        old = catalog.get(upload_id).object_key
        new = layout.archive_key("acme", "orders", upload_id)
        store.copy(old, new)
        with catalog.engine.begin() as conn:
            conn.execute(uploads.update().where(uploads.c.id == upload_id).values(state=ARCHIVED, object_key=new))
        store.delete(old)
        return version

    monkeypatch.setattr(catalog, "start_feature_version", start_then_archive)
    built = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    assert built.manifest["sources"][0]["object_key"].startswith("archive/") and built.version.rows == 1


# -- tenant scoping ------------------------------------------------------------------------


def test_tenants_never_see_each_others_features(store, catalog):
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]), tenant="acme")
    add_fresh(store, catalog, orders([(1, day(0), 777.0, 7)]), tenant="globex")
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    fs.register_feature_table(catalog, "acme", definition(name="acme_only"), actor="t")
    fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    fs.materialise_feature_table(store, catalog, "acme", "acme_only", actor="t")
    ent = entities([(1, day(1))])
    # globex has not registered customer_orders: not found, never acme's data.
    for call in (lambda: fs.get_version(catalog, "globex", "customer_orders"),
                 lambda: fs.get_version(catalog, "globex", "customer_orders", 1),
                 lambda: fs.get_definition(catalog, "globex", "customer_orders"),
                 lambda: fs.get_historical_features(store, catalog, "globex", ent, "customer_orders"),
                 lambda: fs.materialise_feature_table(store, catalog, "globex", "customer_orders", actor="t")):
        with pytest.raises(FeatureNotFound, match="no feature table 'customer_orders'.* for tenant 'globex'"):
            call()
    assert fs.list_versions(catalog, "globex") == [] and catalog.feature_definitions("globex") == []
    # The same name in both tenants: each reads its own data.
    fs.register_feature_table(catalog, "globex", definition(), actor="t")
    fs.materialise_feature_table(store, catalog, "globex", "customer_orders", actor="t")
    acme = fs.get_historical_features(store, catalog, "acme", ent, "customer_orders")
    globex = fs.get_historical_features(store, catalog, "globex", ent, "customer_orders")
    assert acme.column("amount").to_pylist() == [10.0] and globex.column("amount").to_pylist() == [777.0]
    assert [v.prefix for v in fs.list_versions(catalog, "globex")] == ["features/globex/customer_orders/v0001/"]
    with pytest.raises(FeatureNotFound):
        fs.get_historical_features(store, catalog, "globex", ent, ["customer_orders:amount", "acme_only:amount"],
                                   full_feature_names=True)


# -- point-in-time retrieval -----------------------------------------------------------------


def test_point_in_time_semantics_by_example(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([
        (1, day(0), 10.0, 1), (1, day(2), 20.0, 2), (1, day(2), 21.0, 3),  # a tie: the later row wins
        (2, day(1), 30.0, 3), (3, day(0), None, 4)]))
    fs.register_feature_table(catalog, "acme", definition(ttl="1d"), actor="t")
    fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    ent = entities([
        (1, day(-1)),  # before any value: nothing
        (1, day(0)),  # at exactly the value's time: visible
        (1, day(1)),  # exactly the TTL old: still valid
        (1, day(1) + timedelta(microseconds=1)),  # a microsecond past the TTL: null
        (1, day(2.5)),  # the tie at day 2: the row written last
        (2, day(1.5)), (4, day(1)),  # an entity with no features at all
        (None, day(1)), (2, None),  # null key, null time: nulls, rows kept
        (3, day(0.5)),  # the chosen row's null value stays null
    ])
    out = fs.get_historical_features(store, catalog, "acme", ent, "customer_orders")
    assert out.column_names == ["customer_id", "event_timestamp", "amount", "items"]
    assert out.column("customer_id").to_pylist() == ent.column("customer_id").to_pylist()
    assert out.column("amount").to_pylist() == [None, 10.0, 10.0, None, 21.0, 30.0, None, None, None, None]
    assert out.column("items").to_pylist() == [None, 1, 1, None, 3, 3, None, None, None, 4]
    longer = fs.get_historical_features(store, catalog, "acme", ent, ["customer_orders:amount"],
                                        ttl=timedelta(days=30))
    assert longer.column("amount").to_pylist()[3] == 10.0 and longer.column_names[-1] == "amount"
    # pandas in, pandas out; naive times are UTC; another timestamp column name.
    frame = pd.DataFrame({"customer_id": [1, 2, 2], "at": [pd.Timestamp("2026-03-03T12:00"),
                                                          pd.Timestamp("2026-03-02T00:00"),
                                                          pd.Timestamp("2026-03-01T23:59:59")]})
    got = fs.get_historical_features(store, catalog, "acme", frame, "customer_orders:items",
                                     event_timestamp_column="at")
    assert isinstance(got, pd.DataFrame) and got["items"].tolist()[:2] == [3, 3] and pd.isna(got["items"][2])


def test_created_timestamp_breaks_ties_and_errors_are_clear(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    table = orders([(1, day(1), 10.0, 1), (1, day(1), 20.0, 2), (1, day(1), 30.0, 3)]).append_column(
        "loaded_at", pa.array([day(5), day(9), None], pa.timestamp("us", tz="UTC")))
    add_fresh(store, catalog, table)
    fs.register_feature_table(catalog, "acme", definition(created_timestamp="loaded_at"), actor="t")
    fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    out = fs.get_historical_features(store, catalog, "acme", entities([(1, day(2))]), "customer_orders:amount")
    assert out.column("amount").to_pylist() == [20.0]  # latest loaded_at; a null one counts as oldest
    with pytest.raises(FeatureError, match="no feature\\(s\\) nope"):
        fs.get_historical_features(store, catalog, "acme", entities([(1, day(2))]), "customer_orders:nope")
    with pytest.raises(FeatureError, match="have no 'event_timestamp' column"):
        fs.get_historical_features(store, catalog, "acme", pa.table({"customer_id": [1]}), "customer_orders")
    with pytest.raises(FeatureError, match="lack customer_id"):
        fs.get_historical_features(store, catalog, "acme", pa.table({"event_timestamp": [day(1)]}),
                                   "customer_orders")
    with pytest.raises(FeatureError, match="would appear twice"):
        fs.get_historical_features(store, catalog, "acme", entities([(1, day(2))]).append_column(
            "amount", pa.array([1.0])), "customer_orders")


def _reference(feature_rows: list[dict], entity_rows: list[tuple], ttl_us: int | None, keys: list[str],
               created: bool) -> list[int | None]:
    """The position of each entity row's feature row, by brute force."""
    out = []
    for e_keys, e_ts in entity_rows:
        best, best_rank = None, None
        for pos, r in enumerate(feature_rows):
            if e_ts is None or any(v is None for v in e_keys) or r["ts"] is None:
                continue
            if any(r[k] is None or r[k] != v for k, v in zip(keys, e_keys)) or r["ts"] > e_ts:
                continue
            rank = (r["ts"], (r["cr"] is not None, r["cr"] or 0) if created else 0, pos)
            if best_rank is None or rank > best_rank:
                best, best_rank = pos, rank
        if best is not None and ttl_us is not None and e_ts - feature_rows[best]["ts"] > ttl_us:
            best = None
        out.append(best)
    return out


def _random_case(rng: random.Random, n_rows: int, created: bool) -> tuple[list[dict], list[tuple]]:
    """Few keys and a coarse clock so ties, exact matches and TTL edges are common."""
    rows = []
    for _ in range(n_rows):
        rows.append({"region": rng.choice(["eu", "us", None]) if rng.random() < 0.1 else rng.choice(["eu", "us"]),
                     "customer_id": None if rng.random() < 0.05 else rng.randrange(12),
                     "ts": None if rng.random() < 0.03 else rng.randrange(40) * 1_000_000,
                     "cr": None if rng.random() < 0.2 else rng.randrange(5) * 1_000_000})
    entity_rows = []
    feature_ts = [r["ts"] for r in rows if r["ts"] is not None]
    for _ in range(300):
        kind = rng.random()
        if kind < 0.3 and feature_ts:
            ts = rng.choice(feature_ts) + rng.choice([0, 1, 5_000_000, 5_000_001, -1])  # on and around the edges
        elif kind < 0.35:
            ts = None
        else:
            ts = rng.randrange(-5, 50) * 1_000_000
        entity_rows.append(((rng.choice(["eu", "us", "apac", None]), rng.choice(list(range(14)) + [None])), ts))
    return rows, entity_rows


def _feature_table(rows: list[dict], start: int) -> pa.Table:
    def ts(us):
        return None if us is None else T0 + timedelta(microseconds=us)

    return pa.table({
        "region": pa.array([r["region"] for r in rows], pa.string()),
        "customer_id": pa.array([r["customer_id"] for r in rows], pa.int64()),
        "ts": pa.array([ts(r["ts"]) for r in rows], pa.timestamp("us", tz="UTC")),
        "cr": pa.array([ts(r["cr"]) for r in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array(range(start, start + len(rows)), pa.int64()),  # identifies the row chosen
    })


@pytest.mark.parametrize("seed", range(6))
def test_point_in_time_matches_brute_force_on_random_data(local_store, sqlite_catalog, seed):
    store, catalog = local_store, sqlite_catalog
    rng = random.Random(seed)
    created = seed % 2 == 1
    ttl_us = rng.choice([None, 5_000_000, 12_000_000])
    rows, entity_rows = _random_case(rng, 400, created)
    # Three uploads in v1; a fourth of late-arriving rows (old event times) only in v2.
    late = [{**r, "ts": rng.randrange(0, 20) * 1_000_000} for r in rows[300:]]
    cuts = [rows[:120], rows[120:200], rows[200:300]]
    start = 0
    for chunk in cuts:
        add_fresh(store, catalog, _feature_table(chunk, start), dataset="events")
        start += len(chunk)
    spec = {"name": "activity", "entities": {"region": "string", "customer_id": "integer"}, "event_timestamp": "ts",
            "features": {"value": "integer"}, "source": "events",
            "ttl": ttl_us // 1_000_000 if ttl_us else None}
    if created:
        spec["created_timestamp"] = "cr"
    fs.register_feature_table(catalog, "acme", spec, actor="t")
    fs.materialise_feature_table(store, catalog, "acme", "activity", actor="t")
    add_fresh(store, catalog, _feature_table(late, start), dataset="events")
    fs.materialise_feature_table(store, catalog, "acme", "activity", actor="t")

    ent = pa.table({
        "region": pa.array([k[0] for k, _ in entity_rows], pa.string()),
        "customer_id": pa.array([k[1] for k, _ in entity_rows], pa.int64()),
        "event_timestamp": pa.array([None if t is None else T0 + timedelta(microseconds=t) for _, t in entity_rows],
                                    pa.timestamp("us", tz="UTC")),
        "row_tag": pa.array(range(len(entity_rows))),
    })
    changed = 0
    for version, visible in ((1, rows[:300]), (2, rows[:300] + late)):
        expected = _reference(visible, entity_rows, ttl_us, ["region", "customer_id"], created)
        got = fs.get_historical_features(store, catalog, "acme", ent, "activity", version=version)
        assert got.column("row_tag").to_pylist() == list(range(len(entity_rows)))  # all rows, in order
        assert got.column("value").to_pylist() == expected, f"seed {seed} v{version}"
        if version == 1:
            first = expected
        else:
            changed = sum(a != b for a, b in zip(first, expected))
    assert changed > 0  # the late rows matter: v1 stays as it was, v2 sees them
    latest = fs.get_historical_features(store, catalog, "acme", ent, "activity")
    assert latest.equals(fs.get_historical_features(store, catalog, "acme", ent, "activity", version=2))
    matched = sum(v is not None for v in latest.column("value").to_pylist())
    assert 20 < matched < len(entity_rows)  # the case exercises both outcomes


def test_several_feature_tables_in_one_call(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1), (1, day(3), 40.0, 4)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    fs.register_feature_table(catalog, "acme", definition(name="order_items", features={"items": "integer"},
                                                          ttl="1d"), actor="t")
    for name in ("customer_orders", "order_items"):
        fs.materialise_feature_table(store, catalog, "acme", name, actor="t")
    out = fs.get_historical_features(store, catalog, "acme", entities([(1, day(2)), (1, day(3))]),
                                     ["customer_orders:amount", "order_items"], full_feature_names=True,
                                     version={"order_items": 1})
    assert out.column_names[2:] == ["customer_orders__amount", "order_items__items"]
    assert out.column("customer_orders__amount").to_pylist() == [10.0, 40.0]
    assert out.column("order_items__items").to_pylist() == [None, 4]  # its own TTL (1 day)
    with pytest.raises(FeatureError, match="single version number needs a single feature table"):
        fs.get_historical_features(store, catalog, "acme", entities([(1, day(2))]),
                                   ["customer_orders", "order_items"], version=1)
    with pytest.raises(FeatureNotFound, match="version 9"):
        fs.get_historical_features(store, catalog, "acme", entities([(1, day(2))]), "order_items", version=9)


def test_real_ingestion_feeds_a_feature_table(store, sqlite_catalog):
    catalog = sqlite_catalog
    rows = [{"customer_id": i % 3, "ordered_at": f"2026-03-0{1 + i % 5}T10:00:00Z", "amount": i * 1.5, "items": i}
            for i in range(30)]
    store.put_bytes("landing/acme/orders/batch/orders.jsonl", jsonl(rows))
    _, outcomes, failures = ingest_everything(store, catalog)
    assert not failures and [o.state for o in outcomes] == [FRESH]
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    built = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    assert built.version.rows == 30
    out = fs.get_historical_features(store, catalog, "acme", entities([(2, datetime(2026, 3, 2, 10, tzinfo=UTC))]),
                                     "customer_orders")
    # customer 2 on 2026-03-02 10:00: rows i=11 and i=26 (i % 3 == 2, 1 + i % 5 == 2): the later one written.
    assert out.column("items").to_pylist() == [26]

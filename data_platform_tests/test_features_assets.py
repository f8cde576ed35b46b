"""The feature store's Dagster layer: the sensor fills the partitions and asks for first
versions; the `feature_tables` asset materialises a version with its metadata."""

import dagster as dg

from data_platform import features as fs
from data_platform.definitions import defs
from data_platform.defs.features.assets import feature_table_partitions, feature_table_sensor, feature_tables
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform_tests.test_features import add_fresh, day, definition, orders


def test_sensor_adds_partitions_and_requests_each_new_revision_once_data_exists(s3_store, postgresql_catalog,
                                                                                 pg_catalog_url):
    catalog = postgresql_catalog
    instance = dg.DagsterInstance.ephemeral()
    resources = {"catalog": CatalogResource(catalog_url=pg_catalog_url)}

    def tick():
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = feature_table_sensor(context)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    assert isinstance(tick(), dg.SkipReason)
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    fs.register_feature_table(catalog, "globex", definition(name="sessions"), actor="t")
    first = tick()
    assert [list(r.partition_keys) for r in first.dynamic_partitions_requests] == [
        ["acme/customer_orders", "globex/sessions"]]
    assert first.run_requests == []  # no data yet: nothing to build
    add_fresh(s3_store, catalog, orders([(1, day(0), 10.0, 1)]))
    second = tick()
    assert second.dynamic_partitions_requests == []
    assert [(r.run_key, r.partition_key) for r in second.run_requests] == [
        ("acme/customer_orders:r1", "acme/customer_orders")]
    fs.materialise_feature_table(s3_store, catalog, "acme", "customer_orders", actor="t")
    assert isinstance(tick(), dg.SkipReason)  # built: nothing more until a new revision
    fs.register_feature_table(catalog, "acme", definition(ttl="2d"), actor="t")
    assert [r.run_key for r in tick().run_requests] == ["acme/customer_orders:r2"]
    assert set(instance.get_dynamic_partitions(feature_table_partitions.name)) == {
        "acme/customer_orders", "globex/sessions"}


def test_asset_materialises_a_version_with_its_metadata(s3_store, postgresql_catalog, pg_catalog_url, monkeypatch):
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    catalog = postgresql_catalog
    upload_id = add_fresh(s3_store, catalog, orders([(1, day(0), 10.0, 1), (2, day(1), 20.0, 2)]))
    fs.register_feature_table(catalog, "acme", definition(), actor="t")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(feature_table_partitions.name, ["acme/customer_orders", "acme/missing"])
    resources = {"object_store": ObjectStoreResource(), "catalog": CatalogResource()}
    for expected_version in (1, 2):
        result = dg.materialize([feature_tables], instance=instance, resources=resources,
                                partition_key="acme/customer_orders")
        assert result.success
        (mat,) = result.asset_materializations_for_node("feature_tables")
        meta = mat.metadata
        assert (meta["version"].value, meta["dagster/row_count"].value, meta["revision"].value) == (
            expected_version, 2, 1)
        assert meta["path"].value.endswith(f"/features/acme/customer_orders/v{expected_version:04d}/")
        assert [c.name for c in meta["dagster/column_schema"].value.columns] == [
            "customer_id", "ordered_at", "amount", "items"]
        assert [r.data["upload_id"] for r in meta["sources"].value.records] == [upload_id]
    assert s3_store.exists("features/acme/customer_orders/v0002/manifest.json")
    failed = dg.materialize([feature_tables], instance=instance, resources=resources, partition_key="acme/missing",
                            raise_on_error=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "no feature table 'missing' for tenant 'acme'" in failure.event_specific_data.error.message


def test_the_code_location_has_the_asset_and_a_running_sensor():
    repo = defs.get_repository_def()
    sensor = next(s for s in repo.sensor_defs if s.name == "feature_table_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    node = defs.resolve_asset_graph().get(dg.AssetKey("feature_tables"))
    assert node.partitions_def.name == "feature_table" and {"parquet", "s3"} <= set(node.kinds)

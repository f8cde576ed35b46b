"""Upload -> sensor -> run -> fresh Parquet, through the real components: the S3
endpoint, the catalog on PostgreSQL, and Dagster's own instance on PostgreSQL."""

import dagster as dg
import pyarrow.parquet as pq

from data_platform.catalog import FRESH
from data_platform.definitions import defs
from data_platform.defs.ingestion.sensors import landing_sensor
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform_tests.support import jsonl, read_data


def test_upload_to_fresh_on_postgres_instance_and_s3(s3_store, pg_catalog_url, pg_dagster_instance, monkeypatch):
    from dagster_postgres import PostgresRunStorage

    instance = pg_dagster_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    # Configured the way production is: by environment variables read at launch.
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    rows = [{"id": i, "email": f"u{i}@example.com"} for i in range(250)]
    s3_store.put_bytes("landing/acme/tickets/day1.jsonl", jsonl(rows))

    context = dg.build_sensor_context(instance=instance, resources={
        "object_store": ObjectStoreResource(), "catalog": CatalogResource()})
    result = landing_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    (request,) = result.run_requests

    job = defs.resolve_job_def("ingest_uploads")
    run = job.execute_in_process(partition_key=request.partition_key, instance=instance, tags=request.tags,
                                 run_config=request.run_config or None)
    assert run.success
    stored = instance.get_run_by_id(run.run_id)
    assert stored.status == dg.DagsterRunStatus.SUCCESS

    materialization = run.asset_materializations_for_node("fresh_data")[0]
    assert materialization.partition == "acme/tickets"
    assert materialization.metadata["rows_ingested"].value == 250
    assert materialization.metadata["dagster/row_count"].value == 250
    schema = materialization.metadata["dagster/column_schema"].value
    assert [c.name for c in schema.columns] == ["id", "email"]

    from data_platform.catalog import Catalog
    (upload,) = Catalog(pg_catalog_url).list_uploads()
    assert upload.state == FRESH
    assert read_data(s3_store, upload.object_key).num_rows == 250

    # The statistics asset goes through the object-store IO manager into the bucket.
    from data_platform.defs.lifecycle.statistics import upload_statistics
    from data_platform.defs.io_manager import ObjectStoreIOManager

    stats = dg.materialize([upload_statistics], instance=instance, resources={
        "catalog": CatalogResource(), "object_store_io_manager": ObjectStoreIOManager(
            object_store=ObjectStoreResource())})
    assert stats.success
    table = pq.read_table(s3_store.fs_path("_platform/assets/upload_statistics/latest.parquet"),
                          filesystem=s3_store.filesystem)
    assert table.to_pylist()[0]["rows"] == 250
    (materialization,) = stats.asset_materializations_for_node("upload_statistics")
    (record,) = materialization.metadata["quality_by_dataset"].value.records
    assert record.data["dataset"] == f"{upload.tenant}/{upload.dataset}" and record.data["rows"] == 250
    assert record.data["quality"] == upload.quality and 0 < upload.quality <= 1
    findings = materialization.metadata["findings_by_dataset"].value
    assert findings[f"{upload.tenant}/{upload.dataset}"]["quality"]["rows"] == 250

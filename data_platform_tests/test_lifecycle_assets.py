"""The lifecycle's Dagster layer: the training-set asset materialised as the UI would,
used data and statistics after it, and the hourly statistics schedule."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from data_platform.catalog import USED
from data_platform.definitions import defs
from data_platform.defs.io_manager import ObjectStoreIOManager
from data_platform.defs.lifecycle.statistics import statistics_schedule, upload_statistics
from data_platform.defs.lifecycle.training import training_set, used_data
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform_tests.support import ingest_everything, jsonl


@pytest.fixture
def platform(s3_store, postgresql_catalog, pg_catalog_url, monkeypatch):
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    for day in ("d1", "d2"):
        s3_store.put_bytes(f"landing/acme/events/{day}.jsonl",
                           jsonl([{"id": f"{day}-{i}", "text": f"event {i} of {day}"} for i in range(40)]))
    ingest_everything(s3_store, postgresql_catalog)
    resources = {"object_store": ObjectStoreResource(), "catalog": CatalogResource(),
                 "object_store_io_manager": ObjectStoreIOManager(object_store=ObjectStoreResource())}
    return s3_store, postgresql_catalog, resources


def _config(**values) -> dict:
    return {"ops": {"training_set": {"config": values}}}


def test_training_set_asset_snapshots_marks_used_and_lists_its_sources(platform):
    store, catalog, resources = platform
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([training_set], instance=instance, resources=resources,
                            run_config=_config(tenant="acme", name="churn", consumer="trainer-a"))
    assert result.success
    (mat,) = result.asset_materializations_for_node("training_set")
    meta = mat.metadata
    assert (meta["version"].value, meta["dagster/row_count"].value, meta["files"].value) == (1, 80, 2)
    assert meta["path"].value.endswith("/training_sets/acme/churn/v0001/")
    sources = meta["sources"].value.records
    uploads = catalog.list_uploads(tenant="acme")
    assert sorted(r.data["upload_id"] for r in sources) == sorted(u.id for u in uploads)
    assert {u.state for u in uploads} == {USED}
    assert store.exists("training_sets/acme/churn/v0001/manifest.json")

    used = dg.materialize([used_data], instance=instance, resources=resources)
    (mat,) = used.asset_materializations_for_node("used_data")
    assert mat.metadata["files"].value == 2 and mat.metadata["dagster/row_count"].value == 80
    assert {r.data["training_sets"] for r in mat.metadata["files_table"].value.records} == {"churn/v1"}

    # Nothing fresh is left: the run fails with the reason, and claims nothing.
    again = dg.materialize([training_set], instance=instance, resources=resources, raise_on_error=False,
                           run_config=_config(tenant="acme", name="churn"))
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "no fresh data for tenant 'acme'" in failure.event_specific_data.error.message
    assert len(catalog.training_sets(tenant="acme")) == 1

    stats = dg.materialize([upload_statistics], instance=instance, resources=resources)
    (mat,) = stats.asset_materializations_for_node("upload_statistics")
    assert mat.metadata["rows_used"].value == 80 and mat.metadata["uploads_used"].value == 2
    assert mat.metadata["total_rows_ingested"].value == 80
    bands = mat.metadata["quality_distribution"].value.records
    assert sum(b.data["uploads"] for b in bands) == 2
    assert mat.metadata["growth"].value.records[-1].data["total_uploads"] == 2


def test_statistics_schedule_runs_hourly_and_is_on_by_default():
    assert statistics_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    (request,) = list(statistics_schedule.evaluate_tick(context).run_requests)
    assert isinstance(request, dg.RunRequest)
    job = defs.resolve_job_def("statistics")
    assert {n.name for n in job.graph.node_defs} == {"upload_statistics"}
    assert statistics_schedule.cron_schedule == "0 * * * *"

"""The landing sensor through Dagster: build_sensor_context, then the runs it asks for."""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from data_platform.catalog import DELETED, DUPLICATE, FRESH, QUARANTINED
from data_platform.defs.ingestion.assets import fresh_data, tenant_datasets
from data_platform.defs.ingestion.sensors import landing_sensor
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.storage import S3ObjectStore
from data_platform_tests.support import jsonl

ROWS = [{"id": i, "text": f"row {i}"} for i in range(10)]


@pytest.fixture
def env(s3_store, postgresql_catalog, pg_catalog_url):
    resources = {
        "object_store": ObjectStoreResource(storage_url="s3://test-bucket/root"),
        "catalog": CatalogResource(catalog_url=pg_catalog_url),
    }
    with dg.instance_for_test() as instance:
        yield s3_store, postgresql_catalog, resources, instance


def tick(instance, resources, cursor=None):
    context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    result = landing_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def run(instance, resources, partition):
    return dg.materialize([fresh_data], partition_key=partition, instance=instance, resources=resources)


def by_key(catalog):
    return {u.landing_key: u for u in catalog.list_uploads()}


def test_idle_sensor_skips(env):
    _, _, resources, instance = env
    result = tick(instance, resources)
    assert isinstance(result, dg.SkipReason) and "no pending uploads" in result.skip_message


def test_new_upload_gets_one_run_with_a_deterministic_key(env):
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    store.put_bytes("landing/acme/tickets/", b"")  # a folder marker: ignored
    first = tick(instance, resources)
    again = tick(instance, resources)  # re-listed before the run: same request, same key
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in again.run_requests]
    (request,) = first.run_requests
    assert request.partition_key == "acme/tickets"
    assert instance.get_dynamic_partitions(tenant_datasets.name) == ["acme/tickets"]
    assert len(catalog.list_uploads()) == 1
    assert run(instance, resources, "acme/tickets").success
    assert by_key(catalog)["landing/acme/tickets/a.jsonl"].state == FRESH
    assert isinstance(tick(instance, resources), dg.SkipReason)


def test_keys_sorting_before_seen_ones_are_noticed(env):
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/zzz.jsonl", jsonl(ROWS))
    tick(instance, resources)
    run(instance, resources, "acme/tickets")
    later = [{"id": 100 + i, "text": f"later row {i}"} for i in range(5)]
    store.put_bytes("landing/acme/tickets/aaa.jsonl", jsonl(later))  # sorts before the last key seen
    result = tick(instance, resources)
    assert len(result.run_requests) == 1
    run(instance, resources, "acme/tickets")
    assert by_key(catalog)["landing/acme/tickets/aaa.jsonl"].state == FRESH


def test_thousands_of_keys_in_one_tick(env):
    store, catalog, resources, instance = env
    keys = [f"landing/acme/{'tickets' if i % 2 else 'logs'}/part-{i:05d}.jsonl" for i in range(2500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, jsonl([{"id": k}])), keys))
    result = tick(instance, resources)
    assert sorted(r.partition_key for r in result.run_requests) == ["acme/logs", "acme/tickets"]
    assert len(catalog.list_uploads()) == 2500
    assert len(tick(instance, resources).run_requests) == 2  # nothing registered twice
    assert len(catalog.list_uploads()) == 2500


def test_deleted_key_and_invalid_keys_do_not_break_the_sensor(env):
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/gone.jsonl", jsonl(ROWS))
    tick(instance, resources)
    store.delete("landing/acme/tickets/gone.jsonl")
    bad_keys = ["landing/ACME/tickets/a.jsonl", "landing/acme/a.jsonl", "landing/acme/tickets/a\\b.jsonl",
                "landing/acme/tickets/../../data/x.jsonl", "landing/acme/tickets/\x07bell.jsonl"]
    for key in bad_keys:
        store.put_bytes(key, b'{"id": 1}\n')
    store.put_bytes("landing/acme/tickets/ok.jsonl", jsonl(ROWS))
    result = tick(instance, resources)
    assert [r.partition_key for r in result.run_requests] == ["acme/tickets"]
    assert run(instance, resources, "acme/tickets").success
    uploads = by_key(catalog)
    assert uploads["landing/acme/tickets/gone.jsonl"].state == DELETED
    assert uploads["landing/acme/tickets/ok.jsonl"].state == FRESH
    for key in bad_keys:
        upload = uploads[key]
        assert (upload.state, upload.reason) == (QUARANTINED, "invalid_key")
        assert upload.object_key.startswith("quarantine/_invalid/")
        originals = [o.key for o in store.list(upload.object_key + "original/")]
        assert len(originals) == 1 and store.get_bytes(originals[0]) == b'{"id": 1}\n'
    assert [o.key for o in store.list("landing/")] == []


def test_same_bytes_under_two_names(env):
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    store.put_bytes("landing/acme/tickets/copy-of-a.jsonl", jsonl(ROWS))
    tick(instance, resources)
    run(instance, resources, "acme/tickets")
    states = sorted(u.state for u in catalog.list_uploads())
    assert states == [DUPLICATE, FRESH]


def test_tick_finishes_an_upload_whose_landing_delete_crashed(env, monkeypatch):
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    tick(instance, resources)
    monkeypatch.setattr(S3ObjectStore, "delete_if_unchanged", lambda self, key, etag: False)  # "crash"
    run(instance, resources, "acme/tickets")
    monkeypatch.undo()
    assert store.head("landing/acme/tickets/a.jsonl") is not None
    assert isinstance(tick(instance, resources), dg.SkipReason)  # settled: no new run
    assert store.head("landing/acme/tickets/a.jsonl") is None
    assert len(catalog.list_uploads()) == 1


def test_failed_run_is_retried_under_a_new_run_key(env, monkeypatch):
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    first = tick(instance, resources).run_requests[0].run_key
    monkeypatch.setattr(S3ObjectStore, "open_write", lambda *a, **k: (_ for _ in ()).throw(OSError("503")))
    result = dg.materialize([fresh_data], partition_key="acme/tickets", instance=instance, resources=resources,
                            raise_on_error=False)
    assert not result.success
    monkeypatch.undo()
    second = tick(instance, resources).run_requests[0].run_key
    assert second != first
    assert run(instance, resources, "acme/tickets").success
    assert by_key(catalog)["landing/acme/tickets/a.jsonl"].state == FRESH


def test_a_run_that_failed_before_claiming_anything_is_retried_too(env, monkeypatch):
    """The contract (or the endpoint) unreadable for a moment: the run fails before it
    claims an upload, so no attempt is counted; the failed run itself changes the key."""
    store, catalog, resources, instance = env
    store.put_bytes("landing/acme/tickets/a.jsonl", jsonl(ROWS))
    (request,) = tick(instance, resources).run_requests
    from data_platform import ingestion

    def unreadable(*args, **kwargs):
        raise ConnectionError("endpoint went away")

    monkeypatch.setattr(ingestion.ContractRegistry, "find", unreadable)
    job = dg.define_asset_job("ingest_uploads", selection=[fresh_data], partitions_def=tenant_datasets)
    failed = dg.Definitions(assets=[fresh_data], jobs=[job], resources=resources).resolve_job_def(
        "ingest_uploads").execute_in_process(partition_key=request.partition_key, instance=instance,
                                             raise_on_error=False)
    assert not failed.success and catalog.list_uploads()[0].attempts == 0  # nothing was claimed
    monkeypatch.undo()
    # Not at once (a lasting cause would fail at every tick): after a backoff of a minute,
    # doubling with every failure up to an hour.
    assert tick(instance, resources).run_requests[0].run_key == request.run_key
    from data_platform.defs.ingestion import sensors

    later = time.time() + 61
    monkeypatch.setattr(sensors.time, "time", lambda: later)
    (retry,) = tick(instance, resources).run_requests
    assert retry.run_key != request.run_key
    assert tick(instance, resources).run_requests[0].run_key == retry.run_key  # and only once
    monkeypatch.undo()
    assert run(instance, resources, "acme/tickets").success
    assert by_key(catalog)["landing/acme/tickets/a.jsonl"].state == FRESH


def test_an_invalid_key_that_cannot_be_quarantined_yet_does_not_stop_the_tick(env, monkeypatch):
    store, catalog, resources, instance = env
    store.put_bytes("landing/NOPE/x/a.jsonl", b"{}\n")
    store.put_bytes("landing/acme/tickets/ok.jsonl", jsonl(ROWS))
    original = S3ObjectStore.copy
    monkeypatch.setattr(S3ObjectStore, "copy", lambda *a, **k: (_ for _ in ()).throw(OSError("throttled")))
    result = tick(instance, resources)
    assert [r.partition_key for r in result.run_requests] == ["acme/tickets"]
    assert by_key(catalog)["landing/NOPE/x/a.jsonl"].state == "landing"
    monkeypatch.setattr(S3ObjectStore, "copy", original)
    tick(instance, resources)
    assert by_key(catalog)["landing/NOPE/x/a.jsonl"].state == QUARANTINED

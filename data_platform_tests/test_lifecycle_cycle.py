"""The whole life of a file over the S3 endpoint and PostgreSQL: upload -> fresh ->
training set -> used -> archived -> deprecated -> deleted, with the audit trail, the
usage lineage and the tombstone read back at the end."""

import json
from datetime import timedelta

from data_platform import cli
from data_platform import training_sets as tsets
from data_platform.catalog import ARCHIVED, DELETED, DEPRECATED, FRESH, USED, utcnow
from data_platform.contracts import ContractRegistry
from data_platform.retention import apply_cleanup, plan_cleanup
from data_platform_tests.support import ingest_everything, jsonl

CONTRACT = b"""
version: 2
columns:
  id: {type: string, required: true}
  text: {type: string}
retention:
  archive_after_uses: 2
  archive_after_days: 60
  deprecate_after_days: 20
  delete_after_days: 5
"""


def _cleanup(store, catalog, now):
    plan = plan_cleanup(catalog, store, ContractRegistry(None, store), now=now, tenant="acme")
    result = apply_cleanup(plan, catalog, store, actor="cleanup-test")
    assert not result.failed, result.failed
    return plan


def test_upload_to_deletion_with_audit_trail(s3_store, postgresql_catalog, pg_catalog_url, monkeypatch, capsys):
    store, catalog = s3_store, postgresql_catalog
    store.put_bytes("_platform/contracts/acme/events.yaml", CONTRACT)
    store.put_bytes("landing/acme/events/day1.jsonl", jsonl([{"id": f"r{i}", "text": f"row {i}"} for i in range(50)]))
    ingest_everything(store, catalog)
    (upload,) = catalog.list_uploads(tenant="acme")
    # The same bytes again under another name: a duplicate whose data is the first's.
    store.put_bytes("landing/acme/events/again.jsonl", jsonl([{"id": f"r{i}", "text": f"row {i}"} for i in range(50)]))
    ingest_everything(store, catalog)
    (duplicate,) = catalog.list_uploads(tenant="acme", state="duplicate")
    assert duplicate.duplicate_of == upload.id
    assert upload.state == FRESH and store.exists(upload.object_key)
    start = utcnow()

    built = tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m", consumer="trainer"),
                                      actor="trainer-run", run_id="run-1")
    assert built.manifest["contract_versions"] == {"events": ["2"]}
    assert catalog.get(upload.id).state == USED and catalog.get(upload.id).uses == 1
    assert _cleanup(store, catalog, start).transitions == []  # one use, young: nothing to do

    catalog.record_read(built.training_set.id, consumer="model-b", run_id="run-2")
    plan = _cleanup(store, catalog, start + timedelta(minutes=1))  # two uses: archived
    assert [(t.from_state, t.to_state) for t in plan.transitions] == [(USED, ARCHIVED)]
    archived = catalog.get(upload.id)
    assert archived.state == ARCHIVED and archived.object_key.startswith("archive/acme/events/")
    assert store.exists(archived.object_key) and not store.exists(upload.object_key)
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", pg_catalog_url)
    assert cli.main(["status", "--state", "duplicate", "--json"]) == 0
    (dup,) = json.loads(capsys.readouterr().out)
    assert dup["object_key"] == archived.object_key  # follows the first copy into the archive
    # The training set is a copy of its own: it stays whole whatever happens to the file.
    assert tsets.verify_snapshot(store, tsets.read_manifest(store, built.training_set)) == []

    _cleanup(store, catalog, start + timedelta(days=21))  # 20 days after ingestion: deprecated
    assert catalog.get(upload.id).state == DEPRECATED and store.exists(archived.object_key)  # still readable
    assert _cleanup(store, catalog, start + timedelta(days=25)).transitions == []  # grace period runs
    _cleanup(store, catalog, start + timedelta(days=26, minutes=1))
    gone = catalog.get(upload.id)
    assert gone.state == DELETED and not store.exists(archived.object_key)
    assert not any(store.list(f"_platform/indexes/rows/acme/events/upload-{upload.id:010d}"))

    trail = [(a["from_state"], a["to_state"]) for a in catalog.audit_trail(upload.id)]
    assert trail == [(None, "landing"), ("landing", FRESH), (FRESH, USED), (USED, ARCHIVED),
                     (ARCHIVED, DEPRECATED), (DEPRECATED, DELETED)]
    actors = [a["actor"] for a in catalog.audit_trail(upload.id)]
    assert actors[2] == "trainer-run" and actors[3:] == ["cleanup-test"] * 3
    (tombstone,) = catalog.tombstones("acme")
    assert (tombstone["upload_id"], tombstone["sha256"], tombstone["deleted_by"], tombstone["from_state"]) == (
        upload.id, upload.sha256, "cleanup-test", DEPRECATED)
    lineage = catalog.usage_lineage([upload.id])[upload.id]
    assert [(e["kind"], e["consumer"], e["run_id"]) for e in lineage] == [
        ("build", "trainer", "run-1"), ("read", "model-b", "run-2")]

    # `status --json` tells the same story: the state, the lineage and the tombstone.
    assert cli.main(["status", "--tenant", "acme", "--json"]) == 0
    entry, dup = json.loads(capsys.readouterr().out)
    assert (dup["state"], dup["duplicate_of"], dup["object_key"]) == ("duplicate", upload.id, None)  # data gone
    assert entry["state"] == DELETED and [u["kind"] for u in entry["used_by"]] == ["build", "read"]
    assert entry["tombstone"]["deleted_by"] == "cleanup-test" and entry["tombstone"]["sha256"] == upload.sha256
    assert entry["tombstone"]["object_key"] == archived.object_key

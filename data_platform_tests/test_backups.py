"""Backups and verified restore: a real lifecycle on the S3 endpoint and PostgreSQL is
backed up, the catalog wiped (a new empty database), restored, and gives the same
answers; PostgreSQL -> SQLite; refusals; incomplete backups and pruning; the asset."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg2
import pytest
import sqlalchemy as sa

from data_platform import backups, cli, exports
from data_platform import features as fs
from data_platform import training_sets as tsets
from data_platform.catalog import ARCHIVED, DUPLICATE, QUARANTINED, Catalog, metadata
from data_platform.catalog.schema import audit_log, uploads
from data_platform.contracts import ContractRegistry
from data_platform.defs.governance.backups import catalog_backup, catalog_backup_job, catalog_backup_schedule
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.retention import apply_cleanup, plan_cleanup
from data_platform_tests.conftest import PG_ADMIN_DSN
from data_platform_tests.support import ingest_everything, jsonl

CONTRACT = b"""
version: 1
columns:
  customer_id: {type: integer, required: true}
  ordered_at: {type: timestamp, required: true}
  amount: {type: float}
  items: {type: integer}
retention: {archive_after_uses: 2}
"""
FEATURES = {"name": "customer_orders", "entities": ["customer_id"], "event_timestamp": "ordered_at",
            "features": {"amount": "float", "items": "integer"}, "source": {"dataset": "orders"}}


def _orders(first: int, n: int) -> bytes:
    return jsonl([{"customer_id": first + i, "ordered_at": f"2026-11-{10 + i % 9:02d}T10:00:00Z",
                   "amount": i + 0.5, "items": i % 4} for i in range(n)])


def lifecycle(store, catalog) -> dict:
    """Ingest (fresh, a duplicate, a quarantined file), a training set, a cleanup that
    archives, a feature version and an export: every table and manifest kind has rows."""
    store.put_bytes("_platform/contracts/acme/orders.yaml", CONTRACT)
    store.put_bytes("landing/acme/orders/a.jsonl", _orders(0, 30))
    store.put_bytes("landing/acme/orders/b.jsonl", _orders(100, 20))
    store.put_bytes("landing/acme/orders/empty.jsonl", b"")
    store.put_bytes("landing/beta/orders/x.jsonl", _orders(500, 5))
    ingest_everything(store, catalog)
    store.put_bytes("landing/acme/orders/a-again.jsonl", _orders(0, 30))  # same bytes: a duplicate
    ingest_everything(store, catalog)
    built = tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m", consumer="trainer"),
                                      actor="trainer", run_id="run-1")
    catalog.record_read(built.training_set.id, consumer="model-b", run_id="run-2")  # two uses: archive is due
    plan = plan_cleanup(catalog, store, ContractRegistry(None, store), now=datetime.now(UTC), tenant="acme")
    assert not apply_cleanup(plan, catalog, store, actor="cleanup").failed
    store.put_bytes("landing/acme/orders/c.jsonl", _orders(200, 10))  # fresh after the cleanup
    ingest_everything(store, catalog)
    fs.register_feature_table(catalog, "acme", FEATURES, actor="t")
    feature = fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="t")
    week = exports.Week.containing(datetime.now(UTC)).key
    export = exports.export_week(store, catalog, "acme", week)
    states = {u.state for u in catalog.list_uploads()}
    assert {ARCHIVED, DUPLICATE, QUARANTINED, "fresh"} <= states, states
    return {"training_set": built.training_set, "feature": feature.version, "export": export.manifest_key}


def _cli(monkeypatch, capsys, catalog_url: str, *args) -> tuple[int, object, str]:
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", "s3://test-bucket/root")
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", catalog_url)
    code = cli.main([*args, "--json"])
    out = capsys.readouterr()
    return code, json.loads(out.out) if out.out else None, out.err


def _answers(monkeypatch, capsys, catalog_url: str) -> dict:
    """What `status` and `stats` say, and the audit trail, from a catalog."""
    code, status, _ = _cli(monkeypatch, capsys, catalog_url, "status")
    assert code == 0
    code, stats, _ = _cli(monkeypatch, capsys, catalog_url, "stats")
    assert code == 0
    stats.pop("generated_at")
    with Catalog(catalog_url).engine.connect() as conn:
        audit = [tuple(r) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.id))]
    return {"status": status, "stats": stats, "audit": audit}


@pytest.fixture
def empty_pg_url():
    """A new, empty PostgreSQL database: the catalog after a disaster."""
    name = f"dp_restore_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg2://")
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


def test_backup_wipe_restore_gives_the_same_answers_on_postgresql_and_sqlite(
        s3_store, postgresql_catalog, pg_catalog_url, empty_pg_url, tmp_path, monkeypatch, capsys):
    store = s3_store
    made = lifecycle(store, postgresql_catalog)
    before = _answers(monkeypatch, capsys, pg_catalog_url)
    assert len(before["audit"]) > 10

    code, backup, _ = _cli(monkeypatch, capsys, pg_catalog_url, "backup")
    assert code == 0
    doc = backups.read_backup(store, backup["backup_id"])
    assert doc["schema_revision"] == "0008" and doc["source_dialect"] == "postgresql"
    assert [t["name"] for t in doc["tables"]] == [t.name for t in metadata.sorted_tables]  # FK order
    with postgresql_catalog.engine.connect() as conn:
        for t in doc["tables"]:
            assert t["rows"] == conn.execute(sa.select(sa.func.count()).select_from(metadata.tables[t["name"]])
                                             ).scalar(), t["name"]
    sources = {m["source"] for m in doc["manifests"]}
    assert sources == {f"{made['training_set'].prefix}manifest.json", f"{made['feature'].prefix}manifest.json",
                       made["export"]}

    # Disaster: the catalog is gone (a new, empty database), and so is a manifest.
    store.delete(made["export"])
    code, restored, err = _cli(monkeypatch, capsys, empty_pg_url, "restore", "latest", "--restore-manifests")
    assert code == 0, err
    assert restored["backup_id"] == backup["backup_id"] and restored["target_dialect"] == "postgresql"
    assert restored["manifests"]["restored"] == [made["export"]] and store.exists(made["export"])
    assert _answers(monkeypatch, capsys, empty_pg_url) == before
    code, report, err = _cli(monkeypatch, capsys, empty_pg_url, "verify")
    assert code == 0 and report["ok"], (err, report)
    assert report["by_what"]["export_part"] >= 1 and report["by_what"]["feature_part"] >= 1

    # Sequences continue past the restored ids: the next upload gets a new id.
    max_id = max(e["upload_id"] for e in before["status"])
    store.put_bytes("landing/acme/orders/d.jsonl", _orders(300, 3))
    ingest_everything(store, Catalog(empty_pg_url))
    assert max(u.id for u in Catalog(empty_pg_url).list_uploads()) == max_id + 1

    # The same PostgreSQL backup restores into SQLite, with the same answers.
    sqlite_url = f"sqlite:///{tmp_path / 'restored.db'}"
    code, restored, err = _cli(monkeypatch, capsys, sqlite_url, "restore", backup["backup_id"])
    assert code == 0 and restored["target_dialect"] == "sqlite", err
    assert _answers(monkeypatch, capsys, sqlite_url) == before

    # ... and back: a backup of that SQLite catalog restores into PostgreSQL again.
    sqlite_doc = backups.create_backup(store, Catalog(sqlite_url))
    code, _, err = _cli(monkeypatch, capsys, empty_pg_url, "restore", sqlite_doc["backup_id"], "--force")
    assert code == 0, err
    assert _answers(monkeypatch, capsys, empty_pg_url) == before


def test_restore_refuses_a_catalog_that_is_not_empty_unless_forced(local_store, tmp_path):
    store = local_store
    source = Catalog(f"sqlite:///{tmp_path / 'source.db'}")
    store.put_bytes("landing/acme/orders/a.jsonl", _orders(0, 5))
    ingest_everything(store, source)
    doc = backups.create_backup(store, source)
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    target = Catalog(target_url)
    store.put_bytes("landing/other/orders/z.jsonl", _orders(9, 2))
    ingest_everything(store, target)
    with pytest.raises(backups.BackupError, match="not empty .*--force"):
        backups.restore_backup(store, target_url, doc["backup_id"])
    assert {u.tenant for u in target.list_uploads()} == {"other"}  # untouched
    done = backups.restore_backup(store, target_url, doc["backup_id"], force=True)
    assert "uploads" in done["dropped_rows_from"]
    assert [(u.id, u.landing_key, u.state) for u in target.list_uploads()] == \
        [(u.id, u.landing_key, u.state) for u in source.list_uploads()]


def test_a_damaged_or_newer_backup_is_refused_before_the_catalog_is_touched(local_store, tmp_path, monkeypatch):
    store = local_store
    source = Catalog(f"sqlite:///{tmp_path / 'source.db'}")
    store.put_bytes("landing/acme/orders/a.jsonl", _orders(0, 5))
    ingest_everything(store, source)
    doc = backups.create_backup(store, source)
    uploads_key = next(t["key"] for t in doc["tables"] if t["name"] == "uploads")
    store.put_bytes(uploads_key, store.get_bytes(uploads_key)[:-1] + b"\0")
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    with pytest.raises(backups.BackupError, match="damaged: .*uploads"):
        backups.restore_backup(store, target_url, doc["backup_id"])
    newer = backups.create_backup(store, source)
    marker = f"{newer['prefix']}backup.json"
    store.put_bytes(marker, json.dumps({**newer, "schema_revision": "9999"}).encode())
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", str(store.root))
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", target_url)
    assert cli.main(["restore", newer["backup_id"], "--json"]) == 1
    with pytest.raises(backups.BackupError, match="9999, newer than this code"):
        backups.restore_backup(store, target_url, newer["backup_id"])


def test_keyset_pages_stream_a_large_audit_log(local_store, sqlite_catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(backups, "PAGE_ROWS", 7)  # many pages from a few rows
    with sqlite_catalog.engine.begin() as conn:
        conn.execute(uploads.insert(), [{"id": i, "landing_key": f"landing/a/b/{i}", "etag": "e", "size": 1,
                                         "last_modified": datetime(2026, 1, 1), "tenant": "a", "dataset": "b",
                                         "state": "duplicate" if i > 1 else "fresh", "attempts": 0,
                                         "detected_at": datetime(2026, 1, 1), "updated_at": datetime(2026, 1, 1)}
                                        for i in range(1, 41)])
        conn.execute(uploads.update().where(uploads.c.id > 1).values(duplicate_of=1))
        conn.execute(uploads.update().where(uploads.c.id == 1).values(duplicate_of=40))
        conn.execute(audit_log.insert(), [{"upload_id": 1 + i % 40, "at": datetime(2026, 1, 1) + timedelta(seconds=i),
                                           "actor": "t", "to_state": "fresh"} for i in range(100)])
    doc = backups.create_backup(local_store, sqlite_catalog)
    counts = {t["name"]: t["rows"] for t in doc["tables"]}
    assert counts["uploads"] == 40 and counts["audit_log"] == 100
    target = f"sqlite:///{tmp_path / 'target.db'}"
    backups.restore_backup(local_store, target, doc["backup_id"])
    with Catalog(target).engine.connect() as conn:
        # A row pointing at a later one (1 -> 40) went in: self-references are set after the rows.
        assert conn.execute(sa.select(uploads.c.duplicate_of).where(uploads.c.id == 1)).scalar() == 40
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == 100


def _backup_at(store, catalog, when: datetime) -> str:
    backup_id = backups.create_backup(store, catalog, now=when)["backup_id"]
    assert backups.backup_time(backup_id) == when.replace(microsecond=0)  # the id sorts by time
    return backup_id


def test_pruning_keeps_the_newest_per_day_for_n_days_and_drops_old_incomplete_ones(local_store, sqlite_catalog,
                                                                                   monkeypatch):
    store = local_store
    now = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
    made = [_backup_at(store, sqlite_catalog, now - timedelta(days=d, hours=h)) for d in range(5, -1, -1)
            for h in (1, 0)]
    # An incomplete backup (no backup.json): one two days old, one still being written.
    old_incomplete, running = (backups.new_backup_id(now - timedelta(days=2)),
                               backups.new_backup_id(now - timedelta(minutes=5)))
    for backup_id in (old_incomplete, running):
        store.put_bytes(f"_platform/backups/{backup_id}/tables/00-datasets.parquet", b"partial")
    listed = backups.list_backups(store)
    assert [b["backup_id"] for b in listed if b["complete"]] == sorted(made, reverse=True)
    assert {b["backup_id"] for b in listed if not b["complete"]} == {old_incomplete, running}
    with pytest.raises(backups.BackupError, match="no complete backup|not complete"):
        backups.read_backup(store, old_incomplete)  # never restored from

    monkeypatch.setenv(backups.KEEP_VAR, "3")
    result = backups.prune_backups(store, now=now)
    newest_of_day = [b for i, b in enumerate(made) if i % 2 == 1]  # (d, h=0) of each day
    assert result["kept"] == sorted(newest_of_day[-3:])
    assert set(result["pruned"]) == set(made) - set(newest_of_day[-3:])
    assert result["pruned_incomplete"] == [old_incomplete]
    left = {b.backup_id: b.complete for b in backups.scan_backups(store)}
    assert left == {**dict.fromkeys(newest_of_day[-3:], True), running: False}
    assert backups.read_backup(store, "latest")["backup_id"] == made[-1]

    monkeypatch.setenv(backups.KEEP_VAR, "0")
    with pytest.raises(backups.BackupError, match="DATA_PLATFORM_BACKUP_KEEP='0'"):
        backups.prune_backups(store, now=now)
    # keep=1 still keeps the newest complete one, whatever else goes.
    assert backups.prune_backups(store, keep=1, now=now + timedelta(days=30))["kept"] == [made[-1]]
    assert backups.read_backup(store, "latest")["backup_id"] == made[-1]


def test_the_backup_asset_backs_up_and_prunes_and_its_schedule_runs_daily(local_store, sqlite_catalog, monkeypatch):
    store = local_store
    store.put_bytes("landing/acme/orders/a.jsonl", _orders(0, 5))
    ingest_everything(store, sqlite_catalog)
    old = backups.create_backup(store, sqlite_catalog, now=datetime.now(UTC) - timedelta(days=3))
    monkeypatch.setenv(backups.KEEP_VAR, "1")
    result = dg.materialize([catalog_backup], resources={
        "object_store": ObjectStoreResource(storage_url=str(store.root)),
        "catalog": CatalogResource(catalog_url=sqlite_catalog.url)})
    assert result.success
    (mat,) = result.asset_materializations_for_node("catalog_backup")
    meta = mat.metadata
    assert meta["rows_per_table"].value["uploads"] == 1 and meta["dagster/row_count"].value >= 3
    assert meta["pruned"].value == [old["backup_id"]]
    assert backups.read_backup(store, "latest")["backup_id"] == meta["backup_id"].value

    assert catalog_backup_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert catalog_backup_schedule.execution_timezone == "UTC"
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
    assert len(catalog_backup_schedule.evaluate_tick(context).run_requests) == 1
    assert catalog_backup_schedule.job_name == catalog_backup_job.name
    assert catalog_backup_schedule.cron_schedule == "0 2 * * *"


def test_every_table_is_read_from_one_snapshot_while_others_write(catalog):
    from data_platform.catalog import Identity

    catalog.register([(Identity("landing/a/b/1.jsonl", "e1", 1, datetime.now(UTC)), "a", "b")], actor="t")
    with backups._snapshot(catalog.engine) as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar()
        # A writer commits meanwhile (another connection): the snapshot does not see it.
        catalog.register([(Identity("landing/a/b/2.jsonl", "e2", 1, datetime.now(UTC)), "a", "b")], actor="t")
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == before == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(uploads)).scalar() == 1
        if catalog.engine.dialect.name == "postgresql":
            assert conn.execute(sa.text("SHOW transaction_isolation")).scalar() == "repeatable read"
            assert conn.execute(sa.text("SHOW transaction_read_only")).scalar() == "on"
    assert len(catalog.list_uploads()) == 2

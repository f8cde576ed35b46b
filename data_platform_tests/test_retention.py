"""Retention and cleanup: every transition of the policy with a clock the tests control,
on SQLite and PostgreSQL and on a local directory and the S3 endpoint; the dry run
changes nothing; a crash between any two steps converges on the next pass; quarantine,
temporary and orphaned objects expire; building training sets are left alone; the CLI,
the Dagster asset and the schedule."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from data_platform import cli, layout
from data_platform.catalog import (
    ARCHIVED, BUILDING, COMPLETE, DELETED, DEPRECATED, FRESH, INGESTED, LANDING, QUARANTINED, RELEASED, USED, utcnow,
)
from data_platform.catalog.schema import (
    audit_log, contents, feature_definitions, feature_versions, index_runs, tombstones, training_set_files,
    training_sets, uploads,
)
from data_platform.contracts import NEVER, ContractRegistry, RetentionPolicy
from data_platform.retention import (
    RetentionConfigError, RetentionDefaults, apply_cleanup, plan_cleanup,
)
from data_platform_tests.support import ingest_everything, jsonl

DEFAULTS = RetentionDefaults()  # 3 uses, 90 / 180 days, 30 days' grace, 30 days' quarantine, 24 h
NO_CONTRACTS = ContractRegistry(None, None)


class Crash(Exception):
    """Stands for the process dying at that point."""


def ingest(store, catalog, n: int, *, dataset: str = "tickets", tenant: str = "acme", start: int = 0):
    for i in range(start, start + n):
        store.put_bytes(f"landing/{tenant}/{dataset}/f{i}.jsonl",
                        jsonl([{"id": f"{dataset}-{i}-{j}", "text": f"ticket {j} of file {i} in {dataset}"}
                               for j in range(5)]))
    ingest_everything(store, catalog)
    return [u for u in catalog.list_uploads(tenant=tenant, dataset=dataset) if u.state == FRESH]


def clock(catalog) -> datetime:
    """Time zero: the last ingestion (all files of a test are ingested within seconds)."""
    return max(u.ingested_at for u in catalog.list_uploads() if u.ingested_at)


def make_used(catalog, ids, uses: int) -> None:
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().where(uploads.c.id.in_(ids)).values(state=USED, uses=uses))


def run(catalog, store, now, contracts=NO_CONTRACTS, **kwargs):
    plan = plan_cleanup(catalog, store, contracts, now=now, defaults=kwargs.pop("defaults", DEFAULTS), **kwargs)
    result = apply_cleanup(plan, catalog, store, actor="test-cleanup")
    return plan, result


def states(catalog) -> dict[int, str]:
    return {u.id: u.state for u in catalog.list_uploads()}


def listing(store, prefix: str = "") -> dict[str, tuple]:
    return {i.key: (i.etag, i.size) for i in store.list(prefix)}


def assert_consistent(catalog, store, originals: dict[int, bytes] | None = None) -> None:
    """Each ingested file's data is where the catalog says, with its bytes; data/ and
    archive/ hold nothing else; every registered index run exists and nothing more."""
    live = {}
    for u in catalog.list_uploads():
        if u.state in INGESTED:
            assert store.exists(u.object_key), (u.id, u.state, u.object_key)
            if originals and u.id in originals:
                assert store.get_bytes(u.object_key) == originals[u.id]
            live[u.object_key] = u.id
    assert set(listing(store, "data/")) | set(listing(store, "archive/")) == set(live)
    assert set(listing(store, "_platform/indexes/")) == catalog.registered_index_keys()


def data_bytes(store, catalog) -> dict[int, bytes]:
    return {u.id: store.get_bytes(u.object_key) for u in catalog.list_uploads() if u.state in INGESTED}


# -- policy ---------------------------------------------------------------------------

def test_defaults_come_from_the_environment_when_asked():
    assert RetentionDefaults.from_env({}) == RetentionDefaults(3, 90, 180, 30, 30, 24)
    env = {"DATA_PLATFORM_ARCHIVE_AFTER_USES": "never", "DATA_PLATFORM_ARCHIVE_AFTER_DAYS": " 7 ",
           "DATA_PLATFORM_DEPRECATE_AFTER_DAYS": "NEVER", "DATA_PLATFORM_DELETE_AFTER_DAYS": "0",
           "DATA_PLATFORM_QUARANTINE_DAYS": "14", "DATA_PLATFORM_TEMP_OBJECT_HOURS": "2"}
    assert RetentionDefaults.from_env(env) == RetentionDefaults(NEVER, 7, NEVER, 0, 14, 2)


@pytest.mark.parametrize("value", ["-1", "1.5", "soon", "3d"])
def test_a_bad_default_names_its_variable(value):
    with pytest.raises(RetentionConfigError, match=f"DATA_PLATFORM_QUARANTINE_DAYS='{value}'"):
        RetentionDefaults.from_env({"DATA_PLATFORM_QUARANTINE_DAYS": value})


def test_effective_policy_is_the_contract_over_the_defaults():
    contract = RetentionPolicy(archive_after_uses=NEVER, deprecate_after_days=10)  # others absent
    assert DEFAULTS.policy(contract) == RetentionPolicy(NEVER, 90, 10, 30)
    assert DEFAULTS.policy(None) == RetentionPolicy(3, 90, 180, 30)


def test_every_transition_of_the_policy(store, catalog):
    a, b, c = ingest(store, catalog, 3)
    store.put_bytes("landing/acme/tickets/empty.jsonl", b"")
    ingest_everything(store, catalog)
    (q,) = catalog.list_uploads(state=QUARANTINED)
    make_used(catalog, [b.id], uses=3)
    originals = data_bytes(store, catalog)
    runs_of_a = {k for k in catalog.registered_index_keys() if f"upload-{a.id:010d}" in k}
    assert runs_of_a
    t0 = clock(catalog)

    plan, _ = run(catalog, store, t0 + timedelta(days=1))
    assert [(t.upload_id, t.from_state, t.to_state, t.reason, t.why) for t in plan.transitions] == [
        (b.id, USED, ARCHIVED, "archive_after_uses", "used_3_times")]
    archived = catalog.get(b.id)
    assert archived.object_key == layout.archive_key("acme", "tickets", b.id)
    assert store.get_bytes(archived.object_key) == originals[b.id]
    assert not store.exists(layout.data_key("acme", "tickets", b.id))
    assert_consistent(catalog, store, originals)

    plan, _ = run(catalog, store, t0 + timedelta(days=29, hours=23))
    assert plan.transitions == []
    plan, _ = run(catalog, store, t0 + timedelta(days=30, minutes=1))
    assert [(t.upload_id, t.to_state, t.reason) for t in plan.transitions] == [(q.id, DELETED, "quarantine_expired")]
    assert listing(store, layout.quarantine_prefix("acme", "tickets", q.id)) == {}

    plan, _ = run(catalog, store, t0 + timedelta(days=90, minutes=1))
    assert {(t.upload_id, t.from_state, t.to_state, t.reason, t.why) for t in plan.transitions} == {
        (a.id, FRESH, ARCHIVED, "archive_after_days", "age_90_days"),
        (c.id, FRESH, ARCHIVED, "archive_after_days", "age_90_days")}
    assert states(catalog) == {a.id: ARCHIVED, b.id: ARCHIVED, c.id: ARCHIVED, q.id: DELETED}
    assert_consistent(catalog, store, originals)

    deprecated_at = t0 + timedelta(days=180, minutes=1)
    plan, _ = run(catalog, store, deprecated_at)
    assert {(t.to_state, t.reason) for t in plan.transitions} == {(DEPRECATED, "deprecate_after_days")}
    assert len(plan.transitions) == 3
    assert_consistent(catalog, store, originals)  # deprecated data is still readable

    plan, _ = run(catalog, store, deprecated_at + timedelta(days=29))
    assert plan.transitions == []
    plan, result = run(catalog, store, deprecated_at + timedelta(days=30))
    assert {(t.upload_id, t.to_state, t.reason, t.why) for t in plan.transitions} == {
        (i, DELETED, "delete_after_days", "deprecated_30_days") for i in (a.id, b.id, c.id)}
    assert result.failed == []
    assert set(states(catalog).values()) == {DELETED}
    assert listing(store) == {}  # data, archive, index runs, quarantine: all gone

    stones = {s["upload_id"]: s for s in catalog.tombstones(tenant="acme")}
    assert set(stones) == {a.id, b.id, c.id, q.id}
    assert stones[a.id]["sha256"] == a.sha256 and stones[a.id]["deleted_by"] == "test-cleanup"
    assert (stones[a.id]["from_state"], stones[a.id]["reason"]) == (DEPRECATED, "delete_after_days")
    assert stones[a.id]["object_key"] == layout.archive_key("acme", "tickets", a.id)
    assert stones[a.id]["deleted_at"] == deprecated_at + timedelta(days=30)
    assert (stones[q.id]["from_state"], stones[q.id]["reason"]) == (QUARANTINED, "quarantine_expired")
    assert catalog.tombstones(tenant="other") == []
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(index_runs)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(contents)).scalar_one() == 0
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in catalog.audit_trail(b.id)] == [
        (None, LANDING, None), (LANDING, FRESH, None), (USED, ARCHIVED, "archive_after_uses"),
        (ARCHIVED, DEPRECATED, "deprecate_after_days"), (DEPRECATED, DELETED, "delete_after_days")]
    assert catalog.get(a.id).object_key is None
    # Deleted content is new data when uploaded again.
    store.put_bytes("landing/acme/tickets/again/f0.jsonl",
                    jsonl([{"id": f"tickets-0-{j}", "text": f"ticket {j} of file 0 in tickets"} for j in range(5)]))
    ingest_everything(store, catalog)
    assert [u.state for u in catalog.list_uploads() if u.landing_key.endswith("again/f0.jsonl")] == [FRESH]


def test_chain_of_steps_in_one_pass_and_the_contract_over_the_defaults(local_store, sqlite_catalog, tmp_path):
    store, catalog = local_store, sqlite_catalog
    (old,) = ingest(store, catalog, 1, dataset="tickets")
    (kept,) = ingest(store, catalog, 1, dataset="forever")
    (plain,) = ingest(store, catalog, 1, dataset="plain")
    contracts = tmp_path / "contracts" / "acme"
    contracts.mkdir(parents=True)
    base = "version: 1\ncolumns:\n  id: {type: string}\n"
    (contracts / "tickets.yaml").write_text(base + "retention: {delete_after_days: 0}\n")
    (contracts / "forever.yaml").write_text(base + "retention: {archive_after_days: null, archive_after_uses: null,"
                                                   " deprecate_after_days: never}\n")
    registry = ContractRegistry(tmp_path / "contracts", store)

    plan, result = run(catalog, store, clock(catalog) + timedelta(days=400), contracts=registry)
    assert [(t.upload_id, t.from_state, t.to_state, t.reason) for t in plan.transitions if t.upload_id == old.id] == [
        (old.id, FRESH, ARCHIVED, "archive_after_days"), (old.id, ARCHIVED, DEPRECATED, "deprecate_after_days"),
        (old.id, DEPRECATED, DELETED, "delete_after_days")]
    # No contract: the defaults (archived, then deprecated; 30 days' grace from now).
    assert [t.to_state for t in plan.transitions if t.upload_id == plain.id] == [ARCHIVED, DEPRECATED]
    assert not [t for t in plan.transitions if t.upload_id == kept.id]
    assert result.failed == []
    assert states(catalog) == {old.id: DELETED, kept.id: FRESH, plain.id: DEPRECATED}
    assert listing(store, "data/acme/tickets/") == {} and listing(store, "archive/acme/tickets/") == {}
    assert_consistent(catalog, store)


def test_a_dataset_whose_contract_does_not_parse_is_left_alone(local_store, sqlite_catalog, tmp_path):
    store, catalog = local_store, sqlite_catalog
    (upload,) = ingest(store, catalog, 1)
    (tmp_path / "c" / "acme").mkdir(parents=True)
    (tmp_path / "c" / "acme" / "tickets.yaml").write_text("version: 1\ncolumns: {id: {type: strin}}\n")
    plan, _ = run(catalog, store, clock(catalog) + timedelta(days=400),
                  contracts=ContractRegistry(tmp_path / "c", None))
    assert plan.transitions == []
    assert plan.problems[0]["dataset"] == "tickets" and "columns.id.type" in plan.problems[0]["problem"]
    assert catalog.get(upload.id).state == FRESH


# -- dry run --------------------------------------------------------------------------

def catalog_snapshot(catalog) -> dict:
    with catalog.engine.connect() as conn:
        return {t.name: sorted(tuple(map(str, r)) for r in conn.execute(sa.select(t)))
                for t in (uploads, audit_log, tombstones, index_runs, contents)}


def test_the_dry_run_changes_nothing(store, catalog):
    fresh = ingest(store, catalog, 3)
    make_used(catalog, [fresh[0].id], uses=5)
    store.put_bytes("data/acme/tickets/upload-0000009999.parquet", b"orphan")
    now = clock(catalog) + timedelta(days=400)
    before = (catalog_snapshot(catalog), listing(store))

    plan = plan_cleanup(catalog, store, NO_CONTRACTS, now=now, defaults=DEFAULTS)
    assert (catalog_snapshot(catalog), listing(store)) == before
    assert len(plan.transitions) == 6 and [o.reason for o in plan.expired_objects] == ["orphan_object"]
    out = plan.as_dict(dry_run=True)
    assert out["dry_run"] is True and out["counts"]["transitions"] == {
        "fresh->archived": 2, "used->archived": 1, "archived->deprecated": 3}

    apply_cleanup(plan, catalog, store, actor="test")  # the same plan, applied, does change things
    assert catalog_snapshot(catalog) != before[0] and listing(store) != before[1]
    assert set(states(catalog).values()) == {DEPRECATED}
    assert not store.exists("data/acme/tickets/upload-0000009999.parquet")


# -- crashes --------------------------------------------------------------------------

def _deprecated_files(store, catalog):
    """Two files deprecated 30 days before the returned clock: deletion is due."""
    ingest(store, catalog, 2)
    deprecated_at = clock(catalog) + timedelta(days=200)
    run(catalog, store, deprecated_at)
    assert set(states(catalog).values()) == {DEPRECATED}
    return deprecated_at + timedelta(days=30)


def _raise_once(monkeypatch, obj, name, *, after_calls=0, partial=False):
    """obj.name raises Crash on its call number `after_calls` (0-based); with `partial`,
    after doing half of a batch of keys."""
    real = getattr(obj, name)
    calls = []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) - 1 == after_calls:
            if partial:
                keys = list(args[0])
                real(keys[: len(keys) // 2])
            raise Crash(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, patched)


ARCHIVE_CRASHES = {
    "before_the_archive_transaction": ("catalog", "archive", {}),
    "after_the_transaction_before_the_old_object_goes": ("store", "delete_many", {}),
}
DELETE_CRASHES = {
    "before_the_delete_transaction": ("catalog", "delete_uploads", {}),
    "after_the_transaction_before_the_bytes_go": ("store", "delete_many", {}),
    "halfway_through_deleting_the_bytes": ("store", "delete_many", {"partial": True}),
}


@pytest.mark.parametrize("where", list(ARCHIVE_CRASHES))
def test_a_crash_while_archiving_converges_on_the_next_pass(store, catalog, monkeypatch, where):
    fresh = ingest(store, catalog, 2)
    make_used(catalog, [u.id for u in fresh], uses=3)
    originals = data_bytes(store, catalog)
    now = clock(catalog) + timedelta(days=1)
    target, name, kwargs = ARCHIVE_CRASHES[where]
    with monkeypatch.context() as patch:
        _raise_once(patch, catalog if target == "catalog" else store, name, **kwargs)
        with pytest.raises(Crash):
            run(catalog, store, now)
    # Each file in one state, its data where the catalog says: no bytes lost.
    expected = USED if name == "archive" else ARCHIVED
    assert set(states(catalog).values()) == {expected}
    for u in catalog.list_uploads():
        assert store.get_bytes(u.object_key) == originals[u.id]
    plan, result = run(catalog, store, now)
    assert result.failed == []
    assert set(states(catalog).values()) == {ARCHIVED}
    if name == "delete_many":
        assert {o.reason for o in plan.expired_objects} == {"superseded"}  # whatever their age
    assert_consistent(catalog, store, originals)
    assert listing(store, "data/") == {}
    assert [e["to_state"] for e in catalog.audit_trail(fresh[0].id)].count(ARCHIVED) == 1


@pytest.mark.parametrize("where", list(DELETE_CRASHES))
def test_a_crash_while_deleting_converges_on_the_next_pass(store, catalog, monkeypatch, where):
    now = _deprecated_files(store, catalog)
    originals = data_bytes(store, catalog)
    target, name, kwargs = DELETE_CRASHES[where]
    with monkeypatch.context() as patch:
        _raise_once(patch, catalog if target == "catalog" else store, name, **kwargs)
        with pytest.raises(Crash):
            run(catalog, store, now)
    if name == "delete_uploads":
        assert set(states(catalog).values()) == {DEPRECATED} and catalog.tombstones() == []
        assert_consistent(catalog, store, originals)
    else:
        assert set(states(catalog).values()) == {DELETED} and len(catalog.tombstones()) == 2
        assert listing(store, "archive/") or listing(store, "_platform/indexes/")  # left for the next pass
    # The next pass, even at the same moment (nothing left is older than a day yet).
    plan, result = run(catalog, store, now)
    assert result.failed == []
    if name != "delete_uploads":
        assert {o.reason for o in plan.expired_objects} == {"deleted_upload"}
    assert set(states(catalog).values()) == {DELETED} and len(catalog.tombstones()) == 2
    assert listing(store) == {}
    assert_consistent(catalog, store)


def test_a_failed_copy_leaves_the_file_as_it_was_and_the_next_pass_archives_it(store, catalog, monkeypatch):
    first, second = ingest(store, catalog, 2)
    now = clock(catalog) + timedelta(days=91)
    real = store.copy

    def copy(src, dst):
        if f"upload-{second.id:010d}" in src:
            raise OSError("connection reset")
        real(src, dst)

    monkeypatch.setattr(store, "copy", copy)
    _, result = run(catalog, store, now)
    assert [(f["upload_id"], f["step"]) for f in result.failed] == [(second.id, "archive_copy")]
    assert states(catalog) == {first.id: ARCHIVED, second.id: FRESH}
    assert_consistent(catalog, store)
    monkeypatch.setattr(store, "copy", real)
    _, result = run(catalog, store, now)
    assert result.failed == [] and states(catalog) == {first.id: ARCHIVED, second.id: ARCHIVED}
    assert_consistent(catalog, store)


def test_a_stale_plan_changes_nothing_twice(local_store, postgresql_catalog):
    store, catalog = local_store, postgresql_catalog
    ingest(store, catalog, 2)
    now = clock(catalog) + timedelta(days=91)
    first = plan_cleanup(catalog, store, NO_CONTRACTS, now=now, defaults=DEFAULTS)
    second = plan_cleanup(catalog, store, NO_CONTRACTS, now=now, defaults=DEFAULTS)
    apply_cleanup(first, catalog, store, actor="a")
    originals = data_bytes(store, catalog)
    result = apply_cleanup(second, catalog, store, actor="b")
    assert {f["step"] for f in result.failed} == {"archive_copy"}  # the data/ objects went with the first
    assert set(states(catalog).values()) == {ARCHIVED}
    assert_consistent(catalog, store, originals)
    with catalog.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                            .where(audit_log.c.to_state == ARCHIVED)).scalar_one() == 2


# -- what else expires ------------------------------------------------------------------

def test_orphans_and_leftovers_expire_only_when_older_than_the_threshold(store, catalog):
    (live,) = ingest(store, catalog, 1)
    store.put_bytes("data/acme/tickets/upload-0000009999.parquet", b"a crashed attempt")
    store.put_bytes("archive/acme/tickets/upload-0000009998.parquet", b"a stray copy")
    store.put_bytes("_platform/indexes/rows/acme/tickets/upload-0000009997.parquet", b"never registered")
    store.put_bytes("quarantine/acme/tickets/upload-0000009996/report.json", b"{}")
    store.put_bytes("training_sets/acme/churn/v0001/part-0000.parquet", b"given up")
    store.put_bytes("training_sets/acme/churn/v0002/part-0000.parquet", b"complete")
    with catalog.engine.begin() as conn:
        for version, state in ((1, RELEASED), (2, COMPLETE)):
            conn.execute(training_sets.insert().values(
                tenant="acme", name="churn", version=version, state=state, filters="{}", consumer="t",
                created_by="t", prefix=f"training_sets/acme/churn/v{version:04d}/", created_at=utcnow()))
    store.put_bytes("features/acme/clicks/v0001/part-00000.parquet", b"a build that failed")
    store.put_bytes("features/acme/clicks/v0002/part-00000.parquet", b"complete")
    with catalog.engine.begin() as conn:
        definition_id = conn.execute(feature_definitions.insert().values(
            tenant="acme", name="clicks", revision=1, definition="{}", definition_sha256="0" * 64,
            created_at=utcnow(), created_by="t")).inserted_primary_key[0]
        for version, state in ((1, "failed"), (2, COMPLETE)):
            conn.execute(feature_versions.insert().values(
                tenant="acme", name="clicks", version=version, definition_id=definition_id, state=state,
                prefix=f"features/acme/clicks/v{version:04d}/", code_version="t", created_at=utcnow(),
                created_by="t"))
    unfinished = _unfinished_write(store)
    kept = set(listing(store)) - _orphans()

    young = plan_cleanup(catalog, store, NO_CONTRACTS, now=utcnow(), defaults=DEFAULTS)
    # Nothing younger than a day goes: an ingestion may be between writing and committing.
    # (moto reports every multipart upload as initiated on 2010-11-10, so on S3 it looks old.)
    assert [o.key for o in young.expired_objects] == ([] if unfinished[1] == "temporary_file" else [unfinished[0]])
    plan, result = run(catalog, store, utcnow() + timedelta(hours=25))
    assert {o.key: o.reason for o in plan.expired_objects} == {
        "data/acme/tickets/upload-0000009999.parquet": "orphan_object",
        "archive/acme/tickets/upload-0000009998.parquet": "orphan_object",
        "_platform/indexes/rows/acme/tickets/upload-0000009997.parquet": "orphan_index_run",
        "quarantine/acme/tickets/upload-0000009996/report.json": "orphan_object",
        "training_sets/acme/churn/v0001/part-0000.parquet": "released_training_set",
        "features/acme/clicks/v0001/part-00000.parquet": "failed_feature_version",
        unfinished[0]: unfinished[1],
    }
    assert result.expired_deleted == 7
    assert set(listing(store)) == kept
    assert list(store.incomplete_writes()) == []
    assert catalog.get(live.id).state == FRESH
    assert_consistent(catalog, store)


def _orphans() -> set[str]:
    return {"data/acme/tickets/upload-0000009999.parquet", "archive/acme/tickets/upload-0000009998.parquet",
            "_platform/indexes/rows/acme/tickets/upload-0000009997.parquet",
            "quarantine/acme/tickets/upload-0000009996/report.json",
            "training_sets/acme/churn/v0001/part-0000.parquet", "features/acme/clicks/v0001/part-00000.parquet"}


def _unfinished_write(store) -> tuple[str, str]:
    """A write a process died in: a .tmp/ file locally, a multipart upload on S3."""
    if hasattr(store, "root"):
        (store.root / store.TMP_DIR).mkdir(exist_ok=True)
        (store.root / store.TMP_DIR / "0123abcd").write_bytes(b"half a file")
        key, reason = ".tmp/0123abcd", "temporary_file"
    else:
        store._client.create_multipart_upload(Bucket=store.bucket, Key=store._k("data/acme/tickets/big.parquet"))
        key, reason = "data/acme/tickets/big.parquet", "abandoned_multipart_upload"
    assert [w.key for w in store.incomplete_writes()] == [key]
    return key, reason


def test_a_second_orphan_check_protects_what_the_catalog_points_at_again(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    (upload,) = ingest(store, catalog, 1)
    key = upload.object_key
    with catalog.engine.begin() as conn:  # as if the plan saw the upload before its commit
        conn.execute(uploads.update().where(uploads.c.id == upload.id).values(object_key=None))
    plan = plan_cleanup(catalog, store, NO_CONTRACTS, now=utcnow() + timedelta(days=2), defaults=DEFAULTS)
    assert [o.key for o in plan.expired_objects] == [key]
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().where(uploads.c.id == upload.id).values(object_key=key))
    apply_cleanup(plan, catalog, store, actor="t")
    assert store.exists(key)


def test_quarantine_expires_also_for_invalid_keys(local_store, postgresql_catalog):
    store, catalog = local_store, postgresql_catalog
    store.put_bytes("landing/acme/tickets/broken.parquet", b"not parquet")
    store.put_bytes("landing/Bad Tenant/x.jsonl", b'{"a": 1}\n')
    ingest_everything(store, catalog)
    quarantined = catalog.list_uploads(state=QUARANTINED)
    assert {u.reason for u in quarantined} == {"unreadable_parquet", "invalid_key"}
    assert listing(store, "quarantine/")
    since = max(u.state_since for u in quarantined)
    plan, _ = run(catalog, store, since + timedelta(days=29))
    assert plan.transitions == []
    plan, _ = run(catalog, store, since + timedelta(days=30))
    assert {t.reason for t in plan.transitions} == {"quarantine_expired"} and len(plan.transitions) == 2
    assert listing(store, "quarantine/") == {}
    assert {s["reason"] for s in catalog.tombstones()} == {"quarantine_expired"}
    # DATA_PLATFORM_QUARANTINE_DAYS=never keeps quarantine for good.
    store.put_bytes("landing/acme/tickets/broken2.parquet", b"not parquet either")
    ingest_everything(store, catalog)
    plan = plan_cleanup(catalog, store, NO_CONTRACTS, now=utcnow() + timedelta(days=999),
                        defaults=RetentionDefaults(quarantine_days=NEVER))
    assert [t for t in plan.transitions if t.from_state == QUARANTINED] == []


def test_files_of_a_building_training_set_are_never_touched(store, catalog):
    held, free = ingest(store, catalog, 2)
    make_used(catalog, [held.id, free.id], uses=9)
    with catalog.engine.begin() as conn:
        set_id = conn.execute(training_sets.insert().values(
            tenant="acme", name="churn", version=1, state=BUILDING, filters="{}", consumer="t", created_by="t",
            prefix="training_sets/acme/churn/v0001/", created_at=utcnow()).returning(training_sets.c.id)).scalar_one()
        conn.execute(training_set_files.insert().values(training_set_id=set_id, upload_id=held.id, rows=5))
    now = clock(catalog) + timedelta(days=1000)
    plan, _ = run(catalog, store, now)
    assert {t.upload_id for t in plan.transitions} == {free.id} and plan.held == 1
    assert catalog.get(held.id).state == USED and store.exists(held.object_key)
    # Also when a stale plan names it: the transaction checks the claim again.
    with catalog.engine.begin() as conn:
        conn.execute(training_sets.update().values(state=COMPLETE))
    stale = plan_cleanup(catalog, store, NO_CONTRACTS, now=now, defaults=DEFAULTS)
    assert [t.upload_id for t in stale.transitions][:1] == [held.id]
    with catalog.engine.begin() as conn:
        conn.execute(training_sets.update().values(state=BUILDING))
    result = apply_cleanup(stale, catalog, store, actor="t")
    assert catalog.get(held.id).state == USED and store.get_bytes(held.object_key)
    assert {f["upload_id"] for f in result.failed} == {held.id}
    assert_consistent(catalog, store)


def test_tenant_filter_touches_only_that_tenant(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    ingest(store, catalog, 1, tenant="acme")
    ingest(store, catalog, 1, tenant="globex")
    store.put_bytes("data/acme/tickets/upload-0000009999.parquet", b"orphan")
    plan, _ = run(catalog, store, clock(catalog) + timedelta(days=91), tenant="globex")
    assert {t.tenant for t in plan.transitions} == {"globex"} and plan.expired_objects == []
    assert {u.tenant: u.state for u in catalog.list_uploads()} == {"acme": FRESH, "globex": ARCHIVED}
    assert store.exists("data/acme/tickets/upload-0000009999.parquet")


def test_incomplete_writes_listed_and_aborted(store):
    key, kind = _unfinished_write(store)
    (write,) = store.incomplete_writes()
    assert (write.key, write.started.tzinfo) == (key, UTC)
    store.abort_write(write)
    store.abort_write(write)  # already gone: not an error
    assert list(store.incomplete_writes()) == []


# -- CLI ------------------------------------------------------------------------------

def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_cleanup_dry_run_then_for_real(local_store, sqlite_catalog, monkeypatch, capsys):
    store, catalog = local_store, sqlite_catalog
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", str(store.root))
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", catalog.url)
    first, second = ingest(store, catalog, 2)
    make_used(catalog, [first.id], uses=3)
    before = (catalog_snapshot(catalog), listing(store))

    code, out, err = _cli(capsys, "cleanup", "--dry-run", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert set(doc) >= {"dry_run", "now", "transitions", "expired_objects", "counts"} and doc["dry_run"] is True
    (t,) = doc["transitions"]
    assert (t["upload_id"], t["from_state"], t["to_state"], t["reason"], t["why"]) == (
        first.id, USED, ARCHIVED, "archive_after_uses", "used_3_times")
    assert t["object_key_before"] == first.object_key
    assert t["object_key_after"] == layout.archive_key("acme", "tickets", first.id)
    assert (catalog_snapshot(catalog), listing(store)) == before

    later = (clock(catalog) + timedelta(days=91)).isoformat()
    code, out, _ = _cli(capsys, "cleanup", "--dry-run", "--now", later)
    assert code == 0 and "archive_after_days" in out and "dry run:" in out
    assert (catalog_snapshot(catalog), listing(store)) == before

    code, out, _ = _cli(capsys, "cleanup", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is False and doc["counts"]["applied"] == 1
    assert [t["applied"] for t in doc["transitions"]] == [True]
    assert states(catalog) == {first.id: ARCHIVED, second.id: FRESH}
    actor = catalog.audit_trail(first.id)[-1]["actor"]
    assert actor.startswith("cli:")

    code, out, err = _cli(capsys, "cleanup", "--tenant", "../x", "--json")
    assert code == 1 and out == "" and "invalid tenant" in err


def test_cli_cleanup_bad_setting_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", str(tmp_path / "objects"))
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", f"sqlite:///{tmp_path / 'c.db'}")
    monkeypatch.setenv("DATA_PLATFORM_DELETE_AFTER_DAYS", "thirty")
    code, out, err = _cli(capsys, "cleanup", "--json")
    assert code == 1 and out == ""
    assert err.strip() == ("data-platform cleanup: RetentionConfigError: DATA_PLATFORM_DELETE_AFTER_DAYS='thirty': "
                           "expected an integer >= 0 or never")


# -- Dagster --------------------------------------------------------------------------

def test_cleanup_asset_materialises_archived_deprecated_and_deleted_data(local_store, sqlite_catalog, monkeypatch):
    from data_platform.defs.lifecycle.cleanup import cleanup
    from data_platform.defs.resources import CatalogResource, ObjectStoreResource

    store, catalog = local_store, sqlite_catalog
    monkeypatch.setenv("DATA_PLATFORM_CONTRACTS_DIR", str(store.root.parent / "no-contracts"))
    used, old, _ = ingest(store, catalog, 3)
    make_used(catalog, [used.id], uses=3)
    with catalog.engine.begin() as conn:  # the asset runs at the real now: age one file instead
        conn.execute(uploads.update().where(uploads.c.id == old.id)
                     .values(ingested_at=utcnow() - timedelta(days=400)))
    resources = {"object_store": ObjectStoreResource(storage_url=str(store.root)),
                 "catalog": CatalogResource(catalog_url=catalog.url)}
    instance = dg.DagsterInstance.ephemeral()

    dry = dg.materialize([cleanup], instance=instance, resources=resources,
                         run_config={"ops": {"cleanup": {"config": {"dry_run": True}}}})
    assert dry.success and set(states(catalog).values()) == {USED, FRESH}
    meta = {m.asset_key.to_user_string(): m.metadata for m in dry.asset_materializations_for_node("cleanup")}
    assert meta["archived_data"]["dry_run"].value is True
    assert meta["archived_data"]["planned_this_pass"].value == 2 and meta["archived_data"]["files"].value == 0

    result = dg.materialize([cleanup], instance=instance, resources=resources)
    assert result.success
    meta = {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("cleanup")}
    assert set(meta) == {"archived_data", "deprecated_data", "deleted_data"}
    archived = meta["archived_data"]
    assert archived["moved_this_pass"].value == 2 and archived["files"].value == 1
    assert archived["by_reason"].value == {"archive_after_uses": 1, "archive_after_days": 1}
    assert [r.data["upload_id"] for r in archived["files_in_state"].value.records] == [used.id]
    deprecated = meta["deprecated_data"]
    assert deprecated["files"].value == 1 and deprecated["dagster/row_count"].value == 5
    assert deprecated["by_transition"].value == {"archived->deprecated": 1}
    assert meta["deleted_data"]["files"].value == 0
    assert states(catalog)[old.id] == DEPRECATED
    assert catalog.audit_trail(old.id)[-1]["actor"].startswith("dagster:")


def test_cleanup_schedule_runs_the_job_daily_and_is_on_by_default():
    from data_platform.definitions import defs
    from data_platform.defs.lifecycle.cleanup import cleanup_schedule

    assert cleanup_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert (cleanup_schedule.cron_schedule, cleanup_schedule.execution_timezone) == ("0 3 * * *", "UTC")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 3, 1, 3, tzinfo=UTC))
    result = cleanup_schedule.evaluate_tick(context)
    assert len(result.run_requests) == 1
    job = defs.resolve_job_def("cleanup_job")
    assert {k.to_user_string() for k in job.asset_layer.asset_graph.get_all_asset_keys()} >= {
        "archived_data", "deprecated_data", "deleted_data"}
    assert defs.resolve_schedule_def("cleanup_schedule").job_name == "cleanup_job"

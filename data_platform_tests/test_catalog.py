import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from data_platform.catalog import (
    DUPLICATE, FRESH, LANDING, Catalog, DuplicateContent, Identity, TransitionConflict, metadata,
)


def ident(name: str, etag: str = "e1", when: datetime | None = None) -> Identity:
    return Identity(f"landing/acme/tickets/{name}", etag, 10, when or datetime(2026, 11, 1, 12, 0, tzinfo=UTC))


def register(catalog: Catalog, *names: str):
    return catalog.register([(ident(n), "acme", "tickets") for n in names], actor="test")


def test_migrated_schema_matches_the_code(catalog):
    assert catalog.schema_revision() == "0008"
    inspector = sa.inspect(catalog.engine)
    for table in metadata.sorted_tables:
        db_columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert db_columns == set(table.columns.keys()), table.name


def test_registration_is_idempotent_and_audited(catalog):
    first = register(catalog, "a.jsonl", "b.jsonl")
    again = register(catalog, "a.jsonl", "b.jsonl")
    assert sorted(u.id for u in first) == sorted(u.id for u in again)
    assert len(catalog.list_uploads()) == 2
    trail = catalog.audit_trail(first[0].id)
    assert [(t["from_state"], t["to_state"], t["actor"]) for t in trail] == [(None, LANDING, "test")]


def test_new_version_of_same_key_is_a_new_upload(catalog):
    register(catalog, "a.jsonl")
    catalog.register([(ident("a.jsonl", etag="e2"), "acme", "tickets")], actor="test")
    catalog.register([(ident("a.jsonl", when=datetime(2026, 11, 2, tzinfo=UTC)), "acme", "tickets")], actor="t")
    assert len(catalog.list_uploads()) == 3


def test_claims_are_exclusive_and_expire(catalog):
    register(catalog, *[f"{i}.jsonl" for i in range(5)])
    a = catalog.claim("acme", "tickets", "run-a", lease=timedelta(minutes=5), limit=3)
    b = catalog.claim("acme", "tickets", "run-b", lease=timedelta(minutes=5), limit=10)
    assert len(a) == 3 and len(b) == 2 and not {u.id for u in a} & {u.id for u in b}
    assert catalog.pending_partitions() == {}
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=6)
    c = catalog.claim("acme", "tickets", "run-c", lease=timedelta(minutes=5), limit=10, now=later)
    assert len(c) == 5 and all(u.attempts == 2 for u in c)


def test_concurrent_claims_never_share_an_upload(postgresql_catalog):
    catalog = postgresql_catalog
    register(catalog, *[f"{i}.jsonl" for i in range(200)])
    got: dict[str, list[int]] = {}

    def worker(name: str):
        mine = []
        while batch := catalog.claim("acme", "tickets", name, lease=timedelta(minutes=5), limit=7):
            mine += [u.id for u in batch]
        got[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [i for ids in got.values() for i in ids]
    assert len(all_ids) == 200 and len(set(all_ids)) == 200


def test_transitions_check_state_and_claimer(catalog):
    (upload,) = register(catalog, "a.jsonl")
    (claimed,) = catalog.claim("acme", "tickets", "run-a", lease=timedelta(minutes=5), limit=1)
    with pytest.raises(TransitionConflict):
        catalog.mark_fresh(claimed, "run-b", sha256="f" * 64, rows=1, quarantined_rows=0, object_key="k")
    catalog.mark_fresh(claimed, "run-a", sha256="f" * 64, rows=3, quarantined_rows=1, object_key="data/k")
    done = catalog.get(upload.id)
    assert (done.state, done.rows, done.quarantined_rows, done.claimed_by) == (FRESH, 3, 1, None)
    with pytest.raises(TransitionConflict):
        catalog.mark_quarantined(done, "x", claimer=None, reason="r", object_key="q")
    assert [t["to_state"] for t in catalog.audit_trail(upload.id)] == [LANDING, FRESH]


def test_same_content_is_ingested_once_per_tenant(catalog):
    a, b = register(catalog, "a.jsonl", "b.jsonl")
    claimed = catalog.claim("acme", "tickets", "run", lease=timedelta(minutes=5), limit=2)
    catalog.mark_fresh(claimed[0], "run", sha256="a" * 64, rows=1, quarantined_rows=0, object_key="data/1")
    with pytest.raises(DuplicateContent) as err:
        catalog.mark_fresh(claimed[1], "run", sha256="a" * 64, rows=1, quarantined_rows=0, object_key="data/2")
    assert err.value.first_upload_id == a.id
    assert catalog.get(b.id).state == LANDING  # the failed commit changed nothing
    catalog.mark_duplicate(claimed[1], "run", sha256="a" * 64, first=catalog.get(a.id))
    dup = catalog.get(b.id)
    assert (dup.state, dup.duplicate_of, dup.object_key) == (DUPLICATE, a.id, "data/1")
    assert catalog.first_copy("acme", "a" * 64).id == a.id
    assert catalog.first_copy("other-tenant", "a" * 64) is None


def test_release_returns_the_upload_for_retry(catalog):
    register(catalog, "a.jsonl")
    (u,) = catalog.claim("acme", "tickets", "run-a", lease=timedelta(minutes=5), limit=1)
    catalog.release(u.id, "run-a", "S3 unreachable")
    assert catalog.pending_partitions() == {("acme", "tickets"): (u.id, 1)}
    assert catalog.get(u.id).detail == "S3 unreachable"


def test_stats_group_by_tenant_dataset_state(catalog):
    register(catalog, "a.jsonl", "b.jsonl")
    (u, _) = catalog.claim("acme", "tickets", "r", lease=timedelta(minutes=5), limit=2)
    catalog.mark_fresh(u, "r", sha256="b" * 64, rows=7, quarantined_rows=2, object_key="data/x")
    stats = {(s["tenant"], s["dataset"], s["state"]): s for s in catalog.stats()}
    assert stats[("acme", "tickets", FRESH)]["rows"] == 7
    assert stats[("acme", "tickets", FRESH)]["quarantined_rows"] == 2
    assert stats[("acme", "tickets", LANDING)]["uploads"] == 1
    assert stats[("acme", "tickets", LANDING)]["bytes"] == 10


def test_catalog_opens_on_an_already_migrated_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Catalog(url).dispose()
    from data_platform.catalog import _migrated
    _migrated.discard(url)
    assert Catalog(url).schema_revision() == "0008"

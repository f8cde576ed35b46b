"""Tenant isolation, from the outside and from the inside.

Outside: a table of escape attempts through every CLI command that takes a tenant,
each refused with a clear error or answered with nothing of another tenant's.
Inside: `data_platform.tenancy`, the one scope every tenant job runs in. Its store and
catalog refuse whatever belongs to another tenant, and bugs planted in the jobs (a key
built for the wrong tenant, a query that lost its tenant filter) are stopped by it
before anything of the other tenant is read or written."""

import hashlib
import io
import json
import os

import pyarrow.parquet as pq
import pytest

from data_platform import cli, erasure, exports, layout, tenancy
from data_platform import training_sets as tsets
from data_platform.catalog import COMPLETE, FRESH, QUARANTINED, Catalog, RetentionMove
from data_platform.storage import LocalObjectStore
from data_platform.tenancy import TenantViolation, tenant_of_key
from data_platform_tests.support import ingest_everything, jsonl

ESCAPES = [
    "../acme",            # traversal
    "acme/../other",
    "/acme",              # absolute
    "acme\\x",            # backslash
    "*",                  # wildcards
    "acm%",
    "acme' OR '1'='1",    # SQL metacharacters
    "acme; DROP TABLE uploads",
    "\u0430cme",          # Cyrillic a: looks like "acme"
    "ACME",               # case
    "acme\x00",           # NUL
    "",                   # empty
    "a" * 64,             # too long
]


@pytest.fixture
def platform(tmp_path, monkeypatch, capsys):
    store = LocalObjectStore(tmp_path / "objects")
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", str(tmp_path / "objects"))
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", catalog_url)
    monkeypatch.setenv("DATA_PLATFORM_CONTRACTS_DIR", str(tmp_path / "contracts"))
    store.put_bytes("landing/acme/events/a.jsonl", jsonl([{"id": i, "secret": f"acme-{i}"} for i in range(5)]))
    store.put_bytes("landing/other/events/o.jsonl", jsonl([{"id": i, "secret": f"other-{i}"} for i in range(3)]))
    catalog = Catalog(catalog_url)
    ingest_everything(store, catalog)
    tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m"), actor="t")

    def run(*args) -> tuple[int, object, str]:
        capsys.readouterr()
        code = cli.main([*args, "--json"])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    return run


READ_COMMANDS = [
    ("status", "--tenant"),
    ("list", "--state", "used", "--tenant"),
    ("training-set", "list", "--tenant"),
]
ACTING_COMMANDS = [
    ("training-set", "create", "--tenant"),
    ("training-path", "--tenant"),
    ("cleanup", "--dry-run", "--tenant"),
    ("export", "--week", "2026-W47", "--tenant"),
    ("features", "list", "--tenant"),
    ("verify", "--tenant"),
]


@pytest.mark.parametrize("name", ESCAPES)
def test_reads_with_a_foreign_or_malformed_tenant_return_nothing_of_anyone(platform, name):
    for command in READ_COMMANDS:
        code, out, err = platform(*command, name)
        # Bound parameters: a name that is not a tenant matches no row. Nothing leaks.
        assert (code, out) == (0, []), (command, name, out, err)


@pytest.mark.parametrize("name", ESCAPES)
def test_commands_that_act_refuse_a_malformed_tenant(platform, name):
    for command in ACTING_COMMANDS:
        code, out, err = platform(*command, name)
        assert code != 0 and out is None, (command, name, out)
        assert len(err.strip().splitlines()) == 1 and "tenant" in err, (command, err)  # one clear line
        assert "acme-" not in err and "other-" not in err


def test_a_tenant_sees_only_its_own(platform):
    code, status, _ = platform("status", "--tenant", "other")
    assert code == 0 and {e["tenant"] for e in status} == {"other"}
    code, sets, _ = platform("training-set", "list", "--tenant", "other")
    assert (code, sets) == (0, [])  # acme's set is not other's
    code, _, err = platform("training-path", "--tenant", "other")
    assert code == 1 and "no complete training set for tenant 'other'" in err
    code, path, _ = platform("training-path", "--tenant", "acme")
    assert code == 0 and path["prefix"].startswith("training_sets/acme/")


# -- the scope inside -------------------------------------------------------------------------------


@pytest.mark.parametrize("key, tenant", [
    ("landing/acme/events/a.jsonl", "acme"),
    ("data/acme/events/upload-0000000001.parquet", "acme"),
    ("quarantine/acme/events/upload-0000000001/report.json", "acme"),
    ("archive/acme/events/x.parquet", "acme"),
    ("training_sets/acme/m/v0001/manifest.json", "acme"),
    ("features/acme/f/v0001/part-0.parquet", "acme"),
    ("exports/acme/2026-W47/manifest.json", "acme"),
    ("exports/acme/", "acme"),
    ("_platform/indexes/rows/acme/events/upload-0000000001.parquet", "acme"),
    ("_platform/contracts/acme/events.yaml", "acme"),
    ("_platform/erasure/acme/0123.json", "acme"),
    ("data/acme", None),  # the tenant segment must be complete: not a prefix of "acme2"
    ("data/ac", None),
    ("data/ACME/x", None),
    ("data/_invalid/x", None),
    ("quarantine/_invalid/upload-0000000001/report.json", None),
    ("_platform/backups/20261201/backup.json", None),
    ("_platform/indexes/rows/", None),
    ("_platform/assets/fresh_data/acme/events.json", None),
    ("elsewhere/acme/x", None),
])
def test_every_key_of_the_layout_has_one_owner(key, tenant):
    assert tenant_of_key(key) == tenant


@pytest.fixture
def two_tenants(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    store.put_bytes("landing/acme/events/a.jsonl", jsonl([{"id": i, "secret": f"acme-{i}"} for i in range(5)]))
    store.put_bytes("landing/other/events/o.jsonl", jsonl([{"id": i, "secret": f"other-{i}"} for i in range(3)]))
    ingest_everything(store, catalog)
    uploads = {u.tenant: u for u in catalog.list_uploads()}
    assert {u.state for u in uploads.values()} == {FRESH}
    return store, catalog, uploads


def _digest(store, key):
    return hashlib.sha256(store.get_bytes(key)).hexdigest()


def test_the_scoped_store_refuses_every_key_of_another_tenant_or_the_platform(two_tenants):
    store, _, uploads = two_tenants
    acme = tenancy.scope_store(store, "acme")
    theirs, ours = uploads["other"].object_key, uploads["acme"].object_key
    assert acme.get_bytes(ours) == store.get_bytes(ours)
    assert {i.key for i in acme.list("data/acme/")} == {ours}
    attempts = [
        lambda: acme.get_bytes(theirs),
        lambda: acme.head(theirs),
        lambda: acme.put_bytes("data/other/events/planted.parquet", b"x"),
        lambda: acme.copy(theirs, "data/acme/events/stolen.parquet"),
        lambda: acme.copy(ours, "data/other/events/pushed.parquet"),
        lambda: acme.delete(theirs),
        lambda: acme.delete_many([ours + ".missing", theirs]),
        lambda: acme.open_write("exports/other/2026-W47/manifest.json"),
        lambda: list(acme.list("data/")),  # a listing that spans tenants
        lambda: list(acme.list("data/ac")),  # a prefix of "acme" and of "acme2"
        lambda: acme.get_bytes("_platform/backups/x/backup.json"),
        lambda: acme.get_bytes("quarantine/_invalid/upload-0000000001/report.json"),
        lambda: acme.get_bytes("data/acme/../other/events/x.parquet"),
        lambda: acme.fs_path(theirs),
        # pyarrow's filesystem of the scoped store checks paths too, whatever builds them.
        lambda: pq.read_table(store.fs_path(theirs), filesystem=acme.filesystem),
        lambda: acme.filesystem.open_output_stream(store.fs_path(ours)),
        lambda: acme.filesystem.delete_file(store.fs_path(ours)),
        lambda: tenancy.scope_store(acme, "other"),  # a scope never switches tenant
    ]
    for attempt in attempts:
        with pytest.raises(TenantViolation):
            attempt()
    assert pq.read_table(acme.fs_path(ours), filesystem=acme.filesystem).num_rows == 5
    assert not store.exists("data/other/events/planted.parquet") and store.exists(theirs)


def test_the_scoped_catalog_refuses_calls_and_answers_of_another_tenant(two_tenants, monkeypatch):
    _, catalog, uploads = two_tenants
    acme = tenancy.scope_catalog(catalog, "acme")
    other = uploads["other"]
    assert [u.tenant for u in acme.list_uploads()] == ["acme"]  # the filter is filled in
    assert acme.get(uploads["acme"].id).tenant == "acme"
    attempts = [
        lambda: acme.list_uploads(tenant="other"),
        lambda: acme.get(other.id),  # an id is resolved to its owner first
        lambda: acme.audit_trail(other.id),
        lambda: acme.record_data_checksum(other.id, "0" * 64, 1),
        lambda: acme.mark_quarantined(other, "t", claimer=None, reason="x", object_key="quarantine/other/x"),
        lambda: acme.delete_uploads([RetentionMove(other.id, FRESH, "x")], actor="t"),
        lambda: acme.referenced_keys([other.object_key]),
        lambda: acme.usage_lineage(None),  # every upload of every tenant
        lambda: acme.stats(),  # platform-wide: nothing to attribute it to
        lambda: acme.engine,  # raw SQL is not scoped, so not offered
        lambda: tenancy.scope_catalog(acme, "other"),
    ]
    for attempt in attempts:
        with pytest.raises(TenantViolation):
            attempt()
    # A query that lost its tenant filter: its answer is checked, not trusted.
    monkeypatch.setattr(Catalog, "first_copy", lambda self, tenant, sha256: other)
    with pytest.raises(TenantViolation):
        acme.first_copy("acme", "0" * 64)
    assert catalog.get(other.id).state == FRESH


def test_a_job_with_a_key_built_for_another_tenant_writes_nothing_there(two_tenants, monkeypatch):
    store, catalog, uploads = two_tenants
    theirs = uploads["other"].object_key
    before = _digest(store, theirs)
    store.put_bytes("landing/acme/events/b.jsonl", jsonl([{"id": 9, "secret": "acme-9"}]))
    real = layout.data_key
    monkeypatch.setattr(layout, "data_key", lambda tenant, dataset, upload_id: real("other", dataset, upload_id))
    _, outcomes, failures = ingest_everything(store, catalog)
    assert not outcomes and len(failures) == 1 and "TenantViolation" in failures[0][2]
    assert _digest(store, theirs) == before
    assert not any(i.key.startswith("data/other/") and i.key != theirs for i in store.list("data/"))


def test_a_query_that_loses_its_tenant_filter_exports_nothing_of_another_tenant(two_tenants, monkeypatch):
    store, catalog, _ = two_tenants
    real = Catalog.list_uploads
    monkeypatch.setattr(Catalog, "list_uploads", lambda self, **kw: real(self, **{**kw, "tenant": None}))
    week = exports.Week.containing(catalog.list_uploads()[0].ingested_at).key
    with pytest.raises(TenantViolation):
        exports.export_week(store, catalog, "acme", week)
    assert not list(store.list("exports/"))


def test_a_training_set_written_under_another_tenant_is_refused_and_its_claim_released(two_tenants, monkeypatch):
    store, catalog, _ = two_tenants
    monkeypatch.setattr(tsets, "_prefix_of", lambda request: lambda v: layout.training_set_prefix("other", "m", v))
    with pytest.raises(TenantViolation):
        tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m"), actor="t")
    assert not list(store.list("training_sets/"))
    # The build failed on a refused write: its files went back to fresh for the next build.
    assert {u.state for u in catalog.list_uploads(tenant="acme")} == {FRESH}


# -- erasure: inside the scope, and its one narrow view outside it --------------------------------------

ALICE = "alice@example.com"
CONTRACT = b"""
version: 1
columns:
  id: {type: string, required: true}
  email: {type: string, pii: email}
primary_key: [id]
"""


def alice() -> erasure.Subject:
    key = os.environ.get("DATA_PLATFORM_PSEUDONYM_KEY", "test-pseudonym-key-not-for-production")  # as ingestion
    return erasure.Subject(key.encode(), "acme", ALICE)


@pytest.fixture
def alice_everywhere(local_store, sqlite_catalog):
    """Alice in the data, a complete training set and an invalid-key original (her raw
    address: a landing key without a dataset) of both tenants, and in one whose key
    names no tenant."""
    store, catalog = local_store, sqlite_catalog
    for tenant in ("acme", "other"):
        store.put_bytes(f"_platform/contracts/{tenant}/events.yaml", CONTRACT)
        store.put_bytes(f"landing/{tenant}/events/a.jsonl",
                        jsonl([{"id": f"{tenant}-{i}", "email": ALICE if i == 1 else f"u{i}@example.org"}
                               for i in range(4)]))
        store.put_bytes(f"landing/{tenant}/notes.jsonl", jsonl([{"note": f"write to {ALICE}"}]))
    store.put_bytes("landing/stray.jsonl", jsonl([{"note": f"write to {ALICE}"}]))
    ingest_everything(store, catalog)
    for tenant in ("acme", "other"):
        tsets.create_training_set(store, catalog, tsets.TrainingSetRequest(tenant, name="m"), actor="t")
    invalid = {u.landing_key: u for u in catalog.list_uploads() if u.reason == "invalid_key"}
    assert sorted(invalid) == ["landing/acme/notes.jsonl", "landing/other/notes.jsonl", "landing/stray.jsonl"]
    return store, catalog, invalid


def _theirs(store, catalog, tenant="other") -> tuple[dict, list]:
    """Everything of `tenant`: its objects (with the invalid-key originals it uploaded), byte
    for byte, and its catalog rows (uploads and training sets), field for field."""
    prefixes = [i.key for i in store.list("") if tenancy.tenant_of_key(i.key) == tenant]
    prefixes += [i.key for u in catalog.list_uploads() if u.landing_key.startswith(f"landing/{tenant}/")
                 and u.object_key and u.object_key.startswith("quarantine/_invalid/") for i in store.list(u.object_key)]
    rows = [u for u in catalog.list_uploads() if u.tenant == tenant or u.landing_key.startswith(f"landing/{tenant}/")]
    return {k: store.get_bytes(k) for k in sorted(prefixes)}, rows + catalog.training_sets(tenant=tenant)


def test_an_erasure_whose_index_lookup_lost_its_tenant_filter_reads_nothing_of_another_tenant(alice_everywhere,
                                                                                              monkeypatch):
    store, catalog, _ = alice_everywhere
    before = _theirs(store, catalog)
    real = Catalog.tenant_index_runs
    monkeypatch.setattr(Catalog, "tenant_index_runs",
                        lambda self, tenant, kind: real(self, tenant, kind) + real(self, "other", kind))
    with pytest.raises(TenantViolation, match="_platform/indexes/subjects/other/"):
        erasure.forget(store, catalog, alice())
    assert _theirs(store, catalog) == before
    assert not catalog.suppressions("other")  # nothing recorded for the other tenant either


def test_an_erasure_whose_training_set_query_lost_its_tenant_filter_rewrites_nothing_of_another_tenant(
        alice_everywhere, monkeypatch):
    store, catalog, _ = alice_everywhere
    before = _theirs(store, catalog)
    monkeypatch.setattr(Catalog, "complete_training_sets_holding",
                        lambda self, tenant, upload_ids: self.training_sets(state=COMPLETE))  # every tenant's
    subject = alice()
    with pytest.raises(TenantViolation, match="complete_training_sets_holding answered with a row of another"):
        erasure.forget(store, catalog, subject)
    assert _theirs(store, catalog) == before
    # acme's own data was erased before the query; the request is left to finish once fixed.
    assert erasure.request_state(catalog, erasure.request_id_for(subject))["state"] == erasure.STARTED
    monkeypatch.undo()
    receipt = erasure.forget(store, catalog, subject)
    assert receipt["counts"]["data_rows_erased"] == 1 and _theirs(store, catalog) == before


def test_an_erasure_whose_invalid_key_search_lost_its_landing_filter_deletes_nothing_of_another_tenant(
        alice_everywhere, monkeypatch):
    store, catalog, invalid = alice_everywhere
    before = _theirs(store, catalog)
    theirs = invalid["landing/other/notes.jsonl"]
    assert any(ALICE.encode() in body for key, body in before[0].items() if key.startswith(theirs.object_key))
    # Every invalid-key upload instead of the tenant's: the other tenant's original holds
    # Alice's raw address too, and would go.
    monkeypatch.setattr(tenancy.InvalidKeyOriginals, "uploads", lambda self: self._catalog.invalid_key_uploads())
    with pytest.raises(TenantViolation, match="is not an invalid-key upload from landing/acme/"):
        erasure.forget(store, catalog, alice())
    assert _theirs(store, catalog) == before
    assert catalog.get(theirs.id).state == QUARANTINED


def test_the_invalid_key_view_holds_the_tenants_originals_and_nothing_else(alice_everywhere, tmp_path):
    store, catalog, invalid = alice_everywhere
    mine, theirs, stray = (invalid[k] for k in ("landing/acme/notes.jsonl", "landing/other/notes.jsonl",
                                                "landing/stray.jsonl"))
    view = tenancy.InvalidKeyOriginals(store, catalog, "acme")
    assert [u.id for u in view.uploads()] == [mine.id]
    assert view.unattributed() == [(stray.id, stray.object_key)]  # named, never read
    keys = {u.id: sorted(i.key for i in store.list(u.object_key)) for u in (mine, theirs, stray)}
    assert sorted(i.key for i in view.list(mine.object_key)) == keys[mine.id]
    my_original, their_original, stray_original = (
        next(k for k in keys[u.id] if "/original/" in k) for u in (mine, theirs, stray))
    assert ALICE.encode() in store.get_bytes(their_original)
    view.download(my_original, io.BytesIO())
    acme_data = next(u for u in catalog.list_uploads(tenant="acme") if u.state != QUARANTINED)
    before = {k: store.get_bytes(k) for ks in keys.values() for k in ks}
    attempts = [
        lambda: list(view.list(theirs.object_key)),
        lambda: list(view.list("quarantine/_invalid/")),  # spans every upload's originals
        lambda: view.download(their_original, io.BytesIO()),
        lambda: view.download(stray_original, io.BytesIO()),  # names no tenant: anyone's
        lambda: view.download(my_original.replace(mine.object_key, mine.object_key + "../"
                                                  + theirs.object_key.split("/")[-2] + "/"), io.BytesIO()),
        lambda: view.download(acme_data.object_key, io.BytesIO()),  # the tenant's own objects: the scope's
        lambda: view.delete_many([my_original, their_original]),  # refused whole: nothing deleted
        lambda: view.get(theirs.id),
        lambda: view.get(stray.id),
        lambda: view.delete_uploads([RetentionMove(theirs.id, QUARANTINED, "x")], actor="t"),
        lambda: view.delete_uploads([RetentionMove(acme_data.id, acme_data.state, "x")], actor="t"),
        # Never built from, nor reached through, a scope: a scoped run cannot widen itself.
        lambda: tenancy.InvalidKeyOriginals(tenancy.scope_store(store, "acme"), catalog, "acme"),
        lambda: tenancy.InvalidKeyOriginals(store, tenancy.scope_catalog(catalog, "acme"), "acme"),
        lambda: tenancy.scope_catalog(catalog, "acme").invalid_key_uploads(),
        lambda: erasure.forget(tenancy.scope_store(store, "acme"), catalog, alice()),
    ]
    for attempt in attempts:
        with pytest.raises(TenantViolation):
            attempt()
    assert {k: store.get_bytes(k) for k in before} == before
    assert {catalog.get(u.id).state for u in (mine, theirs, stray)} == {QUARANTINED}
    assert catalog.get(acme_data.id).state == acme_data.state
    # The erasure itself takes the tenant's original only.
    receipt = erasure.forget(store, catalog, alice())
    assert [e["key"] for e in receipt["deleted"] if e["upload_id"] == mine.id] == [my_original]
    assert not any(store.exists(k) for k in keys[mine.id]) and catalog.get(mine.id).state == "deleted"
    assert {k: store.get_bytes(k) for k in keys[theirs.id] + keys[stray.id]} == \
        {k: before[k] for k in keys[theirs.id] + keys[stray.id]}

"""Tenant isolation, from the outside and from the inside.

Outside: a table of escape attempts through every CLI command that takes a tenant,
each refused with a clear error or answered with nothing of another tenant's.
Inside: `data_platform.tenancy`, the one scope every tenant job runs in. Its store and
catalog refuse whatever belongs to another tenant, and bugs planted in the jobs (a key
built for the wrong tenant, a query that lost its tenant filter) are stopped by it
before anything of the other tenant is read or written."""

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from data_platform import cli, exports, layout, tenancy
from data_platform import training_sets as tsets
from data_platform.catalog import FRESH, QUARANTINED, Catalog, RetentionMove
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

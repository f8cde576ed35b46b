"""Tenant isolation from the outside: a table of escape attempts through every CLI
command that takes a tenant, each refused with a clear error or answered with nothing
of another tenant's. (The single scoping layer inside the code is issue 7's next step.)"""

import json

import pytest

from data_platform import cli
from data_platform import training_sets as tsets
from data_platform.catalog import Catalog
from data_platform.storage import LocalObjectStore
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

"""`data-platform features register|list|show|get` as scripts use them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_platform import features as fs
from data_platform.catalog import Catalog
from data_platform.storage import open_store
from data_platform_tests.test_features import add_fresh, day, orders

CLI = [str(Path(sys.executable).with_name("data-platform"))]

DEFINITION = """
name: customer_orders
entities: [customer_id]
event_timestamp: ordered_at
features: {amount: float, items: integer}
source: {dataset: orders}
ttl: 2d
owner: team-growth
"""


def cli(env, *args, ok=True):
    out = subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=120)
    assert (out.returncode == 0) == ok, out.stderr
    return out


@pytest.fixture(params=["local", "s3"])
def platform(request, tmp_path, pg_catalog_url):
    if request.param == "s3":
        request.getfixturevalue("s3_store")  # a fresh bucket; sets the AWS_* variables
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_PLATFORM_")}
    env["DATA_PLATFORM_HOME"] = str(tmp_path / "home")
    if request.param == "s3":
        env["DATA_PLATFORM_STORAGE_URL"] = "s3://test-bucket/root"
        env["DATA_PLATFORM_CATALOG_URL"] = pg_catalog_url
    store = open_store(env.get("DATA_PLATFORM_STORAGE_URL") or str(tmp_path / "home" / "objects"))
    catalog = Catalog(env.get("DATA_PLATFORM_CATALOG_URL") or f"sqlite:///{tmp_path / 'home' / 'catalog.db'}")
    return env, store, catalog


def test_register_list_show_get_round_trip(platform, tmp_path):
    env, store, catalog = platform
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1), (1, day(2), 20.0, 2), (2, day(1), 5.0, 3)]))
    (tmp_path / "def.yaml").write_text(DEFINITION)
    first = json.loads(cli(env, "features", "register", "--tenant", "acme", "--file", str(tmp_path / "def.yaml"),
                           "--json").stdout)
    assert (first["created"], first["revision"], first["definition"]["ttl_seconds"]) == (True, 1, 2 * 86400)
    again = json.loads(cli(env, "features", "register", "--tenant", "acme", "--file", str(tmp_path / "def.yaml"),
                           "--json").stdout)
    assert (again["created"], again["revision"]) == (False, 1)
    fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="test")

    (listed,) = json.loads(cli(env, "features", "list", "--tenant", "acme", "--json").stdout)
    assert (listed["name"], listed["versions"], listed["latest_version"]["rows"]) == ("customer_orders", 1, 3)
    shown = json.loads(cli(env, "features", "show", "--tenant", "acme", "--name", "customer_orders",
                           "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == [1] and shown["definition"]["owner"] == "team-growth"
    v1 = json.loads(cli(env, "features", "show", "--tenant", "acme", "--name", "customer_orders", "--version", "1",
                        "--json").stdout)
    assert v1["state"] == "complete" and v1["sources"][0]["rows"] == 3 and v1["parts"][0]["sha256"]

    (tmp_path / "entities.csv").write_text(
        "customer_id,event_timestamp\n1,2026-03-01T12:00:00Z\n1,2026-03-04T00:00:00Z\n2,2026-03-01T00:00:00Z\n"
        "1,2026-03-07T00:00:00Z\n")
    got = json.loads(cli(env, "features", "get", "--tenant", "acme", "--name", "customer_orders", "--entities",
                         str(tmp_path / "entities.csv"), "--json").stdout)
    assert [r["amount"] for r in got["records"]] == [10.0, 20.0, None, None]  # the last is past the 2-day TTL
    assert got["matched"] == {"amount": 2, "items": 2} and got["version"] == 1
    pq.write_table(pa.table({"customer_id": [1], "event_timestamp": [day(7)]}), tmp_path / "e.parquet")
    out = json.loads(cli(env, "features", "get", "--tenant", "acme", "--name", "customer_orders", "--entities",
                         str(tmp_path / "e.parquet"), "--features", "items", "--ttl", "30d", "--out",
                         str(tmp_path / "out.parquet"), "--json").stdout)
    assert out["rows"] == 1 and out["columns"] == ["customer_id", "event_timestamp", "items"]
    assert pq.read_table(tmp_path / "out.parquet").column("items").to_pylist() == [2]


def test_errors_are_one_line_and_other_tenants_get_not_found(platform, tmp_path):
    env, store, catalog = platform
    add_fresh(store, catalog, orders([(1, day(0), 10.0, 1)]))
    (tmp_path / "def.yaml").write_text(DEFINITION)
    cli(env, "features", "register", "--tenant", "acme", "--file", str(tmp_path / "def.yaml"), "--json")
    fs.materialise_feature_table(store, catalog, "acme", "customer_orders", actor="test")
    pq.write_table(pa.table({"customer_id": [1], "event_timestamp": [day(1)]}), tmp_path / "e.parquet")
    for args, message in [
        (("show", "--tenant", "globex", "--name", "customer_orders"),
         "no feature table 'customer_orders' for tenant 'globex'"),
        (("get", "--tenant", "globex", "--name", "customer_orders", "--entities", str(tmp_path / "e.parquet")),
         "no feature table 'customer_orders' for tenant 'globex'"),
        (("show", "--tenant", "acme", "--name", "customer_orders", "--version", "7"),
         "no feature table 'customer_orders' version 7 for tenant 'acme'"),
        (("register", "--tenant", "acme", "--file", str(tmp_path / "nope.yaml")), "nope.yaml: cannot be read"),
        (("list", "--tenant", "Not A Tenant"), "tenant 'Not A Tenant' does not match"),
    ]:
        out = cli(env, "features", *args, "--json", ok=False)
        assert out.stdout == "" and len(out.stderr.strip().splitlines()) == 1
        assert message in out.stderr, out.stderr
    (tmp_path / "bad.yaml").write_text(DEFINITION.replace("amount: float", "amount: money"))
    out = cli(env, "features", "register", "--tenant", "acme", "--file", str(tmp_path / "bad.yaml"), "--json",
              ok=False)
    assert "bad.yaml: features.amount: type 'money' is not one of" in out.stderr
    assert json.loads(cli(env, "features", "list", "--tenant", "globex", "--json").stdout) == []

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from data_platform.contracts import (
    ColumnSpec,
    Contract,
    ContractError,
    ContractRegistry,
    NEVER,
    RetentionPolicy,
    load_contract_file,
    parse_contract,
)
from data_platform.layout import InvalidKey
from data_platform.storage import LocalObjectStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "contracts"
SRC = "contracts/acme/tickets.yaml"

FULL = """
version: 3
description: Support tickets
columns:
  record_id: {type: string, required: true, regex: "^rec-", unique: true, description: the id}
  user_email: {type: string, pii: email}
  user_id: {type: string, pii: name}
  ip_address: {type: string, pii: ip}
  phone: {type: string, pii: phone}
  text: {type: string, pii: free_text}
  category: {type: string, allowed: [billing, outage]}
  priority: {type: integer, min: 1, max: 4, required: true, allowed: [1, 2, 3, 4]}
  cost: {type: float, min: 0, max: 1.5e+3}
  flag: {type: boolean, allowed: [true]}
  created_at: {type: timestamp, required: true, min: "2023-01-01T01:00:00+01:00", max: 2030-01-01T00:00:00Z}
  day: {type: date, min: 2023-01-01, max: "2024-12-31"}
primary_key: [record_id, created_at]
extra_columns: reject
validation:
  max_failing_share: 0.2
  blocking: false
near_duplicates: drop
retention:
  archive_after_uses: 3
  archive_after_days: 90
  deprecate_after_days: 180
  delete_after_days: 0
"""

MINIMAL = "version: v1\ncolumns:\n  a: {type: string}\n"


def parse(text, source=SRC):
    return parse_contract(text, tenant="acme", dataset="tickets", source=source)


def test_full_contract_parses_every_field():
    c = parse(FULL)
    assert (c.tenant, c.dataset, c.version, c.source) == ("acme", "tickets", "3", SRC)
    assert c.description == "Support tickets"
    assert [col.name for col in c.columns] == [
        "record_id", "user_email", "user_id", "ip_address", "phone", "text",
        "category", "priority", "cost", "flag", "created_at", "day"]
    assert c.column("record_id") == ColumnSpec(
        name="record_id", type="string", required=True, regex="^rec-", unique=True, description="the id")
    assert c.column("category").allowed == ("billing", "outage")
    prio = c.column("priority")
    assert (prio.type, prio.required, prio.min, prio.max, prio.allowed) == ("integer", True, 1, 4, (1, 2, 3, 4))
    assert (c.column("cost").min, c.column("cost").max) == (0, 1500.0)
    assert c.column("flag").allowed == (True,)
    # Timestamp bounds are parsed and normalised to UTC, whatever form YAML gave them in.
    created = c.column("created_at")
    assert created.min == datetime(2023, 1, 1, 0, 0, tzinfo=UTC)
    assert created.max == datetime(2030, 1, 1, tzinfo=UTC)
    assert created.min.utcoffset().total_seconds() == 0
    assert (c.column("day").min, c.column("day").max) == (date(2023, 1, 1), date(2024, 12, 31))
    assert c.pii_columns == {"user_email": "email", "user_id": "name", "ip_address": "ip",
                             "phone": "phone", "text": "free_text"}
    assert c.primary_key == ("record_id", "created_at")
    assert (c.extra_columns, c.max_failing_share, c.blocking, c.near_duplicates) == ("reject", 0.2, False, "drop")
    assert c.retention == RetentionPolicy(3, 90, 180, 0)
    assert c.column("nope") is None


def test_to_dict_is_json_and_parses_back_to_the_same_contract():
    c = parse(FULL)
    summary = json.loads(json.dumps(c.to_dict()))
    assert (summary["version"], summary["source"], summary["tenant"]) == ("3", SRC, "acme")
    assert summary["columns"]["priority"] == {
        "type": "integer", "required": True, "min": 1, "max": 4, "allowed": [1, 2, 3, 4]}
    assert summary["columns"]["created_at"]["min"] == "2023-01-01T00:00:00+00:00"
    assert summary["validation"] == {"max_failing_share": 0.2, "blocking": False}
    for key in ("tenant", "dataset", "source"):
        del summary[key]
    # JSON is YAML: the summary is itself a valid contract.
    assert parse(json.dumps(summary)) == c


def test_defaults():
    c = parse(MINIMAL)
    assert c == Contract(tenant="acme", dataset="tickets", version="v1",
                         columns=(ColumnSpec(name="a", type="string"),), source=SRC)
    assert (c.primary_key, c.extra_columns, c.max_failing_share, c.blocking, c.near_duplicates) == (
        (), "allow", 0.5, True, "flag")
    assert c.retention == RetentionPolicy(None, None, None, None)
    assert c.description is None and c.pii_columns == {}
    col = c.columns[0]
    assert (col.required, col.min, col.max, col.allowed, col.regex, col.pii, col.unique) == (
        False, None, None, None, None, None, False)


def test_empty_sections_mean_defaults():
    c = parse(MINIMAL + "validation:\nretention:\nprimary_key:\n")
    assert (c.max_failing_share, c.blocking, c.retention, c.primary_key) == (0.5, True, RetentionPolicy(), ())


def test_retention_absent_means_platform_default_null_or_never_means_never():
    c = parse(MINIMAL + "retention:\n  archive_after_days: null\n  deprecate_after_days: never\n"
                        "  delete_after_days: 0\n")
    # archive_after_uses is absent: None, the platform default applies (data_platform.retention).
    assert c.retention == RetentionPolicy(archive_after_uses=None, archive_after_days=NEVER,
                                          deprecate_after_days=NEVER, delete_after_days=0)
    summary = c.to_dict()["retention"]
    assert summary == {"archive_after_days": "never", "deprecate_after_days": "never", "delete_after_days": 0}
    assert parse(MINIMAL + f"retention: {json.dumps(summary)}\n").retention == c.retention


def test_bytes_input():
    assert parse(FULL.encode()).version == "3"


def test_arrow_schema_types():
    schema = parse(FULL).arrow_schema()
    assert schema.field("record_id").type == pa.string()
    assert schema.field("priority").type == pa.int64()
    assert schema.field("cost").type == pa.float64()
    assert schema.field("flag").type == pa.bool_()
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("day").type == pa.date32()
    assert schema.names == [col.name for col in parse(FULL).columns]
    # Required columns stay nullable in the schema: validation reports nulls per row.
    assert schema.field("record_id").nullable


COL = "version: 1\ncolumns:\n  c: {%s}\n"


@pytest.mark.parametrize("text, field", [
    # malformed YAML: the line of yaml's mark
    ("version: 1\ncolumns:\n  a: {type: string\n", "line 4"),
    ("version: 1\ncolumns: [\n", "line 3"),
    ("version: 1\nversion: 2\ncolumns: {a: {type: string}}\n", "line 2"),              # duplicate key
    ("version: 1\ncolumns:\n  a: {type: string}\n  a: {type: integer}\n", "line 4"),
    # top level
    ("", "(top level)"),
    ("- a\n- b\n", "(top level)"),
    ("just a string", "(top level)"),
    (MINIMAL + "colums: {}\n", "colums"),
    # version
    ("columns: {a: {type: string}}\n", "version"),
    ("version: null\ncolumns: {a: {type: string}}\n", "version"),
    ("version: true\ncolumns: {a: {type: string}}\n", "version"),
    ("version: ''\ncolumns: {a: {type: string}}\n", "version"),
    ("version: 1.5\ncolumns: {a: {type: string}}\n", "version"),
    ("version: [1]\ncolumns: {a: {type: string}}\n", "version"),
    # columns
    ("version: 1\n", "columns"),
    ("version: 1\ncolumns: {}\n", "columns"),
    ("version: 1\ncolumns: [a, b]\n", "columns"),
    ("version: 1\ncolumns:\n  c:\n", "columns.c"),
    ("version: 1\ncolumns:\n  c: string\n", "columns.c"),
    ("version: 1\ncolumns:\n  1: {type: string}\n", "columns.1"),
    (COL % "required: true", "columns.c.type"),
    (COL % "type: text", "columns.c.type"),
    (COL % "type: [string]", "columns.c.type"),
    (COL % "type: string, nullable: true", "columns.c.nullable"),
    (COL % "type: string, required: yes please", "columns.c.required"),
    (COL % "type: string, required: 1", "columns.c.required"),
    (COL % "type: string, unique: 'true'", "columns.c.unique"),
    (COL % "type: string, description: 5", "columns.c.description"),
    # min / max
    (COL % "type: integer, min: one", "columns.c.min"),
    (COL % "type: integer, max: true", "columns.c.max"),
    (COL % "type: float, min: .nan", "columns.c.min"),
    (COL % "type: integer, min: 5, max: 1", "columns.c.min"),
    (COL % "type: string, min: 1", "columns.c.min"),
    (COL % "type: boolean, max: 1", "columns.c.max"),
    (COL % "type: timestamp, min: yesterday", "columns.c.min"),
    (COL % "type: timestamp, min: 5", "columns.c.min"),
    (COL % "type: timestamp, min: '2024-02-01T00:00:00Z', max: 2024-01-01", "columns.c.min"),
    (COL % "type: date, max: 2024-13-01", "columns.c.max"),
    (COL % "type: date, max: '2024-01-01T10:00:00'", "columns.c.max"),
    (COL % "type: date, min: 2024-02-01, max: 2024-01-01", "columns.c.min"),
    # allowed
    (COL % "type: string, allowed: []", "columns.c.allowed"),
    (COL % "type: string, allowed: billing", "columns.c.allowed"),
    (COL % "type: string, allowed: [a, [b]]", "columns.c.allowed[1]"),
    (COL % "type: string, allowed: [a, 1]", "columns.c.allowed[1]"),
    (COL % "type: string, allowed: [a, null]", "columns.c.allowed[1]"),
    (COL % "type: integer, allowed: [1, 2.5]", "columns.c.allowed[1]"),
    (COL % "type: boolean, allowed: [yes_really]", "columns.c.allowed[0]"),
    # regex
    (COL % "type: string, regex: '(unclosed'", "columns.c.regex"),
    (COL % "type: string, regex: 5", "columns.c.regex"),
    (COL % "type: integer, regex: '^1'", "columns.c.regex"),
    # pii
    (COL % "type: integer, pii: email", "columns.c.pii"),
    (COL % "type: string, pii: ssn", "columns.c.pii"),
    # primary_key
    (MINIMAL + "primary_key: [b]\n", "primary_key[0]"),
    (MINIMAL + "primary_key: [a, a]\n", "primary_key[1]"),
    (MINIMAL + "primary_key: a\n", "primary_key"),
    (MINIMAL + "primary_key: [[a]]\n", "primary_key[0]"),
    # policies
    (MINIMAL + "extra_columns: ignore\n", "extra_columns"),
    (MINIMAL + "extra_columns: true\n", "extra_columns"),
    (MINIMAL + "near_duplicates: merge\n", "near_duplicates"),
    (MINIMAL + "validation: {max_failing_share: 1.5}\n", "validation.max_failing_share"),
    (MINIMAL + "validation: {max_failing_share: -0.1}\n", "validation.max_failing_share"),
    (MINIMAL + "validation: {max_failing_share: half}\n", "validation.max_failing_share"),
    (MINIMAL + "validation: {blocking: maybe}\n", "validation.blocking"),
    (MINIMAL + "validation: {strict: true}\n", "validation.strict"),
    (MINIMAL + "validation: [0.2]\n", "validation"),
    # retention
    (MINIMAL + "retention: {archive_after_days: -1}\n", "retention.archive_after_days"),
    (MINIMAL + "retention: {delete_after_days: -30}\n", "retention.delete_after_days"),
    (MINIMAL + "retention: {archive_after_uses: 1.5}\n", "retention.archive_after_uses"),
    (MINIMAL + "retention: {deprecate_after_days: '180'}\n", "retention.deprecate_after_days"),
    (MINIMAL + "retention: {deprecate_after_days: forever}\n", "retention.deprecate_after_days"),
    (MINIMAL + "retention: {archive_after_uses: true}\n", "retention.archive_after_uses"),
    (MINIMAL + "retention: {keep_forever: true}\n", "retention.keep_forever"),
    (MINIMAL + "retention: 90\n", "retention"),
    (MINIMAL + "description: [x]\n", "description"),
])
def test_invalid_contract_names_source_and_field(text, field):
    with pytest.raises(ContractError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith(f"{SRC}: {field}"), message
    assert info.value.source == SRC
    assert info.value.field.startswith(field)


def test_yaml_error_includes_the_problem():
    with pytest.raises(ContractError, match=r"contracts/acme/tickets.yaml: line 2, column \d+: invalid YAML"):
        parse("version: 1\ncolumns: {a: [}\n")


def test_invalid_utf8_is_a_contract_error():
    with pytest.raises(ContractError, match=SRC):
        parse(b"version: 1\ncolumns: {a: {type: string, description: \xff\xfe}}\n")


def test_error_message_example_from_the_docs():
    with pytest.raises(ContractError) as info:
        parse(COL % "type: integer, min: one")
    assert str(info.value) == "contracts/acme/tickets.yaml: columns.c.min: expected a number, got 'one'"


def test_example_contract_loads_and_matches_the_bench_data():
    c = load_contract_file(EXAMPLES / "acme" / "tickets.yaml", tenant="acme", dataset="tickets")
    # The fields of ../shared/bench/gen_data.py, in its order.
    assert [col.name for col in c.columns] == [
        "record_id", "user_email", "user_id", "ip_address", "text",
        "category", "priority", "cost", "created_at", "tenant"]
    assert set(c.column("category").allowed) == {
        "billing", "outage", "access", "performance", "security", "feature_request", "data_quality", "account"}
    assert len(c.column("category").allowed) == 8
    assert (c.column("priority").min, c.column("priority").max, c.column("priority").required) == (1, 4, True)
    assert (c.column("cost").type, c.column("cost").min, c.column("cost").required) == ("float", 0, False)
    assert (c.column("created_at").type, c.column("created_at").required) == ("timestamp", True)
    assert c.pii_columns == {"user_email": "email", "user_id": "name", "ip_address": "ip", "text": "free_text"}
    assert c.primary_key == ("record_id",)
    assert c.source == str(EXAMPLES / "acme" / "tickets.yaml")


def test_registry_finds_the_example_directory():
    c = ContractRegistry(EXAMPLES, None).find("acme", "tickets")
    assert c is not None and c.version == "1"


def test_missing_contract_is_none(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    (tmp_path / "contracts" / "acme").mkdir(parents=True)
    (tmp_path / "contracts" / "acme" / "other.yaml").write_text(MINIMAL)
    registry = ContractRegistry(tmp_path / "contracts", store)
    assert registry.find("acme", "tickets") is None
    assert registry.find("globex", "tickets") is None
    assert ContractRegistry(tmp_path / "does-not-exist", None).find("acme", "tickets") is None
    assert ContractRegistry(None, None).find("acme", "tickets") is None


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_directory_lookup(tmp_path, suffix):
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / f"tickets{suffix}").write_text(MINIMAL)
    c = ContractRegistry(tmp_path, None).find("acme", "tickets")
    assert c is not None
    source = str(tmp_path / "acme" / f"tickets{suffix}")
    assert (c.tenant, c.dataset, c.version, c.source) == ("acme", "tickets", "v1", source)


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_store_lookup_under_platform_prefix(tmp_path, suffix):
    store = LocalObjectStore(tmp_path / "objects")
    key = f"_platform/contracts/acme/tickets{suffix}"
    store.put_bytes(key, MINIMAL.encode())
    c = ContractRegistry(tmp_path / "contracts", store).find("acme", "tickets")
    assert c is not None
    assert (c.version, c.source) == ("v1", key)
    # Only that prefix counts.
    other = LocalObjectStore(tmp_path / "other")
    other.put_bytes(f"contracts/acme/tickets{suffix}", MINIMAL.encode())
    assert ContractRegistry(None, other).find("acme", "tickets") is None


def test_directory_wins_over_store(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("_platform/contracts/acme/tickets.yaml", b"version: from-store\ncolumns: {a: {type: string}}\n")
    (tmp_path / "contracts" / "acme").mkdir(parents=True)
    (tmp_path / "contracts" / "acme" / "tickets.yml").write_text("version: from-dir\ncolumns: {a: {type: string}}\n")
    assert ContractRegistry(tmp_path / "contracts", store).find("acme", "tickets").version == "from-dir"
    assert ContractRegistry(None, store).find("acme", "tickets").version == "from-store"


def test_registry_lists_the_datasets_that_have_a_contract(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("_platform/contracts/acme/tickets.yaml", b"version: 1\ncolumns: {a: {type: string}}\n")
    store.put_bytes("_platform/contracts/globex/events.yml", b"version: 1\ncolumns: {a: {type: string}}\n")
    store.put_bytes("_platform/contracts/globex/notes.txt", b"not a contract")
    (tmp_path / "contracts" / "initech").mkdir(parents=True)
    (tmp_path / "contracts" / "initech" / "logs.yaml").write_text("version: 1\ncolumns: {a: {type: string}}\n")
    (tmp_path / "contracts" / "initech" / "_tenant.yaml").write_text("export: {format: csv}\n")  # settings
    store.put_bytes("_platform/contracts/acme/_tenant.yml", b"export: {format: jsonl}\n")
    assert ContractRegistry(tmp_path / "contracts", store).datasets() == {
        ("acme", "tickets"), ("globex", "events"), ("initech", "logs")}
    assert ContractRegistry(None, None).datasets() == set()


def test_invalid_file_raises_rather_than_being_skipped(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("_platform/contracts/acme/tickets.yaml", MINIMAL.encode())
    (tmp_path / "contracts" / "acme").mkdir(parents=True)
    path = tmp_path / "contracts" / "acme" / "tickets.yaml"
    path.write_text("version: 1\ncolumns: {a: {type: text}}\n")
    with pytest.raises(ContractError) as info:
        ContractRegistry(tmp_path / "contracts", store).find("acme", "tickets")
    assert str(info.value).startswith(f"{path}: columns.a.type:")
    store.put_bytes("_platform/contracts/acme/bad.yaml", b"version: 1\n")
    with pytest.raises(ContractError, match="^_platform/contracts/acme/bad.yaml: columns:"):
        ContractRegistry(None, store).find("acme", "bad")


@pytest.mark.parametrize("tenant, dataset", [
    ("..", "tickets"),
    ("acme", ".."),
    ("acme", "../../etc/passwd"),
    ("../acme", "tickets"),
    ("acme/x", "tickets"),
    ("", "tickets"),
    ("acme", "Tickets"),
    ("ABS", "passwd"),
])
def test_traversal_in_names_refused(tmp_path, tenant, dataset):
    # Put a contract wherever the unchecked name would lead, so only the check stops it.
    if tenant == "ABS":
        tenant = str(tmp_path / "etc")
    contracts = tmp_path / "contracts"
    target = contracts / tenant / f"{dataset}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(MINIMAL)
    registry = ContractRegistry(contracts, LocalObjectStore(tmp_path / "objects"))
    with pytest.raises((ContractError, InvalidKey)):
        registry.find(tenant, dataset)


def test_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_PLATFORM_CONTRACTS_DIR", str(tmp_path / "mine"))
    assert ContractRegistry.from_env(None).contracts_dir == tmp_path / "mine"
    monkeypatch.delenv("DATA_PLATFORM_CONTRACTS_DIR")
    monkeypatch.setenv("DATA_PLATFORM_HOME", str(tmp_path / "home"))
    store = LocalObjectStore(tmp_path / "objects")
    registry = ContractRegistry.from_env(store)
    assert registry.contracts_dir == (tmp_path / "home").resolve() / "contracts"
    assert registry.store is store

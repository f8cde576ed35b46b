import pytest

from data_platform import layout
from data_platform.layout import InvalidKey, LandingKey


def test_parses_landing_key_with_nested_path():
    key = LandingKey.parse("landing/acme/tickets/2026/11/batch-1.jsonl")
    assert (key.tenant, key.dataset, key.path) == ("acme", "tickets", "2026/11/batch-1.jsonl")
    assert key.partition == "acme/tickets"
    assert key.filename == "batch-1.jsonl"
    assert key.key == "landing/acme/tickets/2026/11/batch-1.jsonl"


@pytest.mark.parametrize("key", [
    "landing/acme/tickets",                 # no file name
    "landing/acme/tickets/",                # folder only
    "landing/Acme/tickets/a.csv",           # upper case tenant
    "landing/acme/tick ets/a.csv",          # space in dataset
    "landing/_x/tickets/a.csv",             # must start with [a-z0-9]
    "landing/" + "a" * 64 + "/d/a.csv",     # tenant too long
    "landing/acme/tickets/../../other/a.csv",
    "landing/acme/tickets/./a.csv",
    "landing/acme/tickets//a.csv",
    "/landing/acme/tickets/a.csv",
    "landing/acme/tickets/a\\b.csv",
    "landing/acme/tickets/a\x00.csv",
    "landing/acme/tickets/a\x1b[31m.csv",
    "landing/acme/tickets/a\u0085.csv",     # C1 control
    "landing/acme/tickets/" + "x" * 1100,
    "landing/аcme/tickets/a.csv",           # Cyrillic 'а' look-alike
    "elsewhere/acme/tickets/a.csv",
])
def test_rejects_keys_that_do_not_fit_or_escape(key):
    with pytest.raises(InvalidKey):
        LandingKey.parse(key)


def test_built_keys_stay_inside_their_prefix():
    assert layout.data_key("acme", "tickets", 7) == "data/acme/tickets/upload-0000000007.parquet"
    with pytest.raises(InvalidKey):
        layout.data_key("../etc", "tickets", 7)
    assert layout.quarantine_prefix("acme", "tickets", 3) == "quarantine/acme/tickets/upload-0000000003/"
    assert layout.quarantine_prefix(None, None, 3) == "quarantine/_invalid/upload-0000000003/"


def test_safe_original_name_never_escapes():
    assert layout.safe_original_name("landing/acme/t/a/b.csv") == "original/a/b.csv"
    name = layout.safe_original_name("landing/acme/t/../../../etc/passwd")
    assert ".." not in name and name.startswith("original/") and name.count("/") == 1
    assert layout.safe_original_name("landing/acme/t/\x00") .startswith("original/")


def test_partition_key_round_trip():
    assert layout.split_partition_key(layout.partition_key("acme", "tickets")) == ("acme", "tickets")
    with pytest.raises(InvalidKey):
        layout.split_partition_key("acme/../x")

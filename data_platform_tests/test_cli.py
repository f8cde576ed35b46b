"""The CLI as scripts use it: `--json` on stdout only, one-line errors, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_platform.catalog import Catalog
from data_platform.storage import open_store
from data_platform_tests.support import ingest_everything, jsonl

CLI = [str(Path(sys.executable).with_name("data-platform"))]


def cli(env, *args, check=True):
    out = subprocess.run(CLI + list(args), capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(params=["local", "s3"])
def platform_env(request, tmp_path, pg_catalog_url):
    import os

    if request.param == "s3":
        request.getfixturevalue("s3_store")  # fresh bucket on the S3 endpoint (sets AWS_* variables)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_PLATFORM_")}
    env["DATA_PLATFORM_HOME"] = str(tmp_path / "home")
    if request.param == "s3":
        env["DATA_PLATFORM_STORAGE_URL"] = "s3://test-bucket/root"
        env["DATA_PLATFORM_CATALOG_URL"] = pg_catalog_url
    return env


def test_upload_status_stats_round_trip(platform_env, tmp_path):
    env = platform_env
    data = tmp_path / "in" / "day1.jsonl"
    data.parent.mkdir()
    data.write_bytes(jsonl([{"id": i} for i in range(30)]))
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "bad.csv").write_bytes(b"")

    uploaded = json.loads(cli(env, "upload", str(tmp_path / "in"), "--tenant", "acme", "--dataset", "tickets",
                              "--json").stdout)
    keys = sorted(u["key"] for u in uploaded["uploaded"])
    assert len(keys) == 2 and all(k.startswith("landing/acme/tickets/") for k in keys)
    assert keys[1].endswith("/sub/bad.csv") and keys[0].endswith("/day1.jsonl")

    before = json.loads(cli(env, "status", "--json").stdout)
    assert sorted((e["key"], e["state"]) for e in before) == [(k, "landing") for k in keys]

    settings_env = {**env}
    store_url = env.get("DATA_PLATFORM_STORAGE_URL") or str(tmp_path / "home" / "objects")
    catalog_url = env.get("DATA_PLATFORM_CATALOG_URL") or f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
    ingest_everything(open_store(store_url), Catalog(catalog_url))

    status = {e["key"]: e for e in json.loads(cli(settings_env, "status", "--json").stdout)}
    fresh = status[keys[0]]
    assert set(fresh) >= {"key", "tenant", "dataset", "state", "sha256", "rows", "quarantined_rows", "reason",
                          "object_key"}
    assert (fresh["state"], fresh["rows"], fresh["tenant"], fresh["dataset"]) == ("fresh", 30, "acme", "tickets")
    assert fresh["object_key"].startswith("data/acme/tickets/") and len(fresh["sha256"]) == 64
    assert fresh["detail"]["contract"] is None and fresh["detail"]["pii_detected"] == {}
    bad = status[keys[1]]
    assert (bad["state"], bad["reason"]) == ("quarantined", "empty_file")

    only_fresh = json.loads(cli(env, "status", "--state", "fresh", "--tenant", "acme", "--json").stdout)
    assert [e["key"] for e in only_fresh] == [keys[0]]

    stats = json.loads(cli(env, "stats", "--json").stdout)
    assert stats["by_state"]["fresh"] == {"uploads": 1, "bytes": data.stat().st_size, "rows": 30,
                                          "quarantined_rows": 0}
    assert stats["by_state"]["quarantined"]["uploads"] == 1
    assert stats["by_dataset"]["acme/tickets"]["fresh"]["rows"] == 30
    assert stats["totals"]["uploads"] == 2


def test_errors_are_one_line_on_stderr_and_nothing_on_stdout(platform_env, tmp_path):
    out = cli(platform_env, "upload", str(tmp_path / "missing.csv"), "--tenant", "acme", "--dataset", "t",
              "--json", check=False)
    assert out.returncode != 0 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "no such file" in out.stderr
    (tmp_path / "x.csv").write_text("a\n1\n")
    out = cli(platform_env, "upload", str(tmp_path / "x.csv"), "--tenant", "../etc", "--dataset", "t", "--json",
              check=False)
    assert out.returncode != 0 and out.stdout == "" and "invalid tenant" in out.stderr
    out = cli(platform_env, "status", "--state", "bogus", "--json", check=False)
    assert out.returncode != 0 and out.stdout == "" and "unknown state" in out.stderr



def test_a_reader_that_goes_away_gets_no_traceback(platform_env, tmp_path):
    """`data-platform ... --json | head -c 100`: the pipe closes before the output is
    written. The command exits as a tool killed by SIGPIPE does, with nothing on stderr."""
    import os

    (tmp_path / "x.csv").write_text("a\n1\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command starts: its first write fails, every time
    try:
        out = subprocess.run(CLI + ["upload", str(tmp_path / "x.csv"), "--tenant", "acme", "--dataset", "t", "--json"],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, env=platform_env, timeout=120)
    finally:
        os.close(write_end)
    assert out.returncode == 128 + 13, out.stderr
    assert out.stderr == ""
    # The work was done before the output: the upload is there.
    status = json.loads(cli(platform_env, "status", "--json").stdout)
    assert [(u["tenant"], u["dataset"], u["state"]) for u in status] == [("acme", "t", "landing")]

def test_status_on_an_empty_platform_is_an_empty_list(platform_env):
    assert json.loads(cli(platform_env, "status", "--json").stdout) == []
    stats = json.loads(cli(platform_env, "stats", "--json").stdout)
    assert stats["totals"] == {"uploads": 0, "bytes": 0, "rows": 0, "quarantined_rows": 0}


def test_stats_and_status_report_quality_duplicates_and_personal_data(platform_env, tmp_path):
    env = platform_env
    rows = [{"id": i, "email": f"user{i % 7}@example.org", "note": f"Ticket {i}: the export failed again today"}
            for i in range(40)]
    rows += rows[:10]  # ten exact duplicates within the file
    rows.append({"id": 99, "email": None, "note": "Call me at user3@example.org about the invoice"})
    data = tmp_path / "day1.jsonl"
    data.write_bytes(jsonl(rows))
    cli(env, "upload", str(data), "--tenant", "acme", "--dataset", "tickets", "--json")
    store_url = env.get("DATA_PLATFORM_STORAGE_URL") or str(tmp_path / "home" / "objects")
    catalog_url = env.get("DATA_PLATFORM_CATALOG_URL") or f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
    ingest_everything(open_store(store_url), Catalog(catalog_url))

    (entry,) = json.loads(cli(env, "status", "--json").stdout)
    assert entry["state"] == "fresh" and entry["rows"] == 41
    quality = entry["detail"]["quality"]
    # 10 of 51 rows were duplicates; one email cell of 41*3 is null.
    assert quality["uniqueness"] == round(41 / 51, 4)
    assert quality["completeness"] == round(1 - 1 / (41 * 3), 4)
    assert 0 < entry["quality"] == quality["score"] < 1
    assert quality["languages"]["note"] and quality["modality"] in ("text", "mixed")

    findings = json.loads(cli(env, "stats", "--json").stdout)["findings_by_dataset"]["acme/tickets"]
    assert findings["uploads"] == 1 and findings["rows"] == 41
    assert findings["quality"]["score"] == entry["quality"]
    assert findings["duplicate_rows_removed"] == {"within_file": 10, "of_earlier_uploads": 0}
    assert findings["pii_detected_undeclared"] == {"email": "email", "note": "free_text"}
    assert findings["pseudonymised_values"] == {"email": 40}
    assert findings["redacted_in_text"]["email"] == 1
    human = cli(env, "stats").stdout
    assert "acme/tickets" in human and f"{entry['quality']:.3f}" in human


def test_training_set_list_lineage_and_training_path(platform_env, tmp_path):
    env = platform_env
    for day in ("day1", "day2"):
        data = tmp_path / f"{day}.jsonl"
        data.write_bytes(jsonl([{"id": f"{day}-{i}", "n": i} for i in range(20)]))
        cli(env, "upload", str(data), "--tenant", "acme", "--dataset", "events", "--json")
    store_url = env.get("DATA_PLATFORM_STORAGE_URL") or str(tmp_path / "home" / "objects")
    catalog_url = env.get("DATA_PLATFORM_CATALOG_URL") or f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
    ingest_everything(open_store(store_url), Catalog(catalog_url))

    fresh = json.loads(cli(env, "list", "--state", "fresh", "--json").stdout)
    assert len(fresh) == 2 and all(f["rows"] == 20 and f["uses"] == 0 for f in fresh)
    out = cli(env, "training-path", "--tenant", "acme", "--json", check=False)
    assert out.returncode == 1 and out.stdout == "" and "no complete training set" in out.stderr

    created = json.loads(cli(env, "training-set", "create", "--tenant", "acme", "--name", "churn", "--max-rows", "25",
                             "--consumer", "trainer", "--run-id", "r1", "--json").stdout)
    ts = created["training_set"]
    assert (ts["name"], ts["version"], ts["state"], ts["rows"], ts["files"]) == ("churn", 1, "complete", 20, 1)
    assert created["manifest"]["files"][0]["upload_id"] == fresh[0]["upload_id"]  # oldest first, whole files

    used = json.loads(cli(env, "list", "--state", "used", "--json").stdout)
    assert [u["upload_id"] for u in used] == [fresh[0]["upload_id"]] and used[0]["uses"] == 1
    status = {e["upload_id"]: e for e in json.loads(cli(env, "status", "--json").stdout)}
    [usage] = status[fresh[0]["upload_id"]]["used_by"]
    assert (usage["training_set"], usage["version"], usage["consumer"], usage["run_id"], usage["kind"]) == (
        "churn", 1, "trainer", "r1", "build")
    assert status[fresh[1]["upload_id"]]["used_by"] == [] and status[fresh[1]["upload_id"]]["state"] == "fresh"

    path = json.loads(cli(env, "training-path", "--tenant", "acme", "--json").stdout)
    assert path["prefix"] == "training_sets/acme/churn/v0001/" and path["url"].endswith(path["prefix"])
    assert path["parts"] and all(p.startswith(path["prefix"]) for p in path["parts"])

    read = json.loads(cli(env, "training-set", "use", "--tenant", "acme", "--name", "churn", "--consumer",
                          "model-b", "--json").stdout)
    assert read["files"] == 1
    assert json.loads(cli(env, "list", "--state", "used", "--json").stdout)[0]["uses"] == 2

    cli(env, "training-set", "create", "--tenant", "acme", "--name", "churn", "--json")
    out = cli(env, "training-set", "create", "--tenant", "acme", "--json", check=False)
    assert out.returncode == 1 and out.stdout == "" and "no fresh data for tenant 'acme'" in out.stderr
    listed = json.loads(cli(env, "training-set", "list", "--tenant", "acme", "--json").stdout)
    assert [(t["name"], t["version"]) for t in listed] == [("churn", 1), ("churn", 2)]

    stats = json.loads(cli(env, "stats", "--json").stdout)
    assert stats["by_state"]["used"]["uploads"] == 2
    assert stats["training_sets"]["acme/complete"] == {"sets": 2, "rows": 40, "bytes": sum(t["bytes"] for t in listed)}
    assert sum(b["uploads"] for b in stats["quality_distribution"]["bands"]) == 2
    assert stats["growth"][-1]["total_rows"] == 40 and stats["growth"][-1]["total_uploads"] == 2

"""The whole code location loads, as the webserver and daemon load it."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from data_platform.definitions import defs

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_resolve_every_job_sensor_and_asset():
    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs()} >= {"ingest_uploads"}
    sensors = {s.name: s for s in repo.sensor_defs}
    assert sensors["landing_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["landing_sensor"].minimum_interval_seconds <= 30
    assert sensors["statistics_automation"].default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {"fresh_data", "upload_statistics"}
    fresh = graph.get(dg.AssetKey("fresh_data"))
    assert fresh.partitions_def.name == "tenant_dataset"
    assert {"parquet", "s3"} <= set(fresh.kinds)


def test_importing_reads_no_environment(monkeypatch):
    # Resources resolve configuration at launch: importing must not depend on env vars.
    code = ("import os; os.environ.pop('DATA_PLATFORM_HOME', None); "
            "import data_platform.definitions as d; print(type(d.defs).__name__)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATA_PLATFORM_")}
    env["DATA_PLATFORM_STORAGE_URL"] = "s3://"  # invalid: would fail if read at import
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Definitions"


def test_workspace_validates_as_the_daemon_loads_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).with_name("dagster")
    out = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All code locations passed validation" in out.stdout + out.stderr

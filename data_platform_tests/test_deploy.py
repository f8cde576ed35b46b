"""Production deployment files, checked without a Docker engine.

* docker-compose.yml is resolved by the real Compose v2 (`docker compose config`),
  which needs no engine. The plugin comes from PyPI: run
  `scripts/install_compose_plugin.sh` first (the project's test command does).
* deploy/dagster.yaml is loaded as a real DagsterInstance against the local
  PostgreSQL (127.0.0.1:5432, user postgres, trust auth), in a throwaway
  database that is dropped afterwards.

These tests do not import data_platform.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
INSTALL_HINT = "run `bash scripts/install_compose_plugin.sh` (VENV=<your venv>) first"

APP_SERVICES = ("code-server", "webserver", "daemon")
PSEUDONYM_KEY = "test-pseudonym-key-0123456789"

# Variables that docker-compose.yml interpolates: cleared so that the caller's
# environment cannot change what the tests see.
COMPOSE_INPUTS = (
    "DATA_PLATFORM_PSEUDONYM_KEY",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MINIO_API_PORT",
    "MINIO_CONSOLE_PORT",
    "DAGSTER_WEBSERVER_PORT",
    "DATA_PLATFORM_IMAGE_TAG",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_ENV_FILES",
)

# The local PostgreSQL server (trust auth); same variable as conftest.py.
PG_ADMIN_DSN = os.environ.get("DATA_PLATFORM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


# --------------------------------------------------------------------------
# docker compose config


def _compose(args: list[str], extra_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail(f"the docker CLI client is not installed; {INSTALL_HINT}")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_INPUTS}
    env.update(extra_env)
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    version = subprocess.run(
        [docker, "compose", "version"], env=env, capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        pytest.fail(
            f"`docker compose` is not available ({version.stderr.strip()}); {INSTALL_HINT}"
        )
    return subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "--env-file", str(empty_env_file), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _resolved(extra_env: dict[str, str], tmp_path: Path) -> dict:
    proc = _compose(["config", "--format", "json"], extra_env, tmp_path)
    assert proc.returncode == 0, f"docker compose config failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    return _resolved({"DATA_PLATFORM_PSEUDONYM_KEY": PSEUDONYM_KEY}, tmp_path_factory.mktemp("compose"))


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return [cmd] if isinstance(cmd, str) else list(cmd)


def test_compose_services(compose):
    assert set(compose["services"]) == {
        "postgres",
        "minio",
        "minio-init",
        "code-server",
        "webserver",
        "daemon",
    }
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")
    assert compose["services"]["minio"]["image"].startswith("minio/minio")
    assert compose["services"]["minio-init"]["image"].startswith("minio/mc")


def test_app_services_share_one_image_built_from_the_dockerfile(compose):
    services = compose["services"]
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and None not in images, images
    for name in APP_SERVICES:
        build = services[name].get("build")
        assert build is not None, f"{name} has no build section"
        assert Path(build["context"]).resolve() == REPO
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert services[name].get("init") is True, f"{name} needs an init to reap run subprocesses"
        assert any(v["target"] == "/opt/dagster/home/storage" for v in services[name]["volumes"])
    assert DOCKERFILE.is_file()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_get_the_platform_environment(compose, name):
    env = compose["services"][name]["environment"]
    assert env["DATA_PLATFORM_STORAGE_URL"] == "s3://data-platform"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert env["DATA_PLATFORM_PSEUDONYM_KEY"] == PSEUDONYM_KEY
    catalog = env["DATA_PLATFORM_CATALOG_URL"]
    assert re.fullmatch(r"postgresql\+psycopg2://[^:@/]+:[^@/]+@postgres:5432/catalog", catalog), catalog
    assert env["DAGSTER_POSTGRES_HOST"] == "postgres"
    assert env["DAGSTER_POSTGRES_DB"] == "dagster"
    assert env["DAGSTER_POSTGRES_PORT"] == "5432"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_provide_every_variable_the_instance_config_reads(compose, name):
    instance_vars = set(_env_sources(yaml.safe_load((DEPLOY / "dagster.yaml").read_text())))
    assert {"DAGSTER_POSTGRES_USER", "DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_DB"} <= instance_vars
    missing = instance_vars - set(compose["services"][name]["environment"])
    assert not missing, f"{name} lacks {sorted(missing)} used by deploy/dagster.yaml"


def test_credentials_come_from_minio_and_postgres_settings(tmp_path):
    resolved = _resolved(
        {
            "DATA_PLATFORM_PSEUDONYM_KEY": PSEUDONYM_KEY,
            "MINIO_ROOT_USER": "trial-user",
            "MINIO_ROOT_PASSWORD": "trial-secret-1",
            "POSTGRES_USER": "pguser",
            "POSTGRES_PASSWORD": "pgsecret",
        },
        tmp_path,
    )
    services = resolved["services"]
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_ROOT_USER"] == "trial-user"
    assert minio_env["MINIO_ROOT_PASSWORD"] == "trial-secret-1"
    pg_env = services["postgres"]["environment"]
    assert (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"]) == ("pguser", "pgsecret")
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == "trial-user"
        assert env["AWS_SECRET_ACCESS_KEY"] == "trial-secret-1"
        assert env["DATA_PLATFORM_CATALOG_URL"] == "postgresql+psycopg2://pguser:pgsecret@postgres:5432/catalog"
        assert env["DAGSTER_POSTGRES_USER"] == "pguser"
        assert env["DAGSTER_POSTGRES_PASSWORD"] == "pgsecret"


def test_missing_pseudonym_key_fails_validation(tmp_path):
    proc = _compose(["config", "--format", "json"], {}, tmp_path)
    assert proc.returncode != 0, "compose accepted a deployment without DATA_PLATFORM_PSEUDONYM_KEY"
    assert "DATA_PLATFORM_PSEUDONYM_KEY" in proc.stderr
    assert "set a secret pseudonym key" in proc.stderr


def test_empty_pseudonym_key_fails_validation(tmp_path):
    proc = _compose(["config", "--format", "json"], {"DATA_PLATFORM_PSEUDONYM_KEY": ""}, tmp_path)
    assert proc.returncode != 0
    assert "DATA_PLATFORM_PSEUDONYM_KEY" in proc.stderr


def test_minio_init_creates_the_storage_bucket(compose):
    services = compose["services"]
    init = services["minio-init"]
    script = " ".join((init.get("entrypoint") or []) + _command(init))
    bucket = services["code-server"]["environment"]["DATA_PLATFORM_STORAGE_URL"].removeprefix("s3://")
    assert re.search(rf"\bmc mb\b.*\S+/{re.escape(bucket)}\b", script), script
    assert "--ignore-existing" in script  # a restart must not fail
    assert "http://minio:9000" in script
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no"


def test_minio_serves_data_with_a_console(compose):
    minio = compose["services"]["minio"]
    assert _command(minio) == ["server", "/data", "--console-address", ":9001"]
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in minio["volumes"])
    assert minio["healthcheck"]["test"]


def test_postgres_creates_the_dagster_and_catalog_databases(compose):
    pg = compose["services"]["postgres"]
    assert pg["environment"]["POSTGRES_DB"] == "dagster"
    assert any(v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume" for v in pg["volumes"])
    init_mounts = [v for v in pg["volumes"] if v["target"].startswith("/docker-entrypoint-initdb.d/")]
    assert len(init_mounts) == 1, pg["volumes"]
    source = Path(init_mounts[0]["source"])
    assert source.is_file(), source
    assert source.resolve().is_relative_to(REPO / "deploy")
    sql = source.read_text()
    assert re.search(r"^\s*CREATE DATABASE catalog\b", sql, re.IGNORECASE | re.MULTILINE), sql
    assert pg["healthcheck"]["test"]


def test_startup_order_uses_health_and_completion(compose):
    services = compose["services"]

    def conditions(name):
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("code-server") == {
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
    }
    for name in ("webserver", "daemon"):
        assert conditions(name)["code-server"] == "service_healthy"
        assert conditions(name)["postgres"] == "service_healthy"
    # Every service waited on for health has a healthcheck.
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits for {dep}'s health"


def test_service_commands(compose):
    services = compose["services"]
    code_server = _command(services["code-server"])
    assert code_server[:3] == ["dagster", "code-server", "start"]
    assert _flag(code_server, "-m") == "data_platform.definitions"
    assert _flag(code_server, "-h") == "0.0.0.0"
    assert _flag(code_server, "-p") == "4000"

    webserver = _command(services["webserver"])
    assert webserver[0] == "dagster-webserver"
    assert _flag(webserver, "-h") == "0.0.0.0"
    assert _flag(webserver, "-p") == "3000"
    assert any(p["target"] == 3000 and p.get("published") == "3000" for p in services["webserver"]["ports"])

    daemon = _command(services["daemon"])
    assert daemon[:2] == ["dagster-daemon", "run"]

    # Both load the gRPC workspace that the Dockerfile copies into the image.
    workspace = _flag(webserver, "-w")
    assert workspace == _flag(daemon, "-w")
    assert workspace in _dockerfile_copies(), f"the Dockerfile does not copy a workspace to {workspace}"
    assert _dockerfile_copies()[workspace] == "deploy/workspace.yaml"


def test_workspace_loads_the_code_server_over_grpc(compose):
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    assert workspace["load_from"] == [
        {"grpc_server": {"host": "code-server", "port": 4000, "location_name": "data_platform"}}
    ]
    assert "code-server" in compose["services"]
    assert _flag(_command(compose["services"]["code-server"]), "--location-name") == "data_platform"


def test_dockerfile_builds_a_non_root_code_server_image():
    text = DOCKERFILE.read_text()
    instructions = _dockerfile_instructions(text)
    assert instructions[0] == ("FROM", "python:3.11-slim")
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert re.search(r"\bDAGSTER_HOME=/opt/dagster/home\b", env), env
    assert _dockerfile_copies()["/opt/dagster/home/dagster.yaml"] == "deploy/dagster.yaml"
    assert any(op == "RUN" and re.search(r"\bpip install (--no-deps )?\.(\s|$)", arg) for op, arg in instructions)
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    cmd = json.loads(next(arg for op, arg in reversed(instructions) if op == "CMD"))
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert _flag(cmd, "-m") == "data_platform.definitions"
    assert _flag(cmd, "-h") == "0.0.0.0"
    assert _flag(cmd, "-p") == "4000"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data_platform_tests", ".data_platform", ".dagster_home"} <= ignored
    # What the Dockerfile copies must not be ignored.
    for needed in ("pyproject.toml", "README.md", "data_platform", "deploy"):
        assert needed not in ignored


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, arg = line.partition(" ")
            out.append((op.upper(), " ".join(arg.split())))
    return out


def _dockerfile_copies() -> dict[str, str]:
    """Destination path -> source, for single-source COPY lines ($DAGSTER_HOME expanded)."""
    instructions = _dockerfile_instructions(DOCKERFILE.read_text())
    variables: dict[str, str] = {}
    copies: dict[str, str] = {}
    for op, arg in instructions:
        if op == "ENV":
            variables.update(dict(re.findall(r"(\w+)=(\S+)", arg)))
        elif op == "COPY":
            parts = [p for p in arg.split() if not p.startswith("--")]
            if len(parts) == 2:
                src, dest = parts
                dest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], dest)
                copies[dest] = src
    return copies


def _env_sources(node) -> list[str]:
    """Every `env: NAME` source in a Dagster YAML config."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return [node["env"]]
        return [name for value in node.values() for name in _env_sources(value)]
    if isinstance(node, list):
        return [name for value in node for name in _env_sources(value)]
    return []


# --------------------------------------------------------------------------
# deploy/dagster.yaml against a real PostgreSQL


@pytest.fixture
def throwaway_database():
    import psycopg2

    name = f"dp_deploy_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture
def pg_server() -> dict:
    from psycopg2.extensions import parse_dsn

    dsn = parse_dsn(PG_ADMIN_DSN)
    return {
        "user": dsn.get("user", "postgres"),
        "password": dsn.get("password", ""),
        "host": dsn.get("host", "127.0.0.1"),
        "port": int(dsn.get("port", 5432)),
    }


@pytest.fixture
def production_instance(throwaway_database, pg_server, tmp_path, monkeypatch):
    from dagster import DagsterInstance

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_USER", pg_server["user"])
    monkeypatch.setenv("DAGSTER_POSTGRES_PASSWORD", pg_server["password"])
    monkeypatch.setenv("DAGSTER_POSTGRES_HOST", pg_server["host"])
    monkeypatch.setenv("DAGSTER_POSTGRES_DB", throwaway_database)
    monkeypatch.setenv("DAGSTER_POSTGRES_PORT", str(pg_server["port"]))
    instance = DagsterInstance.get()
    try:
        yield instance
    finally:
        instance.dispose()


def test_instance_config_uses_postgresql_storage(production_instance, throwaway_database, pg_server):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance = production_instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    url = instance.run_storage.postgres_url
    assert url.startswith("postgresql+psycopg2://"), url
    assert url.endswith(f"@{pg_server['host']}:{pg_server['port']}/{throwaway_database}"), url


def test_instance_config_queues_runs_and_monitors_them(production_instance):
    from dagster import DefaultRunLauncher, QueuedRunCoordinator

    instance = production_instance
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert 1 <= instance.run_coordinator.get_run_queue_config().max_concurrent_runs <= 16
    assert isinstance(instance.run_launcher, DefaultRunLauncher)
    assert instance.run_monitoring_enabled
    assert not instance.telemetry_enabled


def test_instance_stores_runs_and_events_in_postgresql(production_instance, throwaway_database, pg_server):
    import psycopg2
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._core.utils import make_new_run_id

    instance = production_instance
    run_id = make_new_run_id()
    instance.add_run(DagsterRun(job_name="deploy_check", run_id=run_id))
    instance.report_engine_event("deployment check", instance.get_run_by_id(run_id))
    instance.report_run_canceled(instance.get_run_by_id(run_id))  # an event that updates the run

    stored = instance.get_run_by_id(run_id)
    assert stored is not None
    assert (stored.job_name, stored.status) == ("deploy_check", DagsterRunStatus.CANCELED)
    assert any(e.message == "deployment check" for e in instance.all_logs(run_id))

    # ...and it really is in the throwaway PostgreSQL database.
    conn = psycopg2.connect(dbname=throwaway_database, **pg_server)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pipeline_name, status FROM runs WHERE run_id = %s", (run_id,))
            assert cur.fetchall() == [("deploy_check", "CANCELED")]
            cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,))
            assert cur.fetchone()[0] >= 2
    finally:
        conn.close()

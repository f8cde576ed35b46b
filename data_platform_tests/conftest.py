"""Real components for the tests: an S3 endpoint over HTTP (a moto server on a free
loopback port, spoken to exactly as MinIO or AWS would be), a PostgreSQL database
created for the run and dropped after, SQLite beside it, and Dagster instances."""

import os
import uuid
from pathlib import Path

import psycopg2
import pytest
import requests

from data_platform.catalog import Catalog
from data_platform.storage import LocalObjectStore, S3ObjectStore

@pytest.fixture(scope="session", autouse=True)
def platform_home(tmp_path_factory):
    """Keep the tests' platform state (the generated pseudonym key, contracts) out of
    the working tree, and give every process the same test key."""
    home = tmp_path_factory.mktemp("platform_home")
    saved = {k: os.environ.get(k) for k in ("DATA_PLATFORM_HOME", "DATA_PLATFORM_PSEUDONYM_KEY")}
    os.environ["DATA_PLATFORM_HOME"] = str(home)
    os.environ["DATA_PLATFORM_PSEUDONYM_KEY"] = "test-pseudonym-key-not-for-production"
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


PG_ADMIN_DSN = os.environ.get("DATA_PLATFORM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BUCKET = "test-bucket"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; boto3 finds it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_store(s3_endpoint) -> S3ObjectStore:
    requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    store = S3ObjectStore(BUCKET, "root")
    store.ensure_bucket()
    return store


@pytest.fixture
def local_store(tmp_path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture(params=["local", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


def _admin():
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_database():
    """A PostgreSQL database for this test session, dropped at the end."""
    name = f"dp_test_{uuid.uuid4().hex[:12]}"
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    yield f"{base}/{name}", name
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid()", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


@pytest.fixture
def pg_catalog_url(pg_database) -> str:
    url, _ = pg_database
    catalog_url = url.replace("postgresql://", "postgresql+psycopg2://")
    catalog = Catalog(catalog_url)
    from data_platform.catalog import metadata

    with catalog.engine.begin() as conn:
        tables = ", ".join(t.name for t in metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    return catalog_url


@pytest.fixture
def postgresql_catalog(pg_catalog_url) -> Catalog:
    return Catalog(pg_catalog_url)


@pytest.fixture
def sqlite_catalog(tmp_path) -> Catalog:
    return Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request) -> Catalog:
    return request.getfixturevalue(f"{request.param}_catalog")


@pytest.fixture
def pg_dagster_instance(pg_database, tmp_path):
    """A Dagster instance whose run, event and schedule storage is PostgreSQL."""
    import dagster as dg

    _, name = pg_database
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(f"""
telemetry:
  enabled: false
storage:
  postgres:
    postgres_db:
      username: postgres
      password: ""
      hostname: 127.0.0.1
      db_name: {name}
      port: 5432
      scheme: postgresql+psycopg2
""")
    instance = dg.DagsterInstance.from_config(str(home))
    yield instance
    instance.dispose()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path

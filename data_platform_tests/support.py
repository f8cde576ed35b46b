"""Helpers shared by the tests: land bytes, run what the sensor and a run would."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from data_platform.catalog import Catalog
from data_platform.ingestion import ingest_pending
from data_platform.intake import scan_landing
from data_platform.storage import ObjectStore


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


def ingest_everything(store: ObjectStore, catalog: Catalog, claimer: str = "test-run"):
    """One sensor tick, then one run per pending dataset (as Dagster would launch)."""
    scan = scan_landing(store, catalog)
    outcomes, failures = [], []
    for tenant, dataset in scan.pending:
        result = ingest_pending(store, catalog, tenant, dataset, claimer=claimer)
        outcomes += result.outcomes
        failures += result.failures
    return scan, outcomes, failures


def read_data(store: ObjectStore, key: str) -> pa.Table:
    return pq.read_table(store.fs_path(key), filesystem=store.filesystem)

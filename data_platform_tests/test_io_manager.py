"""The object-store IO manager writes asset outputs where the layout says, local or S3."""

import dagster as dg
import pandas as pd
import pyarrow as pa

from data_platform.defs.io_manager import ObjectStoreIOManager
from data_platform.defs.resources import ObjectStoreResource


def test_tables_and_json_round_trip_with_exact_keys(store):
    url = store.url if store.url.startswith("s3://") else str(store.root)

    @dg.asset
    def table_asset() -> pa.Table:
        return pa.table({"a": [1, 2, 3]})

    @dg.asset
    def frame_asset() -> pd.DataFrame:
        return pd.DataFrame({"b": ["x", "y"]})

    @dg.asset
    def manifest() -> dict:
        return {"files": ["a", "b"], "rows": 5}

    parts = dg.StaticPartitionsDefinition(["acme/tickets"])

    @dg.asset(partitions_def=parts)
    def per_dataset() -> dict:
        return {"ok": True}

    @dg.asset
    def consumer(table_asset: pa.Table, manifest: dict) -> dict:
        return {"sum": sum(table_asset.column("a").to_pylist()), "files": manifest["files"]}

    object_store = ObjectStoreResource(storage_url=url)
    resources = {"io_manager": ObjectStoreIOManager(object_store=object_store)}
    assert dg.materialize([table_asset, frame_asset, manifest, consumer], resources=resources).success
    assert dg.materialize([per_dataset], partition_key="acme/tickets", resources=resources).success

    keys = sorted(o.key for o in store.list("_platform/assets/"))
    assert keys == [
        "_platform/assets/consumer/latest.json",
        "_platform/assets/frame_asset/latest.parquet",
        "_platform/assets/manifest/latest.json",
        "_platform/assets/per_dataset/acme/tickets.json",
        "_platform/assets/table_asset/latest.parquet",
    ]
    import json
    assert json.loads(store.get_bytes("_platform/assets/consumer/latest.json")) == {"sum": 6, "files": ["a", "b"]}

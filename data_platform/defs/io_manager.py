"""IO manager that keeps asset outputs in the platform's object store.

Tables (pyarrow or pandas) become Parquet, everything else JSON, under
`_platform/assets/{asset key}/{partition key or "latest"}.{parquet|json}`: on a local
directory or in the bucket, through the same `ObjectStore` as the data itself.
(`dg.UPathIOManager` would need fsspec's s3fs, which we avoid: see the README.)
"""

import io
import json

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_platform import layout
from data_platform.defs.resources import ObjectStoreResource


class ObjectStoreIOManager(dg.ConfigurableIOManager):
    object_store: dg.ResourceDependency[ObjectStoreResource]

    @staticmethod
    def base_key(context: dg.OutputContext | dg.InputContext) -> str:
        asset_path = "/".join(context.asset_key.path)
        partition = context.asset_partition_key if context.has_asset_partitions else "latest"
        return f"{layout.PLATFORM}/assets/{asset_path}/{partition}"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        store = self.object_store.get_store()
        base = self.base_key(context)
        if isinstance(obj, pd.DataFrame):
            obj = pa.Table.from_pandas(obj, preserve_index=False)
        if isinstance(obj, pa.Table):
            sink = io.BytesIO()
            pq.write_table(obj, sink, compression="zstd")
            key = f"{base}.parquet"
            store.put_bytes(key, sink.getvalue())
            store.delete(f"{base}.json")
            context.add_output_metadata({"object_key": key, "dagster/row_count": obj.num_rows})
        else:
            key = f"{base}.json"
            store.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
            store.delete(f"{base}.parquet")
            context.add_output_metadata({"object_key": key})

    def load_input(self, context: dg.InputContext):
        store = self.object_store.get_store()
        base = self.base_key(context)  # an InputContext names the upstream asset and partition
        if store.exists(f"{base}.parquet"):
            table = pq.read_table(io.BytesIO(store.get_bytes(f"{base}.parquet")))
            return table.to_pandas() if context.dagster_type.typing_type is pd.DataFrame else table
        return json.loads(store.get_bytes(f"{base}.json"))

"""Fresh data: one partition per tenant/dataset; a run ingests that dataset's pending uploads."""

from collections import Counter

import dagster as dg
import pyarrow as pa

from data_platform import layout
from data_platform.catalog import FRESH, INGESTED
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.ingestion import BatchResult, ingest_pending

# "tenant/dataset": one partition per dataset rather than per file keeps Dagster's
# partition count small (SQLite instances fail near 36k partitions).
tenant_datasets = dg.DynamicPartitionsDefinition(name="tenant_dataset")


@dg.asset(
    partitions_def=tenant_datasets,
    kinds={"parquet", "s3", "python"},
    group_name="ingestion",
    owners=["team:data-platform"],
    description="Validated uploads normalised to Parquet under data/{tenant}/{dataset}/, ready for training. "
    "Each run ingests every pending upload of its tenant/dataset.",
)
def fresh_data(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, catalog: CatalogResource
) -> dg.MaterializeResult:
    tenant, dataset = layout.split_partition_key(context.partition_key)
    store, cat = object_store.get_store(), catalog.get_catalog()
    result = ingest_pending(store, cat, tenant, dataset, claimer=context.run_id)
    for outcome in result.outcomes:
        context.log.info(f"{outcome.landing_key}: {outcome.state}"
                         + (f" ({outcome.reason})" if outcome.reason else ""))
    metadata = _metadata(result, cat.list_uploads(tenant=tenant, dataset=dataset))
    if result.failures:
        raise dg.Failure(
            description=f"{len(result.failures)} upload(s) failed and will be retried by the next run",
            metadata={**metadata, "failures": dg.MetadataValue.json(
                [{"upload_id": i, "key": k, "error": e} for i, k, e in result.failures])},
        )
    return dg.MaterializeResult(metadata=metadata)


def _metadata(result: BatchResult, partition_uploads) -> dict:
    by_state = Counter(o.state for o in result.outcomes)
    fresh = [o for o in result.outcomes if o.state == FRESH]
    schema = next((o.schema for o in reversed(fresh) if o.schema is not None), None)
    in_partition = [u for u in partition_uploads if u.state in INGESTED]
    metadata = {
        "uploads_processed": len(result.outcomes),
        "uploads_by_state": dg.MetadataValue.json(dict(by_state)),
        "rows_ingested": sum(o.rows for o in fresh),
        "quarantined_rows": sum(o.quarantined_rows for o in result.outcomes),
        "bytes_uploaded": sum(o.size for o in result.outcomes),
        "dagster/row_count": sum(u.rows or 0 for u in in_partition),
        "files_in_partition": len(in_partition),
        "uploads": dg.MetadataValue.md(_uploads_table(result)),
    }
    if schema is not None:
        metadata["dagster/column_schema"] = _table_schema(schema)
    return metadata


def _table_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type)) for f in schema])


def _uploads_table(result: BatchResult) -> str:
    lines = ["| upload | key | state | reason | rows | quarantined rows |", "|---|---|---|---|---|---|"]
    for o in result.outcomes[:200]:
        lines.append(f"| {o.upload_id} | `{o.landing_key}` | {o.state} | {o.reason or ''} | {o.rows} "
                     f"| {o.quarantined_rows} |")
    if len(result.outcomes) > 200:
        lines.append(f"| … | {len(result.outcomes) - 200} more | | | | |")
    return "\n".join(lines)


@dg.asset(
    kinds={"parquet", "s3"},
    group_name="ingestion",
    owners=["team:data-platform"],
    deps=[fresh_data],
    io_manager_key="object_store_io_manager",
    automation_condition=dg.AutomationCondition.eager(),
    description="Uploads, bytes and rows per tenant, dataset and state, from the catalog; "
    "kept as Parquet in the object store and refreshed after ingestion.",
)
def upload_statistics(context: dg.AssetExecutionContext, catalog: CatalogResource) -> pa.Table:
    stats = catalog.get_catalog().stats()
    table = pa.Table.from_pylist(stats, schema=pa.schema([
        ("tenant", pa.string()), ("dataset", pa.string()), ("state", pa.string()), ("uploads", pa.int64()),
        ("bytes", pa.int64()), ("rows", pa.int64()), ("quarantined_rows", pa.int64()),
    ]))
    totals = Counter()
    for row in stats:
        totals[row["state"]] += row["uploads"]
    context.add_output_metadata({f"uploads_{state}": n for state, n in sorted(totals.items())})
    return table

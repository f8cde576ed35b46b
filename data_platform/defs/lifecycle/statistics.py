"""Platform statistics: recomputed after ingestion, training sets and cleanup (eager
automation) and on an hourly schedule, so growth shows even when nothing else runs."""

from collections import Counter

import dagster as dg
import pyarrow as pa

from data_platform.defs.ingestion.assets import fresh_data
from data_platform.defs.lifecycle.training import training_set
from data_platform.defs.resources import CatalogResource
from data_platform.reporting import dataset_findings, growth, quality_distribution

STATS_SCHEMA = pa.schema([
    ("tenant", pa.string()), ("dataset", pa.string()), ("state", pa.string()), ("uploads", pa.int64()),
    ("bytes", pa.int64()), ("rows", pa.int64()), ("quarantined_rows", pa.int64()),
])


@dg.asset(
    kinds={"parquet", "s3"},
    group_name="lifecycle",
    owners=["team:data-platform"],
    deps=[fresh_data, training_set],
    io_manager_key="object_store_io_manager",
    automation_condition=dg.AutomationCondition.eager(),
    description="Uploads, bytes and rows per tenant, dataset and state, quality distribution and growth, "
    "from the catalog (the figures of `data-platform stats --json`); kept as Parquet in the object store.",
)
def upload_statistics(context: dg.AssetExecutionContext, catalog: CatalogResource) -> pa.Table:
    cat = catalog.get_catalog()
    stats = cat.stats()
    table = pa.Table.from_pylist(stats, schema=STATS_SCHEMA)
    by_state: dict[str, Counter] = {}
    for row in stats:
        by_state.setdefault(row["state"], Counter()).update({k: row[k] for k in ("uploads", "bytes", "rows")})
    findings = dataset_findings(cat)
    distribution = quality_distribution(cat)
    days = growth(cat)
    metadata: dict = {
        # Numbers on every materialisation: the UI plots each one over time.
        **{f"{measure}_{state}": counts[measure] for state, counts in sorted(by_state.items())
           for measure in ("uploads", "bytes", "rows")},
        "quality_by_dataset": dg.MetadataValue.table(
            records=[dg.TableRecord({"dataset": name, "uploads": f["uploads"], "rows": f["rows"],
                                     "quality": f["quality"]["score"],
                                     "duplicate_rows_removed": sum(f["duplicate_rows_removed"].values()),
                                     "near_duplicates": sum(f["near_duplicates"].values()),
                                     "rows_rejected": sum(f["rows_rejected_by_check"].values()),
                                     "pii_columns": len(f["pii_columns"])})
                     for name, f in findings.items()],
            schema=dg.TableSchema(columns=[
                dg.TableColumn("dataset", "string"), dg.TableColumn("uploads", "int"), dg.TableColumn("rows", "int"),
                dg.TableColumn("quality", "float"), dg.TableColumn("duplicate_rows_removed", "int"),
                dg.TableColumn("near_duplicates", "int"), dg.TableColumn("rows_rejected", "int"),
                dg.TableColumn("pii_columns", "int")])),
        "quality_distribution": dg.MetadataValue.table(
            records=[dg.TableRecord({"band": f"{b['from']:.1f}-{b['to']:.1f}", "uploads": b["uploads"],
                                     "rows": b["rows"]}) for b in distribution["bands"]],
            schema=dg.TableSchema(columns=[dg.TableColumn("band", "string"), dg.TableColumn("uploads", "int"),
                                           dg.TableColumn("rows", "int")])),
        "growth": dg.MetadataValue.table(
            records=[dg.TableRecord(d) for d in days[-90:]],
            schema=dg.TableSchema(columns=[dg.TableColumn("day", "string")] + [
                dg.TableColumn(k, "int") for k in ("uploads", "bytes", "rows", "total_uploads", "total_bytes",
                                                   "total_rows")])),
        "findings_by_dataset": dg.MetadataValue.json(findings),
    }
    if days:
        metadata["total_rows_ingested"] = days[-1]["total_rows"]
        metadata["total_bytes_ingested"] = days[-1]["total_bytes"]
    context.add_output_metadata(metadata)
    return table


statistics_job = dg.define_asset_job("statistics", selection=[upload_statistics],
                                     description="Recompute the platform statistics.")

statistics_schedule = dg.ScheduleDefinition(
    name="statistics_schedule", target=statistics_job, cron_schedule="0 * * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly statistics, so growth is recorded even when nothing is ingested.",
)

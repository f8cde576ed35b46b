"""`ml_exports`: one partition per ISO week; a run exports the week for every tenant
that has ingested data (data_platform.exports), each in its own format."""

from datetime import date

import dagster as dg

from data_platform import exports
from data_platform.contracts import ContractError, ContractRegistry
from data_platform.defs.resources import CatalogResource, ObjectStoreResource

# Partition keys are the Mondays (UTC); 2025-12-29 opens ISO week 2026-W01.
weekly_partitions = dg.WeeklyPartitionsDefinition(start_date="2025-12-29", day_offset=1, timezone="UTC")


def week_of_partition(partition_key: str) -> str:
    """`2026-11-16` (a Monday) -> `2026-W47`."""
    return exports.Week.containing(date.fromisoformat(partition_key)).key


TENANTS_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("tenant", "string"), dg.TableColumn("status", "string"), dg.TableColumn("format", "string"),
    dg.TableColumn("rows", "int"), dg.TableColumn("bytes", "int"), dg.TableColumn("parts", "int"),
    dg.TableColumn("files", "int"), dg.TableColumn("manifest_key", "string"),
])


@dg.asset(
    partitions_def=weekly_partitions,
    kinds={"parquet", "s3", "duckdb"},
    group_name="exports",
    owners=["team:data-platform"],
    deps=[dg.AssetDep("fresh_data", partition_mapping=dg.AllPartitionMapping()), "used_data"],
    description="Each tenant's fresh and used data ingested in one ISO week (UTC), as Parquet, CSV or JSON Lines "
    "per the tenant's _tenant.yaml, under exports/{tenant}/{yyyy-Www}/ with manifest.json; re-running a week "
    "replaces its export atomically.",
)
def ml_exports(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
               catalog: CatalogResource) -> dg.MaterializeResult:
    week = exports.Week.parse(week_of_partition(context.partition_key))
    store, cat = object_store.get_store(), catalog.get_catalog()
    contracts = ContractRegistry.from_env(store)
    rows, failed = [], []
    for tenant in exports.tenants_with_data(cat):
        row = {"tenant": tenant, "status": "", "format": "", "rows": 0, "bytes": 0, "parts": 0, "files": 0,
               "manifest_key": ""}
        try:
            settings = contracts.tenant_settings(tenant)
            row["format"] = settings.export_format
            if not settings.export_enabled:
                row["status"] = "disabled"
            else:
                result = exports.export_week(store, cat, tenant, week.key, fmt=settings.export_format,
                                             run_id=context.run_id, settings_source=settings.source)
                s = result.summary()
                row.update(status="empty" if s["empty"] else "exported", rows=s["rows"], bytes=s["bytes"],
                           parts=s["parts"], files=s["files"], manifest_key=s["manifest_key"])
                context.log.info(f"{tenant} {week.key}: {s}")
        except (exports.ExportError, ContractError) as err:
            # One tenant's bad settings or data must not stop the others' exports.
            row["status"] = "failed"
            failed.append(f"{tenant}: {str(err).splitlines()[0]}")
            context.log.error(f"{tenant} {week.key}: {err}")
        rows.append(row)
    metadata = {
        "week": week.key,
        "window": f"{week.start.isoformat()} .. {week.end.isoformat()}",
        "tenants": dg.MetadataValue.table(records=[dg.TableRecord(r) for r in rows], schema=TENANTS_TABLE),
        "tenants_exported": sum(r["status"] in ("exported", "empty") for r in rows),
        "tenants_empty": sum(r["status"] == "empty" for r in rows),
        "dagster/row_count": sum(r["rows"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "parts": sum(r["parts"] for r in rows),
    }
    if failed:
        raise dg.Failure(description=f"{len(failed)} tenant(s) not exported for {week.key}: " + "; ".join(failed),
                         metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


ml_exports_job = dg.define_asset_job("ml_exports_job", selection=[ml_exports], partitions_def=weekly_partitions,
                                     description="Export one ISO week for every tenant.")

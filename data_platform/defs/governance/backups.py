"""Catalog backups on a schedule: one `catalog_backup` materialisation backs up every
catalog table and manifest (data_platform.backups) and prunes old backups by policy."""

import dagster as dg

from data_platform.backups import BackupError, create_backup, prune_backups
from data_platform.defs.resources import CatalogResource, ObjectStoreResource


@dg.asset(
    group_name="governance", kinds={"parquet", "s3", "python"}, owners=["team:data-platform"],
    description="A consistent backup of the catalog (every table, one snapshot) and of every training-set, "
    "feature and export manifest under _platform/backups/{backup_id}/; old backups pruned "
    "(DATA_PLATFORM_BACKUP_KEEP days, default 14).",
)
def catalog_backup(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                   catalog: CatalogResource) -> dg.MaterializeResult:
    store = object_store.get_store()
    try:
        doc = create_backup(store, catalog.get_catalog())
        pruned = prune_backups(store)
    except BackupError as err:
        raise dg.Failure(str(err)) from None
    context.log.info(f"backup {doc['backup_id']}: {doc['rows']} rows, {doc['bytes']} bytes; pruned {pruned['pruned']}")
    return dg.MaterializeResult(metadata={
        "backup_id": doc["backup_id"],
        "url": dg.MetadataValue.url(f"{store.url}/{doc['prefix']}") if store.url.startswith("s3://")
        else dg.MetadataValue.path(f"{store.url}/{doc['prefix']}"),
        "schema_revision": doc["schema_revision"],
        "dagster/row_count": dg.MetadataValue.int(doc["rows"]),
        "bytes": dg.MetadataValue.int(doc["bytes"]),
        "rows_per_table": dg.MetadataValue.json({t["name"]: t["rows"] for t in doc["tables"]}),
        "manifests": dg.MetadataValue.int(len(doc["manifests"])),
        "pruned": dg.MetadataValue.json(pruned["pruned"] + pruned["pruned_incomplete"]),
        "kept": dg.MetadataValue.int(len(pruned["kept"])),
    })


catalog_backup_job = dg.define_asset_job("catalog_backup_job", selection=dg.AssetSelection.assets(catalog_backup),
                                         description="Back up the catalog and manifests, then prune old backups.")

catalog_backup_schedule = dg.ScheduleDefinition(
    name="catalog_backup_schedule", target=catalog_backup_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 02:00 UTC: back up the catalog and every manifest; prune by DATA_PLATFORM_BACKUP_KEEP.",
)

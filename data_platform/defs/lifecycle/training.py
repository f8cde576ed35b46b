"""Training sets and used data: materialise `training_set` (from the UI's launchpad or
a job) to snapshot a tenant's fresh data; `used_data` then shows what training consumed."""

import dagster as dg

from data_platform import training_sets as tsets
from data_platform.catalog import USED, NoFreshData
from data_platform.defs.resources import CatalogResource, ObjectStoreResource


class TrainingSetConfig(dg.Config):
    """The same filters as `data-platform training-set create`."""

    tenant: str
    name: str = tsets.DEFAULT_NAME
    datasets: list[str] = []
    min_quality: float | None = None
    max_rows: int | None = None
    consumer: str | None = None
    sample_rows: int | None = None  # with no fresh data: sample used data instead of failing


SOURCES_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("upload_id", "int"), dg.TableColumn("dataset", "string"), dg.TableColumn("rows", "int"),
    dg.TableColumn("quality", "float"), dg.TableColumn("contract_version", "string"),
    dg.TableColumn("sha256", "string"), dg.TableColumn("landing_key", "string"),
])


@dg.asset(
    kinds={"parquet", "s3"},
    group_name="lifecycle",
    owners=["team:data-platform"],
    deps=["fresh_data"],
    description="A versioned snapshot of a tenant's fresh data under training_sets/{tenant}/{name}/v{version}/ "
    "with manifest.json; its files become `used` (each fresh file goes to exactly one training set).",
)
def training_set(context: dg.AssetExecutionContext, config: TrainingSetConfig, object_store: ObjectStoreResource,
                 catalog: CatalogResource) -> dg.MaterializeResult:
    try:
        request = tsets.TrainingSetRequest(
            tenant=config.tenant, name=config.name, datasets=tuple(config.datasets), min_quality=config.min_quality,
            max_rows=config.max_rows, consumer=config.consumer, sample_rows=config.sample_rows)
        result = tsets.create_training_set(object_store.get_store(), catalog.get_catalog(), request,
                                           actor=f"dagster:{context.run_id}", run_id=context.run_id)
    except (NoFreshData, tsets.TrainingSetError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    for resumed in result.resumed:
        context.log.warning(f"completed {resumed.name}/v{resumed.version}, whose builder had crashed")
    ts, manifest = result.training_set, result.manifest
    store = object_store.get_store()
    return dg.MaterializeResult(metadata={
        "tenant": ts.tenant,
        "training_set": ts.name,
        "version": ts.version,
        "sample": ts.sample,
        "path": dg.MetadataValue.path(f"{store.url}/{ts.prefix}"),
        "manifest_sha256": ts.manifest_sha256,
        "dagster/row_count": manifest["rows"],
        "files": len(manifest["files"]),
        "bytes": manifest["bytes"],
        "parts": len(manifest["parts"]),
        "filters": dg.MetadataValue.json(ts.filters),
        "contract_versions": dg.MetadataValue.json(manifest["contract_versions"]),
        "sources": dg.MetadataValue.table(
            records=[dg.TableRecord({"upload_id": f["upload_id"], "dataset": f["dataset"], "rows": f["rows"],
                                     "quality": f["quality"] if f["quality"] is not None else -1.0,
                                     "contract_version": str(f["contract_version"]), "sha256": f["sha256"] or "",
                                     "landing_key": f["landing_key"]}) for f in manifest["files"][:500]],
            schema=SOURCES_TABLE),
    })


USED_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("upload_id", "int"), dg.TableColumn("tenant", "string"), dg.TableColumn("dataset", "string"),
    dg.TableColumn("rows", "int"), dg.TableColumn("uses", "int"), dg.TableColumn("training_sets", "string"),
    dg.TableColumn("object_key", "string"),
])


@dg.asset(
    kinds={"parquet", "s3"},
    group_name="lifecycle",
    owners=["team:data-platform"],
    deps=[training_set],
    automation_condition=dg.AutomationCondition.eager(),
    description="Data consumed by training sets (state `used`): still under data/, read by retention, "
    "with the usage lineage of every file.",
)
def used_data(catalog: CatalogResource) -> dg.MaterializeResult:
    cat = catalog.get_catalog()
    used = cat.list_uploads(state=USED)
    lineage = cat.usage_lineage([u.id for u in used]) if used else {}
    records = [dg.TableRecord({
        "upload_id": u.id, "tenant": u.tenant, "dataset": u.dataset, "rows": u.rows or 0, "uses": u.uses,
        "training_sets": ", ".join(sorted({f"{e['training_set']}/v{e['version']}" for e in lineage.get(u.id, [])})),
        "object_key": u.object_key or ""}) for u in used[-200:]]
    return dg.MaterializeResult(metadata={
        "files": len(used),
        "dagster/row_count": sum(u.rows or 0 for u in used),
        "bytes_uploaded": sum(u.size for u in used),
        "uses": sum(u.uses for u in used),
        "files_table": dg.MetadataValue.table(records=records, schema=USED_TABLE),
    })

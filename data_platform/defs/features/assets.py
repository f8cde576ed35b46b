"""Feature tables: one partition per tenant/name; a run materialises the next version.

`feature_table_sensor` keeps the partitions in step with the registered definitions
(`data-platform features register`) and asks for a first version of each new revision
once its source dataset holds ingested data. Later versions are explicit: materialise the
partition from the UI (or a schedule of your own) when the source has moved on.
"""

import dagster as dg

from data_platform import features as fs
from data_platform import layout
from data_platform.defs.resources import CatalogResource, ObjectStoreResource

# "tenant/name", as fresh_data's "tenant/dataset": '/' cannot occur in either name.
feature_table_partitions = dg.DynamicPartitionsDefinition(name="feature_table")

SOURCES_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("upload_id", "int"), dg.TableColumn("dataset", "string"), dg.TableColumn("rows", "int"),
    dg.TableColumn("sha256", "string"), dg.TableColumn("object_key", "string"),
    dg.TableColumn("landing_key", "string"),
])


@dg.asset(
    partitions_def=feature_table_partitions,
    kinds={"parquet", "s3"},
    group_name="features",
    owners=["team:data-platform"],
    deps=["fresh_data"],
    description="Versioned feature tables per tenant under features/{tenant}/{name}/v{version}/ (Parquet parts "
    "and manifest.json). Each materialisation adds an immutable version built from the source dataset's "
    "ingested files; read them as of a point in time with data_platform.features.get_historical_features.",
)
def feature_tables(context: dg.AssetExecutionContext, object_store: ObjectStoreResource,
                   catalog: CatalogResource) -> dg.MaterializeResult:
    tenant, name = _split(context.partition_key)
    store = object_store.get_store()
    try:
        built = fs.materialise_feature_table(store, catalog.get_catalog(), tenant, name,
                                             actor=f"dagster:{context.run_id}", run_id=context.run_id)
    except (fs.FeatureError, fs.FeatureNotFound) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    version, manifest = built.version, built.manifest
    return dg.MaterializeResult(metadata={
        "tenant": tenant,
        "feature_table": name,
        "version": version.version,
        "revision": version.revision,
        "dagster/row_count": manifest["rows"],
        "bytes": manifest["bytes"],
        "parts": len(manifest["parts"]),
        "path": dg.MetadataValue.path(f"{store.url}/{version.prefix}"),
        "manifest_sha256": version.manifest_sha256,
        "code_version": version.code_version,
        "entities": ", ".join(manifest["entities"]),
        "event_timestamp_range": f"{manifest['event_timestamp_min']} .. {manifest['event_timestamp_max']}",
        "rows_dropped_null_key_or_timestamp": manifest["rows_dropped_null_key_or_timestamp"],
        "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c["name"], c["type"])
                                                         for c in manifest["schema"]]),
        "sources": dg.MetadataValue.table(
            records=[dg.TableRecord({"upload_id": s["upload_id"], "dataset": s["dataset"], "rows": s["rows"],
                                     "sha256": s["sha256"] or "", "object_key": s["object_key"] or "",
                                     "landing_key": s["landing_key"]}) for s in manifest["sources"][:500]],
            schema=SOURCES_TABLE),
    })


def _split(partition: str) -> tuple[str, str]:
    tenant, _, name = partition.partition("/")
    return layout.check_name("tenant", tenant), layout.check_name("feature table", name)


@dg.sensor(
    target=[feature_tables],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Adds a feature_tables partition per registered tenant/name and builds the first version of "
    "each new definition revision once its source dataset has ingested data.",
)
def feature_table_sensor(context: dg.SensorEvaluationContext, catalog: CatalogResource):
    cat = catalog.get_catalog()
    for tenant, name, version in fs.abandon_stale_builds(cat):
        context.log.warning(f"{tenant}/{name} v{version}: its build never finished; marked failed (rebuild from the UI)")
    known = set(context.instance.get_dynamic_partitions(feature_table_partitions.name))
    new_partitions, runs = [], []
    for record, built_revision in cat.feature_table_heads():
        key = f"{record.tenant}/{record.name}"
        if key not in known:
            new_partitions.append(key)
        if built_revision is not None and built_revision >= record.revision:
            continue
        dataset = record.definition["source"]["dataset"]
        if any(u.state in fs.SOURCE_STATES for u in cat.list_uploads(tenant=record.tenant, dataset=dataset)):
            # One run per revision: a failed build waits for a fix (a new revision) or a run from the UI.
            runs.append(dg.RunRequest(run_key=f"{key}:r{record.revision}", partition_key=key))
    if not new_partitions and not runs:
        return dg.SkipReason("every registered feature table has a partition and a version of its latest revision")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[feature_table_partitions.build_add_request(new_partitions)]
        if new_partitions else [],
    )

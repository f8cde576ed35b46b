"""The upload sensor: reconciles landing with the ledger and asks for one run per
tenant/dataset that has pending uploads."""

import time

import dagster as dg

from data_platform import layout
from data_platform.defs.ingestion.assets import fresh_data, tenant_datasets
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.intake import scan_landing

RETRY_BACKOFF_MAX_MINUTES = 60

ingest_job = dg.define_asset_job(
    "ingest_uploads", selection=[fresh_data], partitions_def=tenant_datasets,
    description="Ingest the pending uploads of one tenant/dataset.",
)


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Notices every new object under landing/ exactly once and launches ingestion.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, object_store: ObjectStoreResource, catalog: CatalogResource
) -> dg.SensorResult | dg.SkipReason:
    scan = scan_landing(object_store.get_store(), catalog.get_catalog())
    for error in scan.errors:
        context.log.warning(f"will retry: {error}")
    if scan.invalid_keys or scan.leftovers_removed:
        context.log.info(f"quarantined {scan.invalid_keys} invalid key(s), "
                         f"removed {scan.leftovers_removed} already-ingested leftover(s)")
    if not scan.pending:
        return dg.SkipReason(f"no pending uploads ({scan.listed} object(s) in landing)")
    partitions = sorted(layout.partition_key(t, d) for t, d in scan.pending)
    existing = set(context.instance.get_dynamic_partitions(tenant_datasets.name))
    new_partitions = [p for p in partitions if p not in existing]
    run_requests = []
    for (tenant, dataset), (newest_id, attempts) in sorted(scan.pending.items()):
        partition = layout.partition_key(tenant, dataset)
        # Same pending work -> same key (no duplicate run); new uploads, a failed upload
        # attempt, or a run that failed before it claimed anything (the S3 endpoint or the
        # contract unreadable for a moment) change it, so a retry is asked for exactly
        # when there is reason to.
        failed_runs = _failed_runs(context.instance, partition)
        run_requests.append(dg.RunRequest(
            partition_key=partition, run_key=f"{partition}:{newest_id}:{attempts}:{failed_runs}",
            tags={"data_platform/tenant": tenant, "data_platform/dataset": dataset},
        ))
    context.log.info(f"{scan.registered} new upload(s); {len(run_requests)} dataset(s) to ingest")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[tenant_datasets.build_add_request(new_partitions)] if new_partitions else [],
    )


def _failed_runs(instance: dg.DagsterInstance, partition: str, now: float | None = None) -> int:
    """Failed ingestion runs of a partition (only partitions with pending uploads ask),
    as the run key counts them: the newest failure counts only once it has waited its
    backoff (1, 2, 4 ... 60 minutes), so a cause that lasts (a broken contract) is
    retried ever more slowly instead of at every tick, and by itself once fixed."""
    filters = dg.RunsFilter(job_name=ingest_job.name, statuses=[dg.DagsterRunStatus.FAILURE],
                            tags={"dagster/partition": partition})
    failed = instance.get_runs_count(filters)
    if not failed:
        return 0
    (newest,) = instance.get_run_records(filters, limit=1)
    backoff = 60 * min(2 ** (failed - 1), RETRY_BACKOFF_MAX_MINUTES)
    ended = newest.end_time or newest.update_timestamp.timestamp()
    return failed if (now or time.time()) - ended >= backoff else failed - 1

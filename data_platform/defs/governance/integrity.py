"""The integrity check on a schedule: one `integrity` materialisation compares every
catalogued object with the store (data_platform.integrity); three asset checks say
whether anything is missing, changed or orphaned, with the keys."""

import dagster as dg

from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.integrity import CHANGED, MISSING, ORPHANED, IntegrityReport, verify

NO_MISSING_OBJECTS = "no_missing_objects"
NO_CHANGED_OBJECTS = "no_changed_objects"
NO_ORPHANED_OBJECTS = "no_orphaned_objects"
CHECKS = {MISSING: NO_MISSING_OBJECTS, CHANGED: NO_CHANGED_OBJECTS, ORPHANED: NO_ORPHANED_OBJECTS}
_CHECK_DESCRIPTIONS = {
    MISSING: "Every object the catalog or a manifest names is in the store.",
    CHANGED: "Every catalogued object has the size and sha256 recorded for it.",
    ORPHANED: "No object under the platform's prefixes is named by nothing (older than "
              "DATA_PLATFORM_TEMP_OBJECT_HOURS).",
}
KEYS_SHOWN = 50


class IntegrityConfig(dg.Config):
    tenant: str | None = None  # only this tenant's objects (backups need a full pass)
    record: bool = False  # hash data objects with no recorded checksum and record it (trust on first verify)


@dg.asset(
    group_name="governance", kinds={"s3", "python"}, owners=["team:data-platform"],
    description="Every catalogued object (data, archive, quarantine originals, index runs, training-set, feature "
    "and export parts and manifests, backups) compared with the store by size and sha256; orphans found.",
    check_specs=[dg.AssetCheckSpec(name, asset="integrity", blocking=False, description=_CHECK_DESCRIPTIONS[kind])
                 for kind, name in CHECKS.items()],
)
def integrity(context: dg.AssetExecutionContext, config: IntegrityConfig, object_store: ObjectStoreResource,
              catalog: CatalogResource) -> dg.MaterializeResult:
    report = verify(object_store.get_store(), catalog.get_catalog(), tenant=config.tenant, record=config.record)
    for error in report.errors[:20]:
        context.log.warning(f"could not be read: {error}")
    return dg.MaterializeResult(
        metadata={
            "objects_checked": dg.MetadataValue.int(sum(report.checked.values())),
            "by_what": dg.MetadataValue.json(dict(report.checked)),
            "hashed_bytes": dg.MetadataValue.int(report.hashed_bytes),
            "existence_only": dg.MetadataValue.int(report.existence_only),
            "recorded": dg.MetadataValue.int(report.recorded),
            "unreadable": dg.MetadataValue.int(len(report.errors)),
            **{kind: dg.MetadataValue.int(n) for kind, n in report.counts().items()},
        },
        check_results=[_check(report, kind) for kind in CHECKS],
    )


def _check(report: IntegrityReport, kind: str) -> dg.AssetCheckResult:
    found = report.of_kind(kind)
    return dg.AssetCheckResult(
        check_name=CHECKS[kind], passed=not found, severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "count": dg.MetadataValue.int(len(found)),
            "keys": dg.MetadataValue.json([f.key for f in found[:KEYS_SHOWN]]),
            "details": dg.MetadataValue.json([{"what": f.what, "key": f.key, "expected": f.expected,
                                               "actual": f.actual, "detail": f.detail} for f in found[:KEYS_SHOWN]]),
        },
    )


integrity_job = dg.define_asset_job("integrity_job", selection=dg.AssetSelection.assets(integrity),
                                    description="Compare every catalogued object with the store.")

integrity_schedule = dg.ScheduleDefinition(
    name="integrity_schedule", target=integrity_job, cron_schedule="0 5 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 05:00 UTC (after backup and cleanup): missing, changed and orphaned objects.",
)

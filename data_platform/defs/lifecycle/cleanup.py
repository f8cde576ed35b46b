"""Retention on a schedule: one `cleanup` pass (data_platform.retention) materialises
archived, deprecated and deleted data, with what moved and why as metadata."""

from collections import Counter

import dagster as dg

from data_platform.catalog import ARCHIVED, DELETED, DEPRECATED, Catalog, utcnow
from data_platform.contracts import ContractRegistry
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.retention import CleanupPlan, CleanupResult, apply_cleanup, plan_cleanup

STATE_ASSETS = {ARCHIVED: "archived_data", DEPRECATED: "deprecated_data", DELETED: "deleted_data"}
# Lineage as the life of a file: fresh and used data -> archived -> deprecated -> deleted.
_UPSTREAM = {ARCHIVED: ["fresh_data", "used_data"], DEPRECATED: ["archived_data"], DELETED: ["deprecated_data"]}
TABLE_ROWS = 200

_DESCRIPTIONS = {
    ARCHIVED: "Data used often enough or old enough per the retention policy, moved to archive/{tenant}/{dataset}/.",
    DEPRECATED: "Archived data marked for deletion; still readable until the grace period ends.",
    DELETED: "Uploads whose bytes are gone; the catalog keeps a tombstone (who, when, why, sha256).",
}


class CleanupConfig(dg.Config):
    dry_run: bool = False  # plan and report only; nothing changes


@dg.multi_asset(
    name="cleanup",
    specs=[
        dg.AssetSpec(asset, group_name="lifecycle", kinds={"parquet", "s3", "python"}, owners=["team:data-platform"],
                     description=_DESCRIPTIONS[state], deps=_UPSTREAM[state])
        for state, asset in STATE_ASSETS.items()
    ],
    description="One retention pass: archive, deprecate and delete per each dataset's policy; expire quarantine "
    "and temporary or orphaned objects.",
)
def cleanup(context: dg.AssetExecutionContext, config: CleanupConfig, object_store: ObjectStoreResource,
            catalog: CatalogResource):
    store, cat = object_store.get_store(), catalog.get_catalog()
    plan = plan_cleanup(cat, store, ContractRegistry.from_env(store), now=utcnow())
    for problem in plan.problems:
        context.log.warning(f"{problem['tenant']}/{problem['dataset']} left alone: {problem['problem']}")
    result = None if config.dry_run else apply_cleanup(plan, cat, store, actor=f"dagster:{context.run_id}")
    context.log.info(f"{'planned' if config.dry_run else 'applied'}: {plan.counts()}")
    stats = cat.stats()
    for state, asset in STATE_ASSETS.items():
        yield dg.MaterializeResult(asset_key=asset,
                                   metadata=_metadata(plan, result, cat, stats, state, config.dry_run))
    if result is not None and result.failed:
        context.log.warning(f"{len(result.failed)} step(s) did not happen; the next pass retries them: "
                            f"{result.failed[:20]}")


def _metadata(plan: CleanupPlan, result: CleanupResult | None, cat: Catalog, stats: list[dict], state: str,
              dry_run: bool) -> dict:
    moved = [t for t in plan.transitions if t.to_state == state
             and (result is None or (t.upload_id, state) in result.applied)]
    totals = Counter()
    for row in stats:
        if row["state"] == state:
            totals.update({k: row[k] for k in ("uploads", "bytes", "rows")})
    metadata = {
        "dry_run": dry_run,
        # Plain numbers on every materialisation: the UI plots them over time.
        "files": dg.MetadataValue.int(totals["uploads"]),
        "bytes": dg.MetadataValue.int(totals["bytes"]),
        "dagster/row_count": dg.MetadataValue.int(totals["rows"]),
        ("planned_this_pass" if dry_run else "moved_this_pass"): dg.MetadataValue.int(len(moved)),
        "by_transition": dg.MetadataValue.json(dict(Counter(f"{t.from_state}->{t.to_state}" for t in moved))),
        "by_reason": dg.MetadataValue.json(dict(Counter(t.reason for t in moved))),
    }
    if state == DELETED:
        metadata["expired_objects"] = dg.MetadataValue.json(plan.counts()["expired_objects"])
        metadata["expired_bytes"] = dg.MetadataValue.int(
            plan.counts()["expired_bytes"] if result is None else result.bytes_deleted)
        if result is not None:
            metadata["failed_steps"] = dg.MetadataValue.int(len(result.failed))
    metadata["files_in_state"] = dg.MetadataValue.table(
        records=[dg.TableRecord({"upload_id": u.id, "tenant": u.tenant or "", "dataset": u.dataset or "",
                                 "since": u.state_since.isoformat() if u.state_since else "",
                                 "uses": u.uses, "rows": u.rows or 0, "bytes": u.size,
                                 "object_key": u.object_key or "", "landing_key": u.landing_key})
                 for u in cat.recent_in_state(state, limit=TABLE_ROWS)],
        schema=FILES_TABLE)
    return metadata


FILES_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("upload_id", "int"), dg.TableColumn("tenant", "string"), dg.TableColumn("dataset", "string"),
    dg.TableColumn("since", "string"), dg.TableColumn("uses", "int"), dg.TableColumn("rows", "int"),
    dg.TableColumn("bytes", "int"), dg.TableColumn("object_key", "string"), dg.TableColumn("landing_key", "string"),
])

cleanup_job = dg.define_asset_job("cleanup_job", selection=dg.AssetSelection.assets(cleanup),
                                  description="One retention pass over every tenant.")

cleanup_schedule = dg.ScheduleDefinition(
    name="cleanup_schedule", target=cleanup_job, cron_schedule="0 3 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:00 UTC: archive, deprecate and delete per policy; expire quarantine and leftovers.",
)

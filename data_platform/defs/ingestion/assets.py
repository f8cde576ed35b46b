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


CONTRACT_CHECK = "contract_validation"


@dg.asset(
    partitions_def=tenant_datasets,
    kinds={"parquet", "s3", "python"},
    check_specs=[dg.AssetCheckSpec(
        CONTRACT_CHECK, asset="fresh_data", blocking=True,
        description="Uploads validated against the dataset's contract with Great Expectations: fails when an "
                    "upload breaks it beyond max_failing_share (and is quarantined whole).")],
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
    return dg.MaterializeResult(metadata=metadata, check_results=[_contract_check(result)])


def _contract_check(result: BatchResult) -> dg.AssetCheckResult:
    rejected_whole = [o for o in result.outcomes if o.reason == "too_many_invalid_rows"]
    validated = [o for o in result.outcomes if o.refinement and o.refinement.get("rows_validated")]
    failing = Counter()
    for o in validated:
        failing.update(o.refinement.get("failing_by_check", {}))
    checks: dict[str, dict] = {}
    for o in validated:
        for c in o.refinement.get("checks", []):
            entry = checks.setdefault(c["name"], {"evaluated": 0, "unexpected": 0, "samples": []})
            entry["evaluated"] += c["evaluated"]
            entry["unexpected"] += c["unexpected_count"]
            entry["samples"] = (entry["samples"] + c.get("sample_unexpected", []))[:5]
    lines = ["| check | rows evaluated | rows failing | sample failures |", "|---|---|---|---|"]
    lines += [f"| {name} | {c['evaluated']} | {c['unexpected']} | {', '.join(map(str, c['samples']))[:120]} |"
              for name, c in sorted(checks.items())]
    return dg.AssetCheckResult(
        check_name=CONTRACT_CHECK,
        passed=not rejected_whole,
        severity=dg.AssetCheckSeverity.ERROR if result.contract is None or result.contract.blocking
        else dg.AssetCheckSeverity.WARN,
        metadata={
            "contract": dg.MetadataValue.json(
                {"version": result.contract.version, "source": result.contract.source} if result.contract
                else {"contract": None, "note": "no contract: inferred types, basic checks only"}),
            "uploads_validated": len(validated),
            "uploads_quarantined_whole": len(rejected_whole),
            "rows_failing_by_check": dg.MetadataValue.json(dict(failing)),
            "checks": dg.MetadataValue.md("\n".join(lines)),
        },
    )


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
        "contract": result.contract.version if result.contract else "none (inferred types, basic checks)",
        "pii_columns": dg.MetadataValue.json(_merged(result, "pii_columns")),
        "pii_detected_undeclared": dg.MetadataValue.json(_merged(result, "pii_detected")),
        "pseudonymised_values": dg.MetadataValue.json(_summed(result, "pseudonymised_values")),
        "redacted_in_text": dg.MetadataValue.json(_summed(result, "redacted_in_text")),
        "duplicate_rows_removed": dg.MetadataValue.json(_summed(result, "duplicate_rows_removed")),
        "near_duplicates": dg.MetadataValue.json(_summed(result, "near_duplicates")),
    }
    scored = [u for u in in_partition if u.quality is not None and u.rows]
    if scored:
        # A float on every materialization: the UI plots the dataset's quality over time.
        metadata["dataset_quality"] = dg.MetadataValue.float(
            round(sum(u.rows * u.quality for u in scored) / sum(u.rows for u in scored), 4))
    quality_rows = [_quality_record(o) for o in fresh if (o.refinement or {}).get("quality")]
    if quality_rows:
        metadata["quality_by_upload"] = dg.MetadataValue.table(
            records=[dg.TableRecord(r) for r in quality_rows[:200]], schema=QUALITY_TABLE)
    if schema is not None:
        metadata["dagster/column_schema"] = _table_schema(schema)
    return metadata


QUALITY_TABLE = dg.TableSchema(columns=[
    dg.TableColumn("upload_id", "int"), dg.TableColumn("rows", "int"), dg.TableColumn("score", "float"),
    dg.TableColumn("completeness", "float"), dg.TableColumn("validity", "float"),
    dg.TableColumn("uniqueness", "float"), dg.TableColumn("text_quality", "float"),
    dg.TableColumn("modality", "string"), dg.TableColumn("languages", "string"),
])


def _quality_record(outcome) -> dict:
    q = outcome.refinement["quality"]
    languages = {column: ", ".join(f"{code} {share:.0%}" for code, share in list(shares.items())[:4])
                 for column, shares in (q.get("languages") or {}).items()}
    return {"upload_id": outcome.upload_id, "rows": outcome.rows, "score": q["score"],
            "completeness": q["completeness"], "validity": q["validity"], "uniqueness": q["uniqueness"],
            "text_quality": q["text_quality"] if q.get("text_quality") is not None else -1.0,
            "modality": q["modality"], "languages": "; ".join(f"{c}: {v}" for c, v in languages.items())}


def _merged(result: BatchResult, key: str) -> dict:
    out: dict = {}
    for o in result.outcomes:
        out.update((o.refinement or {}).get(key) or {})
    return out


def _summed(result: BatchResult, key: str) -> dict:
    """A report's numbers summed over the batch's uploads, key by key, nested mappings of
    numbers too (near-duplicates' rows per matched upload); its other values (an action,
    a list of columns) are not sums and are left out."""
    out: dict = {}
    for o in result.outcomes:
        _add_numbers(out, (o.refinement or {}).get(key) or {})
    return out


def _add_numbers(into: dict, report: dict) -> None:
    for name, value in report.items():
        if isinstance(value, dict):
            _add_numbers(into.setdefault(name, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            into[name] = into.get(name, 0) + value


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

"""What refinement found, per dataset: quality, duplicates and personal data, summed over
the uploads the catalog holds as ingested. Feeds `data-platform stats --json` and the
statistics asset. Plain Python over the catalog's per-upload details."""

from collections import Counter, defaultdict
from datetime import datetime

from data_platform.catalog import INGESTED, Catalog, Upload
from data_platform.quality import dataset_quality


def dataset_findings(catalog: Catalog, *, tenant: str | None = None) -> dict[str, dict]:
    """"tenant/dataset" -> quality (row-weighted over ingested uploads), duplicate rows
    removed, near-duplicates found, rows rejected by check, personal data handled."""
    by_dataset: dict[str, list[Upload]] = defaultdict(list)
    for upload in catalog.list_uploads(tenant=tenant):
        if upload.state in INGESTED and upload.tenant and upload.dataset:
            by_dataset[f"{upload.tenant}/{upload.dataset}"].append(upload)
    findings = {}
    for key, ingested in sorted(by_dataset.items()):
        details = [(u, u.report) for u in ingested]
        duplicates, near, rejected, pseudonymised, redacted = Counter(), Counter(), Counter(), Counter(), Counter()
        pii_columns, pii_detected = {}, {}
        for _, d in details:
            duplicates.update(d.get("duplicate_rows_removed") or {})
            nd = d.get("near_duplicates") or {}
            near.update({k: nd[k] for k in ("flagged", "dropped") if k in nd})
            rejected.update(d.get("rejected_by_reason") or {})
            pseudonymised.update(d.get("pseudonymised_values") or {})
            redacted.update(d.get("redacted_in_text") or {})
            pii_columns.update(d.get("pii_columns") or {})
            pii_detected.update(d.get("pii_detected") or {})
        findings[key] = {
            "uploads": len(ingested),
            "rows": sum(u.rows or 0 for u in ingested),
            "quality": dataset_quality((u.rows or 0, d["quality"]) for u, d in details if d.get("quality")),
            "duplicate_rows_removed": dict(duplicates),
            "near_duplicates": dict(near),
            "rows_rejected_by_check": dict(rejected),
            "pii_columns": pii_columns,
            "pii_detected_undeclared": pii_detected,
            "pseudonymised_values": dict(pseudonymised),
            "redacted_in_text": dict(redacted),
        }
    return findings


def quality_trend(catalog: Catalog, tenant: str, dataset: str) -> list[dict]:
    """Per day an upload became ingested: uploads, rows and their row-weighted quality."""
    days: dict[str, list[Upload]] = defaultdict(list)
    for upload in catalog.list_uploads(tenant=tenant, dataset=dataset):
        if upload.state in INGESTED and upload.quality is not None:
            days[_day(upload.ingested_at or upload.updated_at)].append(upload)
    trend = []
    for day, ups in sorted(days.items()):
        rows = sum(u.rows or 0 for u in ups)
        score = sum((u.rows or 0) * u.quality for u in ups) / rows if rows else None
        trend.append({"day": day, "uploads": len(ups), "rows": rows,
                      "quality": round(score, 4) if score is not None else None})
    return trend


def _day(when: datetime) -> str:
    return when.date().isoformat()


QUALITY_BUCKETS = 10


def quality_distribution(catalog: Catalog, *, tenant: str | None = None) -> dict:
    """Ingested uploads (and their rows) per quality band of width 0.1, overall and per
    dataset, with each dataset's row-weighted mean: the figures a histogram plots."""
    overall = _bands()
    by_dataset: dict[str, dict] = {}
    for f in catalog.upload_facts(tenant=tenant):
        if f.state not in INGESTED or f.quality is None:
            continue
        band = min(int(f.quality * QUALITY_BUCKETS), QUALITY_BUCKETS - 1)
        name = f"{f.tenant}/{f.dataset}"
        entry = by_dataset.setdefault(name, {"bands": _bands(), "rows": 0, "weighted": 0.0})
        for bands in (overall, entry["bands"]):
            bands[band]["uploads"] += 1
            bands[band]["rows"] += f.rows or 0
        entry["rows"] += f.rows or 0
        entry["weighted"] += (f.rows or 0) * f.quality
    return {
        "bands": overall,
        "by_dataset": {name: {"bands": e["bands"],
                              "mean": round(e["weighted"] / e["rows"], 4) if e["rows"] else None}
                       for name, e in sorted(by_dataset.items())},
    }


def _bands() -> list[dict]:
    return [{"from": round(i / QUALITY_BUCKETS, 1), "to": round((i + 1) / QUALITY_BUCKETS, 1), "uploads": 0, "rows": 0}
            for i in range(QUALITY_BUCKETS)]


def growth(catalog: Catalog, *, tenant: str | None = None) -> list[dict]:
    """Per UTC day: uploads ingested that day, their bytes (as uploaded) and rows, and the
    running totals since the first, whatever state they are in now."""
    days: dict[str, Counter] = defaultdict(Counter)
    for f in catalog.upload_facts(tenant=tenant):
        if f.ingested_at is None:
            continue
        day = days[_day(f.ingested_at)]
        day["uploads"] += 1
        day["bytes"] += f.size
        day["rows"] += f.rows or 0
    out, total = [], Counter()
    for day, counts in sorted(days.items()):
        total.update(counts)
        out.append({"day": day, **{k: counts[k] for k in ("uploads", "bytes", "rows")},
                    **{f"total_{k}": total[k] for k in ("uploads", "bytes", "rows")}})
    return out

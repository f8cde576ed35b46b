#!/usr/bin/env python3
"""A cleanup pass planned over 100,000 catalogued files.

    python benchmarks/bench_cleanup.py [--uploads 100000] [--backends sqlite,postgresql] [--no-objects]

Set-up (not timed), per catalog backend (SQLite in a temp dir; a throwaway PostgreSQL
database created and dropped here, admin DSN from --pg-admin):
  * --uploads uploads bulk-inserted into the catalog over 64 tenants x 4 datasets, in
    varied states: 40% fresh, 20% used (1-6 uses), 15% archived, 10% deprecated, 5%
    quarantined, 5% deleted (with tombstones), 3% duplicate, 2% landing; became fresh
    between 0 and 400 days ago; one registered `rows` index run per ingested upload;
    1,000 used files held by a training set still `building`; 16 datasets with a contract
    in the store (archive after 60 days), the others on the defaults;
  * a local object store with the objects the catalog names (data/, archive/, index
    runs: ~170,000 files of 16 bytes) and 100 orphans planted two days old.
Timed, in a child process of its own (so its peak RSS is the planning's alone, imports
included): ONE `plan_cleanup(catalog, store, contracts, now=...)` with the platform
defaults: reading the catalog, listing the store, policies and the plan.
Checks: the planted orphans and nothing else expire; no transition touches a held
file; every fresh or used file older than 90 days is planned for archiving.

Target: planning under 10 s. Writes benchmarks/results/cleanup.json; exits 1 if the
target is missed or a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR, REPO, RESULTS_DIR, catalog_url, finish, log, machine_info, own_peak_rss_mb, per_backend, table,
)

MAX_PLAN_SECONDS = 10.0
TENANTS, DATASETS = 64, 4
HELD = 1_000
ORPHANS = 100
CONTRACTS = 16  # the first datasets have a contract in the store: archive after 60 days
NOW = datetime(2026, 6, 1)
STATES = [("fresh", 40), ("used", 20), ("archived", 15), ("deprecated", 10), ("quarantined", 5), ("deleted", 5),
          ("duplicate", 3), ("landing", 2)]


def prefill(url: str, root: Path, n: int, *, objects: bool = True) -> dict:
    """The catalog, and (once: the same seed gives the same keys) the objects it names;
    returns what the checks need."""
    import sqlalchemy as sa

    from data_platform import layout
    from data_platform.catalog import Catalog
    from data_platform.catalog.schema import (
        datasets, index_runs, tombstones, training_set_files, training_sets, uploads,
    )

    rng = random.Random(7)
    catalog = Catalog(url)
    names = [(f"tenant-{t:03d}", f"ds-{d}") for t in range(TENANTS) for d in range(DATASETS)]
    weights = [w for _, w in STATES]
    rows, runs, stones, keys = [], [], [], []
    expect_archive, used_ids = set(), []
    with catalog.engine.begin() as conn:
        conn.execute(datasets.insert(), [{"id": i + 1, "tenant": t, "dataset": d} for i, (t, d) in enumerate(names)])
    for i in range(1, n + 1):
        ds = (i - 1) % len(names)
        tenant, dataset = names[ds]
        state = rng.choices([s for s, _ in STATES], weights)[0]
        ingested = NOW - timedelta(days=rng.uniform(0, 400))
        since = ingested + (NOW - ingested) * rng.uniform(0, 1)
        uses = rng.randint(1, 6) if state in ("used", "archived", "deprecated") else 0
        key = None
        if state in ("fresh", "used"):
            key = layout.data_key(tenant, dataset, i)
            archive_days = 60 if ds < CONTRACTS else 90
            if uses >= 3 or NOW - ingested >= timedelta(days=archive_days):
                expect_archive.add(i)
            if state == "used":
                used_ids.append(i)
        elif state in ("archived", "deprecated"):
            key = layout.archive_key(tenant, dataset, i)
        elif state == "quarantined":
            key = layout.quarantine_prefix(tenant, dataset, i)
        rows.append({"id": i, "landing_key": f"landing/{tenant}/{dataset}/batch/{i:07d}.jsonl", "etag": f"e{i}",
                     "size": 1000 + i % 50_000, "last_modified": ingested, "tenant": tenant, "dataset": dataset,
                     "state": state, "sha256": f"{i:064x}", "rows": 100, "quarantined_rows": 0,
                     "object_key": key, "attempts": 1, "detected_at": ingested, "updated_at": since,
                     "uses": uses, "ingested_at": ingested if state not in ("landing", "quarantined") else None,
                     "state_since": since})
        if state in ("fresh", "used", "archived", "deprecated"):
            runs.append({"dataset_id": ds + 1, "kind": "rows", "upload_id": i, "entries": 100, "created_at": ingested,
                         "object_key": layout.index_run_key("rows", tenant, dataset, i)})
            keys += [key, runs[-1]["object_key"]]
        if state == "deleted":
            stones.append({"upload_id": i, "tenant": tenant, "dataset": dataset, "landing_key": rows[-1]["landing_key"],
                           "object_key": layout.archive_key(tenant, dataset, i), "sha256": f"{i:064x}", "size": 1000,
                           "rows": 100, "from_state": "deprecated", "deleted_at": since, "deleted_by": "bench",
                           "reason": "delete_after_days"})
    held = set(used_ids[:HELD])
    expect_archive -= held
    with catalog.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(uploads.insert(), rows[start:start + 10_000])
        for start in range(0, len(runs), 10_000):
            conn.execute(index_runs.insert(), runs[start:start + 10_000])
        conn.execute(tombstones.insert(), stones)
        set_id = conn.execute(training_sets.insert().values(
            tenant=names[0][0], name="bench", version=1, state="building", filters="{}", consumer="bench",
            created_by="bench", prefix="training_sets/bench/", created_at=NOW,
        ).returning(training_sets.c.id)).scalar_one()
        conn.execute(training_set_files.insert(), [{"training_set_id": set_id, "upload_id": i, "rows": 100}
                                                   for i in sorted(held)])
    if catalog.engine.dialect.name == "postgresql":
        with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    catalog.dispose()

    orphans = set()
    for tenant, dataset in names[:CONTRACTS]:
        path = root / "_platform" / "contracts" / tenant / f"{dataset}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("version: 1\ncolumns: {id: {type: string}}\nretention: {archive_after_days: 60}\n")
    if objects:
        orphans = {layout.data_key(*names[j % len(names)], n + 1 + j) for j in range(ORPHANS)}
        if not (root / ".complete").exists():
            t = time.perf_counter()
            for parent in {str(Path(k).parent) for k in keys + sorted(orphans)}:
                (root / parent).mkdir(parents=True, exist_ok=True)
            for key in keys:
                fd = os.open(root / key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.write(fd, b"0123456789abcdef")
                os.close(fd)
            two_days_ago = (NOW - timedelta(days=2)).timestamp()
            for key in orphans:
                (root / key).write_bytes(b"orphan")
                os.utime(root / key, (two_days_ago, two_days_ago))
            (root / ".complete").touch()  # not listed: only data/, archive/, ... are
            log(f"wrote {len(keys) + ORPHANS:,} objects in {time.perf_counter() - t:.1f} s")
    return {"held": sorted(held), "expect_archive": sorted(expect_archive), "orphans": sorted(orphans),
            "objects": len(keys) + len(orphans)}


def child(url: str, root: str, out: str) -> None:
    """The timed part, in its own process."""
    sys.path.insert(0, str(REPO))
    from data_platform.catalog import Catalog
    from data_platform.contracts import ContractRegistry
    from data_platform.retention import RetentionDefaults, plan_cleanup
    from data_platform.storage import LocalObjectStore

    store = LocalObjectStore(root)
    catalog = Catalog(url)  # migrated already: opening it is set-up
    rss_before = own_peak_rss_mb()
    t = time.perf_counter()
    plan = plan_cleanup(catalog, store, ContractRegistry(Path(root).parent / "contracts", store), now=NOW,
                        defaults=RetentionDefaults())
    seconds = time.perf_counter() - t
    Path(out).write_text(json.dumps({
        "plan_seconds": seconds, "peak_rss_mb": own_peak_rss_mb(), "rss_before_mb": rss_before,
        "counts": plan.counts(),
        "transition_ids": sorted({t.upload_id for t in plan.transitions}),
        "archive_ids": sorted(t.upload_id for t in plan.transitions if t.to_state == "archived"),
        "expired": sorted(o.key for o in plan.expired_objects),
    }))


def run_backend(backend: str, args, root: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-cleanup-", dir=DATA_DIR) as tmp:
        tmp = Path(tmp)
        with catalog_url(backend, args.pg_admin, tmp) as url:
            t = time.perf_counter()
            truth = prefill(url, root, args.uploads, objects=not args.no_objects)
            log(f"{backend}: prefilled {args.uploads:,} uploads in {time.perf_counter() - t:.1f} s")
            out = tmp / "child.json"
            proc = subprocess.run([sys.executable, __file__, "--child", url, str(root), str(out)])
            if proc.returncode != 0:
                raise RuntimeError(f"planning child exited {proc.returncode}")
            measured = json.loads(out.read_text())
    log(f"{backend}: planned in {measured['plan_seconds']:.2f} s, peak RSS {measured['peak_rss_mb']:.0f} MB: "
        f"{measured['counts']}")
    checks = {
        "no transition touches a held file": not set(truth["held"]) & set(measured["transition_ids"]),
        "every due fresh/used file is archived": set(truth["expect_archive"]) <= set(measured["archive_ids"]),
        "the planted orphans, and nothing else, expire": measured["expired"] == truth["orphans"],
    }
    for name, ok in checks.items():
        if not ok:
            log(f"{backend}: CHECK FAILED: {name}")
    return {"backend": backend, "uploads": args.uploads, "objects": truth["objects"], **measured,
            "transition_ids": None, "archive_ids": None, "expired": len(measured["expired"]),
            "checks": checks, "ok": all(checks.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=100_000)
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--no-objects", action="store_true", help="catalog only (no store listing to speak of)")
    ap.add_argument("--pg-admin", default=os.environ.get("BENCH_PG_ADMIN",
                                                          "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--out", default=str(RESULTS_DIR / "cleanup.json"))
    ap.add_argument("--child", nargs=3, metavar=("URL", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-cleanup-objects-", dir=DATA_DIR) as objects:
        results = per_backend(args.backends, lambda backend: run_backend(backend, args, Path(objects) / "root"))

    targets = []
    for r in results:
        if "plan_seconds" in r:
            targets.append({"target": f"plan {args.uploads:,} files < {MAX_PLAN_SECONDS:.0f} s ({r['backend']})",
                            "value": r["plan_seconds"], "ok": r["plan_seconds"] < MAX_PLAN_SECONDS})
        targets.append({"target": f"checks pass ({r['backend']})",
                        "value": r.get("error") or ", ".join(k for k, v in r["checks"].items() if not v) or "all",
                        "ok": r["ok"]})
    report = {"results": results, "targets": targets, "ok": all(t["ok"] for t in targets),
              "machine": machine_info(), "args": {"uploads": args.uploads, "objects": not args.no_objects}}
    print(f"\n== Cleanup plan: {args.uploads:,} catalogued files ==")
    print(table(["catalog", "plan s", "peak RSS MB", "objects listed", "transitions", "expired"],
                [[r["backend"], r["plan_seconds"], r["peak_rss_mb"], r["objects"],
                  sum(r["counts"]["transitions"].values()), r["expired"]] if "plan_seconds" in r
                 else [r["backend"], "FAILED", "-", "-", "-", "-"] for r in results]))
    return finish(report, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())

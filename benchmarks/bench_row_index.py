#!/usr/bin/env python3
"""The dataset row index with 10 million rows already indexed.

    python benchmarks/bench_row_index.py [--rows 10000000] [--runs 100] [--tables 60]

Builds a dataset whose fresh uploads hold --rows distinct row hashes in --runs runs (the
way ingestion writes and registers them: one sorted Parquet object per upload in the
store, registered in the catalog by mark_fresh), catalog on SQLite, store on a local
directory. Then, as a new ingestion process would: loads the index (one GET per run)
and checks --tables tables of 32,768 rows (half of them rows already indexed), then
stages and commits the new rows. Baseline, measured in the same run: a binary search of
each table in one sorted array of every hash (what an ideal in-memory set costs).

Reports load time, per-table check time (ours and the baseline), commit time, and the
process's RSS growth while loading. Exits 1 if loading takes over 10 s or a table
check over 10x the baseline.
"""

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import DATA_DIR, RESULTS_DIR, finish, log, table  # noqa: E402

from data_platform.catalog import Catalog, Identity  # noqa: E402
from data_platform.dedup import RowIndex  # noqa: E402
from data_platform.indexes import RunStore  # noqa: E402
from data_platform.storage import LocalObjectStore  # noqa: E402

TABLE_ROWS = 32_768
MAX_LOAD_SECONDS = 10.0
MAX_CHECK_VS_BASELINE = 10.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--tables", type=int, default=60)
    ap.add_argument("--out", default=str(RESULTS_DIR / "row_index.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(7)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-row-index-", dir=DATA_DIR) as tmp:
        store = LocalObjectStore(Path(tmp) / "objects")
        catalog = Catalog(f"sqlite:///{tmp}/catalog.db")
        when = datetime(2026, 11, 1, tzinfo=UTC)
        catalog.register([(Identity(f"landing/bench/rows/{i}.jsonl", "e", 1, when), "bench", "rows")
                          for i in range(args.runs + 1)], actor="bench")
        uploads = sorted(catalog.claim("bench", "rows", "bench", lease=timedelta(hours=1), limit=args.runs + 1),
                         key=lambda u: u.id)
        log(f"building {args.rows:,} indexed rows in {args.runs} runs ...")
        everything = []
        writer = RowIndex(RunStore(store, catalog, "bench", "rows", RowIndex.KIND))
        per_run = args.rows // args.runs
        for upload in uploads[:-1]:
            writer.begin(upload.id)
            hashes = np.unique(rng.integers(-2**63, 2**63 - 1, per_run, dtype=np.int64))
            writer.claim(hashes)
            run = writer.stage()
            catalog.mark_fresh(upload, "bench", sha256=f"{upload.id:064d}", rows=len(hashes), quarantined_rows=0,
                               object_key="-", dataset_id=writer.runs.dataset_id, runs=[run],
                               seen_runs={RowIndex.KIND: writer.seen_run_id})
            writer.committed()
            everything.append(hashes)
        del writer
        everything = np.sort(np.concatenate(everything))
        indexed = len(everything)

        # A new ingestion process: load, then check tables.
        before = rss_mb()
        t0 = time.perf_counter()
        index = RowIndex(RunStore(store, Catalog(catalog.url), "bench", "rows", RowIndex.KIND))
        load_seconds = time.perf_counter() - t0
        rss_growth = rss_mb() - before
        index.begin(uploads[-1].id)
        tables = []
        for _ in range(args.tables):
            known = everything[rng.integers(0, indexed, TABLE_ROWS // 2)]
            new = rng.integers(-2**63, 2**63 - 1, TABLE_ROWS // 2, dtype=np.int64)
            tables.append(np.unique(np.concatenate([known, new])))
        t0 = time.perf_counter()
        kept = sum(int(index.claim(t).sum()) for t in tables)
        check_seconds = (time.perf_counter() - t0) / args.tables
        t0 = time.perf_counter()
        for t in tables:
            at = np.minimum(np.searchsorted(everything, t), indexed - 1)
            _ = everything[at] == t
        baseline_seconds = (time.perf_counter() - t0) / args.tables
        t0 = time.perf_counter()
        run = index.stage()
        catalog.mark_fresh(uploads[-1], "bench", sha256="f" * 64, rows=kept, quarantined_rows=0, object_key="-",
                           dataset_id=index.runs.dataset_id, runs=[run], seen_runs={RowIndex.KIND: index.seen_run_id})
        commit_seconds = time.perf_counter() - t0
        assert len(index.known) == indexed, (len(index.known), indexed)

    print("\n== Row index with many rows indexed ==")
    print(table(["measure", "value"], [
        ["rows indexed", f"{indexed:,} in {args.runs} runs"],
        ["load (new process: list runs, GET each, merge)", f"{load_seconds:.2f} s"],
        ["RSS growth while loading", f"{rss_growth:.0f} MB"],
        [f"check one table of {TABLE_ROWS:,} rows (half known)", f"{check_seconds * 1e3:.1f} ms"],
        ["baseline: binary search in one sorted array", f"{baseline_seconds * 1e3:.1f} ms"],
        ["stage + commit the new rows' run", f"{commit_seconds * 1e3:.0f} ms"],
    ]))
    targets = [
        {"target": f"load <= {MAX_LOAD_SECONDS:.0f} s", "value": load_seconds, "ok": load_seconds <= MAX_LOAD_SECONDS},
        {"target": f"table check <= {MAX_CHECK_VS_BASELINE:.0f}x baseline",
         "value": check_seconds / baseline_seconds, "ok": check_seconds <= MAX_CHECK_VS_BASELINE * baseline_seconds},
    ]
    report = {"rows_indexed": indexed, "runs": args.runs, "load_seconds": load_seconds, "rss_growth_mb": rss_growth,
              "check_ms_per_table": check_seconds * 1e3, "baseline_ms_per_table": baseline_seconds * 1e3,
              "commit_ms": commit_seconds * 1e3, "targets": targets, "ok": all(t["ok"] for t in targets),
              "at": datetime.now(UTC).isoformat()}
    return finish(report, targets, args.out)


if __name__ == "__main__":
    os.environ.setdefault("DATA_PLATFORM_HOME", str(DATA_DIR / "home"))
    sys.exit(main())

#!/usr/bin/env python3
"""Weekly export throughput and peak memory: ours vs a DuckDB COPY of the same files.

    python benchmarks/bench_export.py [--files 10] [--file-mb 100] [--repeat 1] [--out PATH]

Input: the same ~1 GB of fresh Parquet as bench_training_set.py (`--files` copies of one
generated file of about `--file-mb` MB, cached in benchmarks/.data/), catalogued fresh
and ingested this week by that benchmark's helpers.

Contenders, each in its own child process (this script re-invoked with `--child NAME`),
timed inside the child around the export only, peak RSS its own VmHWM:

  duckdb     COPY (SELECT * FROM read_parquet([...])) TO 'out.parquet' (zstd): the baseline
  ours       export_week() in Parquet on a local-directory store and a SQLite catalog:
             one GET per file into a temp dir, DuckDB COPY per ~256 MB group with the
             `_upload_id` column, sha256, put, manifest, removal of the replaced export.
             Setup (files put into data/, catalogued fresh) is not timed.
  ours_s3    the same against an S3 endpoint (moto, in its own process): reported, not a
             target (moto's CPU shares the same two cores).

Targets (issue 6): ours >= 0.5x duckdb's MB/s, ours' peak RSS < 600 MB.
Writes benchmarks/results/export.json and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, MotoSubprocess, best_child_run, finish, machine_info, own_peak_rss_mb, table,
)
from bench_training_set import TENANT, _catalogue_fresh, run_duckdb, source_files  # noqa: E402

CONTENDERS = ("duckdb", "ours", "ours_s3")
MIN_VS_DUCKDB = 0.5
MAX_RSS_MB = 600.0


def run_ours(paths: list[Path], work: Path, *, s3: bool) -> dict:
    from datetime import UTC, datetime

    from data_platform.catalog import Catalog
    from data_platform.exports import Week, export_week, verify_export
    from data_platform.storage import LocalObjectStore, S3ObjectStore

    if s3:
        store = S3ObjectStore("bench-export")
        store.ensure_bucket()
    else:
        store = LocalObjectStore(work / "objects")
    catalog = Catalog(f"sqlite:///{work / 'catalog.db'}")
    _catalogue_fresh(store, catalog, paths)  # ingested now: this week
    week = Week.containing(datetime.now(UTC)).key
    started = time.perf_counter()
    result = export_week(store, catalog, TENANT, week, fmt="parquet", run_id="bench")
    seconds = time.perf_counter() - started
    # Not timed: the export as a reader would check it.
    problems = verify_export(store, result.manifest_key)["problems"]
    return {"seconds": seconds, "rows": result.manifest["rows"], "output_bytes": result.manifest["bytes"],
            "parts": len(result.manifest["parts"]), "verify_problems": problems}


def child(name: str, paths: list[Path]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-export-{name}-") as tmp:
        if name == "duckdb":
            result = run_duckdb(paths, Path(tmp))
        else:
            result = run_ours(paths, Path(tmp), s3=name == "ours_s3")
    result["peak_rss_mb"] = own_peak_rss_mb()
    print(json.dumps(result), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--file-mb", type=float, default=100)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "export.json"))
    ap.add_argument("--child")
    ap.add_argument("--out-json")
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args(argv)
    if args.child:
        sys.stdout = open(args.out_json, "w")  # the parent reads the result from there
        child(args.child, [Path(p) for p in args.paths])
        return 0

    paths = source_files(args.files, args.file_mb)
    moto = MotoSubprocess()
    try:
        runs = [best_child_run(__file__, name, paths, args.repeat, moto.env() if name == "ours_s3" else {}) for name in CONTENDERS]
    finally:
        moto.stop()
    by = {r["contender"]: r for r in runs}
    print(table(["contender", "MB/s", "seconds", "rows", "peak RSS MB", "output MB"],
                [[r["contender"], r.get("mb_per_s", 0.0), r.get("seconds", 0.0), r.get("rows", 0),
                  r.get("peak_rss_mb", 0.0), r.get("output_bytes", 0) / 1e6] for r in runs]))
    ok_all = all(r["ok"] for r in runs)
    ratio = by["ours"]["mb_per_s"] / by["duckdb"]["mb_per_s"] if ok_all else 0.0
    same_rows = ok_all and by["ours"]["rows"] == by["duckdb"]["rows"] == by["ours_s3"]["rows"]
    verified = ok_all and not by["ours"]["verify_problems"] and not by["ours_s3"]["verify_problems"]
    targets = [
        {"target": f"ours >= {MIN_VS_DUCKDB}x duckdb COPY (ratio)", "value": f"{ratio:.2f}x",
         "ok": ratio >= MIN_VS_DUCKDB},
        {"target": f"ours peak RSS < {MAX_RSS_MB:.0f} MB", "value": by["ours"].get("peak_rss_mb", 0.0),
         "ok": ok_all and by["ours"]["peak_rss_mb"] < MAX_RSS_MB},
        {"target": "every contender wrote every row", "value": "yes" if same_rows else "no", "ok": same_rows},
        {"target": "our exports verify against their manifests", "value": "yes" if verified else "no",
         "ok": verified},
    ]
    report = {"machine": machine_info(), "inputs": [str(p) for p in paths],
              "input_bytes": sum(p.stat().st_size for p in paths), "runs": runs, "targets": targets,
              "ok": all(t["ok"] for t in targets)}
    return finish(report, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())

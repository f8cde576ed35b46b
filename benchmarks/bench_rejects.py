#!/usr/bin/env python3
"""Ingestion of a file whose types are strict and whose bad rows are scattered.

    python benchmarks/bench_rejects.py [--mb 200]

bench_ingest's data never takes the row-rejection path: gen_data's first 16 MB block
already holds malformed timestamps, so `created_at` is inferred as a string and every
row fits. Here the input is a ~20 MB clean head (gen_data --bad-rate 0, so the first
block types `created_at` as a timestamp) followed by the --mb file (1% bad rows, a
third of them malformed timestamps): most 16 MB blocks then fail the typed parse and
go through `readers._isolate_bad_json`, which bisects to the bad lines.

Runs "ours" exactly as bench_ingest does (own child process, moto S3 in this process,
SQLite catalog), on the plain --mb file and on the mixed file, and checks every row is
kept or quarantined. Target: peak RSS < 600 MB on both (the issue's memory target);
throughput is reported for comparison only. Writes benchmarks/results/rejects.json;
exits 1 if the memory target is missed or a run fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest  # noqa: E402
from _common import (  # noqa: E402
    DATA_DIR, RESULTS_DIR, MotoServer, finish, generated_jsonl, log, machine_info, table,
)

HEAD_MB = 20  # > readers.BLOCK_BYTES, so the whole first block is clean


def mixed_input(mb: float, seed: int) -> tuple[Path, dict, Path, dict]:
    head, head_meta = generated_jsonl(HEAD_MB, seed=seed + 1, bad_rate=0.0)
    body, body_meta = generated_jsonl(mb, seed=seed)
    path = DATA_DIR / f"typed_rejects_{head.stem}_{body.stem}.jsonl"
    if not path.exists() or path.stat().st_size != head_meta["bytes"] + body_meta["bytes"]:
        log(f"building {path.name}")
        with open(path.with_suffix(".partial"), "wb") as out:
            for src in (head, body):
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        path.with_suffix(".partial").replace(path)
    meta = {"bytes": path.stat().st_size,
            "counts": {"rows": head_meta["counts"]["rows"] + body_meta["counts"]["rows"],
                       "bad_timestamp": body_meta["counts"]["bad_timestamp"]}}
    return path, meta, body, body_meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--profile", action="store_true", help="cProfile ours; stats to benchmarks/results/*.prof")
    ap.add_argument("--out", default=str(RESULTS_DIR / "rejects.json"))
    args = ap.parse_args(argv)

    mixed, mixed_meta, plain, plain_meta = mixed_input(args.mb, args.seed)
    moto = MotoServer()
    try:
        runs = [bench_ingest.measure("ours", plain, plain_meta, moto, args),
                bench_ingest.measure("ours", mixed, mixed_meta, moto, args)]
    finally:
        moto.stop()
    runs[0]["scenario"], runs[1]["scenario"] = "plain (strings)", "typed + scattered bad rows"

    targets = []
    for r in runs:
        targets.append({"target": f"ours runs, every row kept or quarantined ({r['scenario']})",
                        "value": r.get("error", "ok"), "ok": r["ok"]})
        if r["ok"]:
            targets.append({"target": f"ours peak RSS < {bench_ingest.MAX_RSS_MB:.0f} MB ({r['scenario']})",
                            "value": r["peak_rss_mb"], "ok": r["peak_rss_mb"] < bench_ingest.MAX_RSS_MB})
    report = {"runs": runs, "targets": targets, "ok": all(t["ok"] for t in targets),
              "expected_rejects": mixed_meta["counts"]["bad_timestamp"], "machine": machine_info()}
    if all(r["ok"] for r in runs):
        report["slowdown"] = runs[0]["mb_per_s"] / runs[1]["mb_per_s"]

    print("\n== Ingestion with row rejects (ours, end to end on S3) ==")
    print(table(["scenario", "input MB", "rows kept", "quarantined", "seconds", "MB/s", "peak RSS MB"],
                [[r["scenario"], f"{r['input_mb']:.0f}", r.get("rows", "-"), r.get("quarantined_rows", "-"),
                  r.get("seconds", "-"), r.get("mb_per_s", "-"), r.get("peak_rss_mb", "-")] for r in runs]))
    if "slowdown" in report:
        print(f"typed + scattered bad rows is {report['slowdown']:.1f}x slower than plain "
              f"({report['expected_rejects']} malformed timestamps in the input)")
    return finish(report, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())

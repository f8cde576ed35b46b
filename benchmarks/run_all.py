#!/usr/bin/env python3
"""Run the benchmarks and print one combined report.

    python benchmarks/run_all.py [--with-rejects] [--repeat N] [--quick]

Runs bench_ingest.py, bench_sensor.py, bench_cleanup.py, bench_features.py and bench_export.py (and bench_rejects.py with --with-rejects),
each as its own process with its own output, then summarises their JSON results.
--quick uses small sizes (a smoke test, not the targets' conditions). Exits non-zero
if any benchmark missed a target or failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _common import RESULTS_DIR, table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-rejects", action="store_true", help="also run bench_rejects.py")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the benchmarks themselves")
    ap.add_argument("--repeat", type=int, default=1, help="bench_ingest runs per contender (fastest kept)")
    args = ap.parse_args(argv)

    suffix = "_quick" if args.quick else ""
    plan = [
        ("ingest", "bench_ingest.py", (["--mb", "100", "--also-mb", "20"] if args.quick else [])
         + ["--repeat", str(args.repeat)]),
        ("sensor", "bench_sensor.py", ["--uploads", "10000", "--new", "200"] if args.quick else []),
        ("cleanup", "bench_cleanup.py", ["--uploads", "10000"] if args.quick else []),
        ("features", "bench_features.py", ["--entities", "100000", "--entity-rows", "100000"] if args.quick else []),
        ("export", "bench_export.py", ["--files", "2", "--file-mb", "20"] if args.quick else []),
        ("training_set", "bench_training_set.py", ["--files", "2", "--file-mb", "20"] if args.quick else []),
        ("backup", "bench_backup.py", ["--uploads", "10000"] if args.quick else []),
    ]
    if args.with_rejects:
        plan.append(("rejects", "bench_rejects.py", ["--mb", "50"] if args.quick else []))

    codes = {}
    for name, script, extra in plan:
        out = RESULTS_DIR / f"{name}{suffix}.json"
        out.unlink(missing_ok=True)
        print(f"\n##### {script} {' '.join(extra)}", flush=True)
        codes[name] = subprocess.run([sys.executable, str(BENCH / script), *extra, "--out", str(out)]).returncode

    print("\n\n################ combined report ################")
    ok = True
    for name, _, _ in plan:
        out = RESULTS_DIR / f"{name}{suffix}.json"
        if not out.exists():
            print(f"\n{name}: no results (exit code {codes[name]})")
            ok = False
            continue
        report = json.loads(out.read_text())
        ok &= report["ok"] and codes[name] == 0
        print(f"\n[{name}] {'all targets met' if report['ok'] else 'TARGET(S) MISSED'}  ({out})")
        if name in ("ingest", "rejects", "export", "training_set"):
            print(table(["contender", "input MB", "seconds", "MB/s", "peak RSS MB"],
                        [[r.get("scenario", r["contender"]), f"{r['input_mb']:.0f}", r.get("seconds", "-"),
                          r.get("mb_per_s", "-"), r.get("peak_rss_mb", "-")] for r in report["runs"]]))
        elif name == "features":
            print(table(["step", "seconds", "rows", "peak RSS MB"],
                        [["materialise", report["build"].get("materialise_seconds", "FAILED"),
                          report["build"].get("feature_rows", "-"), report["build"].get("peak_rss_mb", "-")],
                         ["retrieve", report["retrieve"].get("seconds", "FAILED"),
                          report["retrieve"].get("entity_rows", "-"), report["retrieve"].get("peak_rss_mb", "-")]]))
        elif name == "cleanup":
            print(table(["catalog", "plan s", "peak RSS MB"],
                        [[r["backend"], r.get("plan_seconds", "FAILED"), r.get("peak_rss_mb", "-")]
                         for r in report["results"]]))
        else:
            print(table(["catalog", "tick s", "idle tick s"],
                        [[r["backend"], r.get("tick_seconds", "FAILED"), r.get("idle_tick_seconds", "-")]
                         for r in report["results"]]))
        print(table(["target", "measured", "ok"],
                    [[t["target"], f"{t['value']:.2f}" if isinstance(t["value"], float) else t["value"],
                      "yes" if t["ok"] else "MISSED"] for t in report["targets"]]))
    print("\nALL BENCHMARKS MET THEIR TARGETS" if ok else "\nSOME TARGET MISSED OR A BENCHMARK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

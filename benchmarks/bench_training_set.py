#!/usr/bin/env python3
"""Training-set build throughput and peak memory: ours vs a DuckDB COPY of the same files.

    python benchmarks/bench_training_set.py [--files 10] [--file-mb 100] [--repeat 1]

Input: `--files` fresh uploads of about `--file-mb` MB of Parquet each (gen_data.py's
rows, generated once and copied; cached in benchmarks/.data/), about 1 GB in all.

Contenders, each in its own child process (this script re-invoked with `--child NAME`),
timed inside the child around the build only, peak RSS its own VmHWM:

  duckdb     COPY (SELECT * FROM read_parquet([...])) TO 'out.parquet' (zstd): the baseline
  ours       create_training_set() on a local-directory store and a SQLite catalog: claim,
             stream every file into zstd Parquet parts with the source column, hash, put,
             manifest, complete. Setup (files put into data/, catalogued fresh) is not timed.
  ours_s3    the same against an S3 endpoint (moto, in its own process) and PostgreSQL
             if DATA_PLATFORM_TEST_PG is reachable, else SQLite: reported, not a target
             (moto's CPU shares the same two cores).

Targets (issue 5): ours >= 0.5x duckdb's MB/s, ours' peak RSS < 600 MB.
Writes benchmarks/results/training_set.json and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR, GEN_DATA, RESULTS_DIR, MotoSubprocess, best_child_run, finish, log, machine_info, own_peak_rss_mb,
    table,
)

CONTENDERS = ("duckdb", "ours", "ours_s3")
MIN_VS_DUCKDB = 0.5
MAX_RSS_MB = 600.0
TENANT, DATASET = "bench", "events"


def source_files(files: int, file_mb: float) -> list[Path]:
    """`files` copies of one generated Parquet file (the content does not matter to a
    build's speed, only its shape; copies save minutes of generation)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    tag = f"{file_mb:g}".replace(".", "p")
    one = DATA_DIR / f"parquet_{tag}mb_seed7.parquet"
    if not one.exists():
        log(f"generating {one.name} ...")
        partial = one.with_suffix(".partial")
        subprocess.run([sys.executable, str(GEN_DATA), "--target-mb", str(file_mb), "--format", "parquet",
                        "--seed", "7", "--no-meta", "--out", str(partial)], check=True, stderr=subprocess.DEVNULL)
        os.replace(partial, one)
    out = []
    for i in range(files):
        copy = DATA_DIR / f"parquet_{tag}mb_seed7_copy{i:02d}.parquet"
        if not copy.exists() or copy.stat().st_size != one.stat().st_size:
            shutil.copyfile(one, copy)
        out.append(copy)
    return out


# -- contenders (in the child) -------------------------------------------------------------


def run_duckdb(paths: list[Path], work: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    listed = ", ".join(f"'{p}'" for p in paths)
    out = work / "out.parquet"
    started = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_parquet([{listed}])) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    seconds = time.perf_counter() - started
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    return {"seconds": seconds, "rows": rows, "output_bytes": out.stat().st_size}


def run_ours(paths: list[Path], work: Path, *, s3: bool) -> dict:
    from data_platform.catalog import Catalog
    from data_platform.storage import LocalObjectStore, S3ObjectStore
    from data_platform.training_sets import TrainingSetRequest, create_training_set

    if s3:
        store = S3ObjectStore("bench-training-set")
        store.ensure_bucket()
    else:
        store = LocalObjectStore(work / "objects")
    catalog = Catalog(f"sqlite:///{work / 'catalog.db'}")
    _catalogue_fresh(store, catalog, paths)
    started = time.perf_counter()
    result = create_training_set(store, catalog, TrainingSetRequest(TENANT, name="bench"), actor="bench")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": result.manifest["rows"], "output_bytes": result.manifest["bytes"],
            "parts": len(result.manifest["parts"])}


def _catalogue_fresh(store, catalog, paths: list[Path]) -> None:
    """Put the files where ingestion leaves fresh data and record them as fresh (setup)."""
    import pyarrow.parquet as pq

    from data_platform import layout
    from data_platform.catalog import FRESH, Identity, utcnow
    from data_platform.catalog.schema import uploads

    idents = [(Identity(f"landing/{TENANT}/{DATASET}/{p.name}", f"etag{i}", p.stat().st_size, utcnow()), TENANT,
               DATASET) for i, p in enumerate(paths)]
    registered = sorted(catalog.register(idents, actor="bench"), key=lambda u: u.id)
    now = utcnow()
    with catalog.engine.begin() as conn:
        for upload, path in zip(registered, paths):
            key = layout.data_key(TENANT, DATASET, upload.id)
            store.upload_file(path, key)
            conn.execute(uploads.update().where(uploads.c.id == upload.id).values(
                state=FRESH, object_key=key, rows=pq.ParquetFile(path).metadata.num_rows, quality=0.9,
                sha256="0" * 64, ingested_at=now, state_since=now))


def child(name: str, paths: list[Path]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-ts-{name}-") as tmp:
        if name == "duckdb":
            result = run_duckdb(paths, Path(tmp))
        else:
            result = run_ours(paths, Path(tmp), s3=name == "ours_s3")
    result["peak_rss_mb"] = own_peak_rss_mb()
    print(json.dumps(result), flush=True)


# -- the parent ------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--file-mb", type=float, default=100)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "training_set.json"))
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
    targets = [
        {"target": f"ours >= {MIN_VS_DUCKDB}x duckdb COPY (ratio)", "value": f"{ratio:.2f}x",
         "ok": ratio >= MIN_VS_DUCKDB},
        {"target": f"ours peak RSS < {MAX_RSS_MB:.0f} MB", "value": by["ours"].get("peak_rss_mb", 0.0),
         "ok": ok_all and by["ours"]["peak_rss_mb"] < MAX_RSS_MB},
        {"target": "every contender wrote every row", "value": "yes" if same_rows else "no", "ok": same_rows},
    ]
    report = {"machine": machine_info(), "inputs": [str(p) for p in paths],
              "input_bytes": sum(p.stat().st_size for p in paths), "runs": runs, "targets": targets,
              "ok": all(t["ok"] for t in targets)}
    return finish(report, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())

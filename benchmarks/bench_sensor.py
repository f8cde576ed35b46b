#!/usr/bin/env python3
"""One sensor tick against a big ledger: scan_landing with 100,000 uploads already in
the catalog and 1,000 new objects in landing.

    python benchmarks/bench_sensor.py [--uploads 100000] [--new 1000] [--backends postgresql,sqlite]

Set-up (not timed), per catalog backend:
  * the catalog: a throwaway PostgreSQL database (created here, dropped at the end;
    admin DSN from --pg-admin) and/or SQLite in a temp dir;
  * the ledger pre-filled with --uploads uploads through Catalog.register (chunks of
    10,000 identities with fake keys/ETags, spread over 64 tenants x 4 datasets), then
    moved to `fresh` with one bulk SQL UPDATE (history: ingested long ago, so they
    are neither in landing nor pending), then ANALYZE;
  * --new small JSONL objects PUT (thread pool) under landing/ of 4 of those
    tenant/datasets, on a moto S3 server running in its own process.
Timed: ONE scan_landing(store, catalog) call, which is what one sensor tick does (with
a breakdown: listing, ledger lookup, registration, pending query), then a second,
idle tick (nothing new; the objects are still in landing). The first tick must
register exactly the new objects and report exactly their 4 partitions.

Target: the first tick under 10 s. Writes benchmarks/results/sensor.json; exits 1 if
the target is missed or a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR, RESULTS_DIR, MotoSubprocess, catalog_url, finish, log, machine_info, per_backend, table,
)

MAX_TICK_SECONDS = 10.0
TENANTS, DATASETS = 64, 4
NEW_PARTITIONS = [(f"tenant-{t:03d}", "ds-0") for t in range(4)]
REGISTER_CHUNK = 10_000


def prefill(catalog, n: int) -> float:
    """`n` historical uploads in the ledger, all `fresh`. Returns seconds spent."""
    import sqlalchemy as sa

    from data_platform.catalog import Identity
    from data_platform.catalog.schema import uploads

    t = time.perf_counter()
    base = datetime(2025, 1, 1, tzinfo=UTC)
    for start in range(0, n, REGISTER_CHUNK):
        batch = []
        for i in range(start, min(n, start + REGISTER_CHUNK)):
            tenant, dataset = f"tenant-{i % TENANTS:03d}", f"ds-{(i // TENANTS) % DATASETS}"
            ident = Identity(f"landing/{tenant}/{dataset}/history/{i:07d}.jsonl",
                             hashlib.md5(str(i).encode()).hexdigest(), 1000 + i % 50_000, base + timedelta(seconds=i))
            batch.append((ident, tenant, dataset))
        catalog.register(batch, actor="bench-prefill")
    t_register = time.perf_counter() - t
    # Bulk, outside the catalog API: they were ingested long ago.
    object_key = sa.literal("data/") + uploads.c.tenant + "/" + uploads.c.dataset + "/upload-" \
        + sa.cast(uploads.c.id, sa.String) + ".parquet"
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().values(state="fresh", rows=uploads.c.size / 100, quarantined_rows=0,
                                             object_key=object_key))
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    log(f"prefilled {n} uploads in {time.perf_counter() - t:.1f} s (register: {t_register:.1f} s, "
        f"{n / t_register:,.0f} uploads/s)")
    return t_register


def put_new_objects(store, n: int) -> set[str]:
    keys = {f"landing/{t}/{d}/new/batch-{i:05d}.jsonl": (t, d)
            for i in range(n) for t, d in [NEW_PARTITIONS[i % len(NEW_PARTITIONS)]]}

    def put(key: str) -> None:
        store.put_bytes(key, f'{{"id": "{key}", "value": 1}}\n{{"id": "{key}-2", "value": 2}}\n'.encode())

    t = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, keys))
    log(f"put {n} objects into landing in {time.perf_counter() - t:.1f} s")
    return set(keys)


class Stages:
    """Wall time spent in the store's and catalog's methods during one tick (wraps
    the instances' methods; data_platform is not modified)."""

    def __init__(self, store, catalog):
        self.seconds: dict[str, float] = {}
        self._wrap_iter(store, "list")
        for name in ("known_uploads", "register", "pending_partitions"):
            self._wrap(catalog, name)

    def _add(self, name: str, dt: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + dt

    def _wrap(self, obj, name: str) -> None:
        orig = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self._add(name, time.perf_counter() - t)

        setattr(obj, name, timed)

    def _wrap_iter(self, obj, name: str) -> None:
        orig = getattr(obj, name)

        def timed(*a, **k):
            it = orig(*a, **k)
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self._add(f"store.{name}", time.perf_counter() - t)
                    return
                self._add(f"store.{name}", time.perf_counter() - t)
                yield item

        setattr(obj, name, timed)


def tick(store_url: str, url: str, profile: str | None = None):
    from data_platform.catalog import Catalog
    from data_platform.intake import scan_landing
    from data_platform.storage import open_store

    store, catalog = open_store(store_url), Catalog(url)  # as the sensor's cached resources
    stages = Stages(store, catalog)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    scan = scan_landing(store, catalog)
    seconds = time.perf_counter() - t
    if prof is not None:
        import pstats

        prof.disable()
        prof.dump_stats(profile)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    catalog.dispose()
    return scan, seconds, stages.seconds


def run_backend(backend: str, args) -> dict:
    import sqlalchemy as sa

    from data_platform.catalog import LANDING, Catalog
    from data_platform.catalog.schema import uploads
    from data_platform.storage import S3ObjectStore

    bucket = f"bench-sensor-{backend}"
    store = S3ObjectStore(bucket)
    store.ensure_bucket()
    with tempfile.TemporaryDirectory(prefix="bench-sensor-", dir=DATA_DIR) as tmp, \
            catalog_url(backend, args.pg_admin, Path(tmp)) as url:
        catalog = Catalog(url)
        register_seconds = prefill(catalog, args.uploads)
        keys = put_new_objects(store, args.new)

        profile = str(RESULTS_DIR / f"sensor_{backend}.prof") if args.profile else None
        scan, seconds, stages = tick(f"s3://{bucket}", url, profile)
        log(f"{backend}: first tick {seconds:.2f} s: listed {scan.listed}, registered {scan.registered}, "
            f"pending {sorted(scan.pending)}")
        idle, idle_seconds, idle_stages = tick(f"s3://{bucket}", url)
        log(f"{backend}: idle tick {idle_seconds:.2f} s")

        with catalog.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(uploads)).scalar_one()
            landing = set(conn.execute(sa.select(uploads.c.landing_key).where(uploads.c.state == LANDING)).scalars())
        catalog.dispose()

    checks = {
        "first tick listed the new objects": scan.listed == args.new,
        "first tick registered exactly the new objects": scan.registered == args.new and landing == keys,
        "ledger holds history + new": total == args.uploads + args.new,
        "no invalid keys": scan.invalid_keys == 0,
        "pending = the 4 partitions written to": set(scan.pending) == set(NEW_PARTITIONS),
        "idle tick registered nothing": idle.registered == 0 and set(idle.pending) == set(NEW_PARTITIONS),
    }
    for name, ok in checks.items():
        if not ok:
            log(f"{backend}: CHECK FAILED: {name}")
    return {
        "backend": backend, "uploads_in_ledger": args.uploads, "new_objects": args.new,
        "tick_seconds": seconds, "tick_stages_seconds": stages,
        "idle_tick_seconds": idle_seconds, "idle_tick_stages_seconds": idle_stages,
        "listed": scan.listed, "registered": scan.registered,
        "pending": {f"{t}/{d}": list(v) for (t, d), v in sorted(scan.pending.items())},
        "prefill_register_seconds": register_seconds, "profiled": bool(profile),
        "checks": checks, "ok": all(checks.values()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=100_000, help="uploads pre-filled in the ledger")
    ap.add_argument("--new", type=int, default=1000, help="new objects put into landing before the tick")
    ap.add_argument("--backends", default="postgresql,sqlite", help="comma-separated: postgresql, sqlite")
    ap.add_argument("--pg-admin", default=os.environ.get("BENCH_PG_ADMIN",
                                                          "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="DSN of a database to run CREATE/DROP DATABASE from")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the first tick (slows it down); stats to benchmarks/results/sensor_*.prof")
    ap.add_argument("--out", default=str(RESULTS_DIR / "sensor.json"))
    args = ap.parse_args(argv)
    DATA_DIR.mkdir(parents=True, exist_ok=True)

    moto = MotoSubprocess()
    os.environ.update(moto.env())
    try:
        results = per_backend(args.backends, lambda backend: run_backend(backend, args))
    finally:
        moto.stop()

    targets = []
    for r in results:
        if "tick_seconds" in r:
            targets.append({"target": f"sensor tick < {MAX_TICK_SECONDS:.0f} s ({r['backend']})",
                            "value": r["tick_seconds"], "ok": r["tick_seconds"] < MAX_TICK_SECONDS})
        targets.append({"target": f"checks pass ({r['backend']})",
                        "value": r.get("error") or ", ".join(k for k, v in r["checks"].items() if not v) or "all",
                        "ok": r["ok"]})
    report = {"results": results, "targets": targets, "ok": all(t["ok"] for t in targets),
              "machine": machine_info(), "args": {"uploads": args.uploads, "new": args.new}}

    print(f"\n== Sensor tick: scan_landing, {args.uploads:,} uploads in the ledger, {args.new:,} new objects ==")
    rows = []
    for r in results:
        if "tick_seconds" not in r:
            rows.append([r["backend"], "FAILED", "-", "-", "-", "-", "-", "-"])
            continue
        st = r["tick_stages_seconds"]
        rows.append([r["backend"], r["tick_seconds"], st.get("store.list", 0.0), st.get("known_uploads", 0.0),
                     st.get("register", 0.0), st.get("pending_partitions", 0.0), r["idle_tick_seconds"],
                     f"{args.uploads / r['prefill_register_seconds']:,.0f}"])
    print(table(["catalog", "tick s", "list s", "known_uploads s", "register s", "pending s", "idle tick s",
                 "prefill register/s"], rows))
    if any(r.get("profiled") for r in results):
        print("(profiled: tick times include cProfile overhead)")
    return finish(report, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A backup and a verified restore of a 100,000-upload catalog.

    python benchmarks/bench_backup.py [--uploads 100000] [--audit-per-upload 4] [--backends sqlite,postgresql]

Set-up (not timed), per catalog backend: bench_cleanup.py's catalogue builder (`prefill`:
uploads in every state over 64 tenants x 4 datasets, index runs, tombstones, a building
training set), catalog only, plus `--audit-per-upload` audit rows per upload (the table
that grows without bound). Timed, in a child process of its own (so its peak RSS is the
backup's and restore's alone, imports included): ONE `create_backup` into a local store,
then ONE `restore_backup` of it into a new, empty catalog of the same backend.
Checks: every table's row count in the restored catalog equals the source's.

Targets: backup and restore each under 60 s, peak RSS under 400 MB (memory must not grow
with the audit log: it is paged). Writes benchmarks/results/backup.json; exits 1 if a
target is missed or a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR, REPO, RESULTS_DIR, catalog_url, finish, log, machine_info, own_peak_rss_mb, per_backend, table,
)
from bench_cleanup import prefill  # noqa: E402

MAX_SECONDS = 60.0
MAX_RSS_MB = 400.0


def add_audit(url: str, per_upload: int) -> int:
    """`per_upload` audit rows per upload, written by the database itself."""
    import sqlalchemy as sa

    from data_platform.catalog import Catalog

    catalog = Catalog(url)
    with catalog.engine.begin() as conn:
        for k in range(per_upload):
            conn.execute(sa.text(
                "INSERT INTO audit_log (upload_id, at, actor, from_state, to_state, reason, detail) "
                "SELECT id, updated_at, 'bench', 'landing', state, NULL, :detail FROM uploads"),
                {"detail": json.dumps({"step": k, "why": "a detail of typical length for an audit row"})})
        total = conn.execute(sa.text("SELECT count(*) FROM audit_log")).scalar()
    catalog.dispose()
    return int(total)


def counts(url: str) -> dict:
    import sqlalchemy as sa

    from data_platform.catalog import Catalog, metadata

    catalog = Catalog(url)
    with catalog.engine.connect() as conn:
        out = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() for t in metadata.sorted_tables}
    catalog.dispose()
    return out


def child(source: str, target: str, root: str, out: str) -> None:
    """The timed part, in its own process."""
    sys.path.insert(0, str(REPO))
    from data_platform import backups
    from data_platform.catalog import Catalog
    from data_platform.storage import LocalObjectStore

    store = LocalObjectStore(root)
    catalog = Catalog(source)  # migrated already: opening it is set-up
    rss_before = own_peak_rss_mb()
    t = time.perf_counter()
    doc = backups.create_backup(store, catalog)
    backup_seconds = time.perf_counter() - t
    backup_rss = own_peak_rss_mb()
    t = time.perf_counter()
    restored = backups.restore_backup(store, target, doc["backup_id"])
    restore_seconds = time.perf_counter() - t
    Path(out).write_text(json.dumps({
        "backup_seconds": backup_seconds, "restore_seconds": restore_seconds, "rss_before_mb": rss_before,
        "backup_peak_rss_mb": backup_rss, "peak_rss_mb": own_peak_rss_mb(), "backup_bytes": doc["bytes"],
        "rows": doc["rows"], "backup_tables": {t["name"]: t["rows"] for t in doc["tables"]},
        "restored_tables": restored["tables"],
    }))


def run_backend(backend: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-backup-", dir=DATA_DIR) as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        (tmp / "dst").mkdir()
        with catalog_url(backend, args.pg_admin, tmp / "src") as source, \
                catalog_url(backend, args.pg_admin, tmp / "dst") as target:
            t = time.perf_counter()
            prefill(source, tmp / "objects", args.uploads, objects=False)
            audit = add_audit(source, args.audit_per_upload)
            log(f"{backend}: prefilled {args.uploads:,} uploads, {audit:,} audit rows in "
                f"{time.perf_counter() - t:.1f} s")
            expected = counts(source)
            out = tmp / "child.json"
            proc = subprocess.run([sys.executable, __file__, "--child", source, target, str(tmp / "objects"),
                                   str(out)])
            if proc.returncode != 0:
                raise RuntimeError(f"backup child exited {proc.returncode}")
            measured = json.loads(out.read_text())
            restored = counts(target)
    log(f"{backend}: backup {measured['backup_seconds']:.1f} s, restore {measured['restore_seconds']:.1f} s, "
        f"peak RSS {measured['peak_rss_mb']:.0f} MB, {measured['backup_bytes'] / 1e6:.1f} MB")
    checks = {"backup.json counts are the source's": measured["backup_tables"] == expected,
              "the restored catalog counts are the source's": restored == expected}
    for name, ok in checks.items():
        if not ok:
            log(f"{backend}: CHECK FAILED: {name}")
    return {"backend": backend, "uploads": args.uploads, "audit_rows": expected["audit_log"], **measured,
            "checks": checks, "ok": all(checks.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=100_000)
    ap.add_argument("--audit-per-upload", type=int, default=4)
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    ap.add_argument("--pg-admin", default=os.environ.get("BENCH_PG_ADMIN",
                                                          "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--out", default=str(RESULTS_DIR / "backup.json"))
    ap.add_argument("--child", nargs=4, metavar=("SOURCE", "TARGET", "ROOT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    results = per_backend(args.backends, lambda backend: run_backend(backend, args))
    targets = []
    for r in results:
        if "backup_seconds" in r:
            for step in ("backup", "restore"):
                targets.append({"target": f"{step} {args.uploads:,} uploads < {MAX_SECONDS:.0f} s ({r['backend']})",
                                "value": r[f"{step}_seconds"], "ok": r[f"{step}_seconds"] < MAX_SECONDS})
            targets.append({"target": f"peak RSS < {MAX_RSS_MB:.0f} MB ({r['backend']})", "value": r["peak_rss_mb"],
                            "ok": r["peak_rss_mb"] < MAX_RSS_MB})
        targets.append({"target": f"checks pass ({r['backend']})",
                        "value": r.get("error") or ", ".join(k for k, v in r["checks"].items() if not v) or "all",
                        "ok": r["ok"]})
    report = {"results": results, "targets": targets, "ok": all(t["ok"] for t in targets),
              "machine": machine_info(), "args": {"uploads": args.uploads, "audit_per_upload": args.audit_per_upload}}
    print(f"\n== Backup and restore: {args.uploads:,} uploads ==")
    print(table(["catalog", "rows", "backup s", "restore s", "backup MB", "peak RSS MB"],
                [[r["backend"], r["rows"], r["backup_seconds"], r["restore_seconds"], r["backup_bytes"] / 1e6,
                  r["peak_rss_mb"]] if "backup_seconds" in r else [r["backend"], "FAILED", "-", "-", "-", "-"]
                 for r in results]))
    return finish(report, targets, args.out)


if __name__ == "__main__":
    sys.exit(main())

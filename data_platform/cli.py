"""`data-platform`: the command line for people and scripts.

Every command takes `--json` (one JSON document on stdout, nothing else) and exits
non-zero with a one-line error on stderr when it fails.
"""

import argparse
import json
import os
import secrets
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from data_platform import layout
from data_platform.catalog import STATES, Catalog, Identity
from data_platform.config import Settings
from data_platform.reporting import dataset_findings
from data_platform.storage import open_store


class CliError(Exception):
    pass


def _settings() -> Settings:
    return Settings.from_env()


def _files(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, path below the batch prefix): a directory uploads its tree."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += [(f, f.relative_to(path).as_posix()) for f in sorted(path.rglob("*")) if f.is_file()]
        elif path.is_file():
            out.append((path, path.name))
        else:
            raise CliError(f"no such file or directory: {raw}")
    if not out:
        raise CliError("nothing to upload")
    return out


def cmd_upload(args) -> dict:
    for kind, name in (("tenant", args.tenant), ("dataset", args.dataset)):
        if not layout.is_valid_name(name):
            raise CliError(f"invalid {kind} {name!r}: must match {layout.NAME_PATTERN.pattern}")
    files = _files(args.paths)
    # One prefix per invocation: an upload never overwrites one still waiting in landing.
    batch = args.batch or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    keys = []
    for _, rel in files:
        key = f"{layout.landing_prefix(args.tenant, args.dataset)}{batch}/{rel}"
        try:
            layout.LandingKey.parse(key)
        except layout.InvalidKey as err:
            raise CliError(f"{rel}: {err}") from err
        keys.append(key)
    store = open_store(_settings().storage_url)
    total = sum(f.stat().st_size for f, _ in files)
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="upload", file=sys.stderr)
    catalog = Catalog(_settings().catalog_url)
    try:
        for (path, _), key in zip(files, keys):
            store.upload_file(path, key, progress=bar.update if bar else None)
            # Registered at once, so `status` shows it in landing before the sensor's
            # next tick (which finds the same identity and adds nothing).
            info = store.head(key)
            if info is not None:
                catalog.register([(Identity(key, info.etag, info.size, info.last_modified), args.tenant,
                                   args.dataset)], actor="cli")
    finally:
        if bar:
            bar.close()
    return {"uploaded": [{"path": str(p), "key": k, "size": p.stat().st_size} for (p, _), k in zip(files, keys)],
            "bytes": total, "storage_url": store.url}


def cmd_status(args) -> list[dict]:
    if args.state and args.state not in STATES:
        raise CliError(f"unknown state {args.state!r}: one of {', '.join(STATES)}")
    catalog = Catalog(_settings().catalog_url)
    return [u.as_status() for u in catalog.list_uploads(tenant=args.tenant, dataset=args.dataset, state=args.state)]


def cmd_stats(args) -> dict:
    catalog = Catalog(_settings().catalog_url)
    groups = catalog.stats()
    measures = ("uploads", "bytes", "rows", "quarantined_rows")

    def rollup(key_fn):
        out: dict = defaultdict(lambda: dict.fromkeys(measures, 0))
        for g in groups:
            for m in measures:
                out[key_fn(g)][m] += g[m]
        return dict(out)

    by_tenant = defaultdict(dict)
    for (tenant, state), v in rollup(lambda g: (g["tenant"], g["state"])).items():
        by_tenant[tenant or "_invalid"][state] = v
    by_dataset = defaultdict(dict)
    for (tenant, dataset, state), v in rollup(lambda g: (g["tenant"], g["dataset"], g["state"])).items():
        by_dataset[f"{tenant or '_invalid'}/{dataset or '_invalid'}"][state] = v
    return {
        "totals": rollup(lambda g: "all")["all"] if groups else dict.fromkeys(measures, 0),
        "by_state": rollup(lambda g: g["state"]),
        "by_tenant": dict(by_tenant),
        "by_dataset": dict(by_dataset),
        # Quality, duplicates and personal data found by refinement, over ingested uploads.
        "findings_by_dataset": dataset_findings(catalog),
        "generated_at": datetime.now(UTC).isoformat(),
    }


def _print_human(command: str, result) -> None:
    if command == "upload":
        for item in result["uploaded"]:
            print(f"{item['path']} -> {result['storage_url']}/{item['key']}")
    elif command == "status":
        print(f"{'id':>6}  {'state':<11} {'rows':>9} {'bad':>6}  {'reason':<22} key")
        for e in result:
            print(f"{e['upload_id']:>6}  {e['state']:<11} {e['rows'] or 0:>9} {e['quarantined_rows'] or 0:>6}  "
                  f"{e['reason'] or '':<22} {e['key']}")
    elif command == "stats":
        print(f"{'state':<12} {'uploads':>8} {'bytes':>14} {'rows':>12}")
        for state, v in sorted(result["by_state"].items()):
            print(f"{state:<12} {v['uploads']:>8} {v['bytes']:>14} {v['rows']:>12}")
        if result["findings_by_dataset"]:
            print(f"\n{'dataset':<40} {'quality':>7} {'dup rows':>9} {'near dups':>9} {'rejected':>9}")
        for name, f in result["findings_by_dataset"].items():
            print(f"{name:<40} {f['quality']['score']:>7.3f} {sum(f['duplicate_rows_removed'].values()):>9} "
                  f"{sum(f['near_duplicates'].values()):>9} {sum(f['rows_rejected_by_check'].values()):>9}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data-platform", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upload", help="put files into landing/{tenant}/{dataset}/")
    up.add_argument("paths", nargs="+", metavar="PATH")
    up.add_argument("--tenant", required=True)
    up.add_argument("--dataset", required=True)
    up.add_argument("--batch", help="folder below the dataset (default: UTC time + random suffix)")

    st = sub.add_parser("status", help="one entry per upload")
    st.add_argument("--tenant")
    st.add_argument("--dataset")
    st.add_argument("--state", help=f"one of {', '.join(STATES)}")

    sub.add_parser("stats", help="uploads, bytes and rows per state, tenant and dataset")
    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


COMMANDS = {"upload": cmd_upload, "status": cmd_status, "stats": cmd_stats}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except CliError as err:
        print(f"data-platform {args.command}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line for scripts; DATA_PLATFORM_DEBUG for the trace
        if os.environ.get("DATA_PLATFORM_DEBUG"):
            raise
        print(f"data-platform {args.command}: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        return 1
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_human(args.command, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`data-platform`: the command line for people and scripts.

Every command takes `--json` (one JSON document on stdout, nothing else) and exits
non-zero with a one-line error on stderr when it fails.
"""

import argparse
import getpass
import json
import os
import secrets
import signal
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from data_platform import backups, erasure, exports, integrity, layout
from data_platform import retention
from data_platform import training_sets as tsets
from data_platform import features as fs
from data_platform.catalog import STATES, Catalog, Identity, NoFreshData
from data_platform.config import Settings
from data_platform.contracts import ContractRegistry
from data_platform.reporting import dataset_findings, growth, quality_distribution
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


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def _check_state(state: str | None) -> None:
    if state and state not in STATES:
        raise CliError(f"unknown state {state!r}: one of {', '.join(STATES)}")


def cmd_status(args) -> list[dict]:
    _check_state(args.state)
    catalog = Catalog(_settings().catalog_url)
    found = catalog.list_uploads(tenant=args.tenant, dataset=args.dataset, state=args.state)
    # Usage lineage: which training sets used each file, when, by which run and consumer.
    lineage = catalog.usage_lineage([u.id for u in found if u.uses]) if any(u.uses for u in found) else {}
    # A deleted upload's tombstone: who deleted its bytes, when, why, and what they were.
    tombs = ({t["upload_id"]: t for t in catalog.tombstones(args.tenant)}
             if any(u.state == "deleted" for u in found) else {})
    # A duplicate's data is its first copy's, wherever retention has moved that since.
    firsts = {u.id: u for u in found}
    for first_id in {u.duplicate_of for u in found if u.duplicate_of} - set(firsts):
        firsts[first_id] = catalog.get(first_id)
    out = []
    for u in found:
        entry = {**u.as_status(), "used_by": lineage.get(u.id, []), "tombstone": _tombstone(tombs.get(u.id))}
        if u.duplicate_of and firsts.get(u.duplicate_of):
            entry["object_key"] = firsts[u.duplicate_of].object_key
        out.append(entry)
    return out


def _tombstone(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {"deleted_at": _iso(row["deleted_at"]), "deleted_by": row["deleted_by"], "reason": row["reason"],
            "from_state": row["from_state"], "sha256": row["sha256"], "object_key": row["object_key"],
            "size": row["size"], "rows": row["rows"]}


def cmd_list(args) -> list[dict]:
    """The data files in one state: where each is, its size, rows, quality and uses."""
    _check_state(args.state)
    catalog = Catalog(_settings().catalog_url)
    return [
        {"upload_id": u.id, "tenant": u.tenant, "dataset": u.dataset, "state": u.state, "object_key": u.object_key,
         "key": u.landing_key, "sha256": u.sha256, "size": u.size, "rows": u.rows, "quality": u.quality,
         "uses": u.uses, "ingested_at": _iso(u.ingested_at), "state_since": _iso(u.state_since)}
        for u in catalog.list_uploads(tenant=args.tenant, dataset=args.dataset, state=args.state)
    ]


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


def cmd_training_set(args) -> dict | list:
    settings = _settings()
    catalog = Catalog(settings.catalog_url)
    if args.action == "list":
        return [ts.as_dict() for ts in catalog.training_sets(tenant=args.tenant, name=args.name)]
    if args.action == "use":
        ts = _find_training_set(catalog, args.tenant, args.name, args.version)
        files = catalog.record_read(ts.id, consumer=args.consumer, run_id=args.run_id)
        return {"training_set": ts.as_dict(), "consumer": args.consumer, "run_id": args.run_id, "files": files}
    try:
        request = tsets.TrainingSetRequest(
            tenant=args.tenant, name=args.name or tsets.DEFAULT_NAME, datasets=tuple(args.dataset or ()),
            min_quality=args.min_quality, max_rows=args.max_rows, consumer=args.consumer,
            sample_rows=args.sample_rows)
        result = tsets.create_training_set(open_store(settings.storage_url), catalog, request, actor=_actor(),
                                           run_id=args.run_id)
    except (NoFreshData, tsets.TrainingSetError) as err:
        raise CliError(str(err)) from None
    return {"training_set": result.training_set.as_dict(), "manifest": result.manifest,
            "resumed": [ts.as_dict() for ts in result.resumed]}


def _find_training_set(catalog: Catalog, tenant: str, name: str | None, version: int | None):
    if version is not None and name is None:
        raise CliError("--version needs --name")
    if version is None:
        found = tsets.latest_training_set(catalog, tenant, name)
    else:
        found = next((ts for ts in catalog.training_sets(tenant=tenant, name=name) if ts.version == version), None)
    if found is None:
        what = f"{name}/v{version}" if version is not None else (name or "any name")
        raise CliError(f"no complete training set for tenant {tenant!r} ({what})")
    return found


def cmd_training_path(args) -> dict:
    """The snapshot a trainer should read next: the newest complete one."""
    settings = _settings()
    ts = _find_training_set(Catalog(settings.catalog_url), args.tenant, args.name, None)
    store = open_store(settings.storage_url)
    manifest = tsets.read_manifest(store, ts)
    return {"tenant": ts.tenant, "name": ts.name, "version": ts.version, "url": f"{store.url}/{ts.prefix}",
            "prefix": ts.prefix, "manifest_key": f"{ts.prefix}manifest.json", "rows": ts.rows,
            "sample": ts.sample, "completed_at": _iso(ts.completed_at),
            "parts": [p["key"] for p in manifest["parts"]]}


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
        "quality_distribution": quality_distribution(catalog),
        "growth": growth(catalog),
        "training_sets": _training_set_counts(catalog),
        "generated_at": datetime.now(UTC).isoformat(),
    }


def _training_set_counts(catalog: Catalog) -> dict:
    out: dict = defaultdict(lambda: {"sets": 0, "rows": 0, "bytes": 0})
    for ts in catalog.training_sets():
        entry = out[f"{ts.tenant}/{ts.state}"]
        entry["sets"] += 1
        entry["rows"] += ts.rows or 0
        entry["bytes"] += ts.bytes or 0
    return dict(out)


def cmd_cleanup(args) -> dict:
    """One retention pass (or, with --dry-run, what it would do)."""
    if args.tenant and not layout.is_valid_name(args.tenant):
        raise CliError(f"invalid tenant {args.tenant!r}: must match {layout.NAME_PATTERN.pattern}")
    try:
        now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    except ValueError as err:
        raise CliError(f"--now: {err}") from err
    settings = _settings()
    store, catalog = open_store(settings.storage_url), Catalog(settings.catalog_url)
    plan = retention.plan_cleanup(catalog, store, ContractRegistry.from_env(store), now=now, tenant=args.tenant)
    if args.dry_run:
        return plan.as_dict(dry_run=True)
    result = retention.apply_cleanup(plan, catalog, store, actor=f"cli:{getpass.getuser()}")
    return plan.as_dict(dry_run=False, result=result)


def cmd_export(args) -> dict:
    """One tenant's ISO week exported by hand (the weekly schedule does the same)."""
    settings = _settings()
    store = open_store(settings.storage_url)
    tenant_settings = ContractRegistry.from_env(store).tenant_settings(args.tenant)
    if not tenant_settings.export_enabled:
        raise CliError(f"exports are disabled for tenant {args.tenant!r} ({tenant_settings.source})")
    try:
        result = exports.export_week(store, Catalog(settings.catalog_url), args.tenant, args.week,
                                     fmt=args.format or tenant_settings.export_format, run_id=args.run_id,
                                     settings_source=tenant_settings.source)
    except exports.ExportError as err:
        raise CliError(str(err)) from None
    return {**result.summary(), "url": f"{store.url}/{result.manifest_key}", "manifest": result.manifest}


def cmd_verify_export(args) -> dict:
    """Every part of a week's export re-read against its manifest; `ok` false (exit 1) on any problem."""
    try:
        report = exports.verify_export(open_store(_settings().storage_url), args.path)
    except exports.ExportError as err:
        raise CliError(str(err)) from None
    if not report["ok"]:
        report["error"] = f"{len(report['problems'])} problem(s) in {report['manifest_key']}: {report['problems'][0]}"
    return report


def cmd_forget(args) -> dict:
    """Erase one data subject from every object of a tenant; the receipt (or, with
    --dry-run, what would change)."""
    if (args.subject is None) == (args.subject_file is None):
        raise CliError("give the subject with --subject VALUE or --subject-file PATH ('-': stdin)")
    if args.subject_file is not None:  # keeps the value out of shell history and the process list
        value = sys.stdin.read() if args.subject_file == "-" else Path(args.subject_file).read_text(encoding="utf-8")
    else:
        value = args.subject
    from data_platform.privacy import load_pseudonym_key

    settings = _settings()
    try:
        subject = erasure.Subject(load_pseudonym_key(settings), args.tenant, value,
                                  kinds=[args.kind] if args.kind else None, column=args.column)
        return erasure.forget(open_store(settings.storage_url), Catalog(settings.catalog_url), subject,
                              client_id=args.request_id, dry_run=args.dry_run, actor=_actor())
    except (erasure.ErasureError, layout.InvalidKey) as err:
        raise CliError(str(err)) from None


def cmd_backup(args) -> dict:
    """A backup of the catalog and every manifest, then pruning by DATA_PLATFORM_BACKUP_KEEP."""
    settings = _settings()
    store = open_store(settings.storage_url)
    try:
        doc = backups.create_backup(store, Catalog(settings.catalog_url))
        pruned = None if args.no_prune else backups.prune_backups(store)
    except backups.BackupError as err:
        raise CliError(str(err)) from None
    return {"backup_id": doc["backup_id"], "url": f"{store.url}/{doc['prefix']}", "schema_revision":
            doc["schema_revision"], "rows": doc["rows"], "bytes": doc["bytes"],
            "tables": {t["name"]: t["rows"] for t in doc["tables"]}, "manifests": len(doc["manifests"]),
            "missing_manifests": doc["missing_manifests"], "pruned": pruned}


def cmd_restore(args) -> dict:
    """A backup restored into the (empty) catalog of DATA_PLATFORM_CATALOG_URL."""
    settings = _settings()
    try:
        return backups.restore_backup(open_store(settings.storage_url), settings.catalog_url, args.backup_id,
                                      force=args.force, restore_manifests=args.restore_manifests)
    except backups.BackupError as err:
        raise CliError(str(err)) from None


def cmd_backups(args) -> list[dict]:
    try:
        return backups.list_backups(open_store(_settings().storage_url))
    except backups.BackupError as err:
        raise CliError(str(err)) from None


def cmd_verify(args) -> dict:
    """The store against the catalog; `ok` false (exit 1) on anything missing, changed or orphaned."""
    if args.tenant and not layout.is_valid_name(args.tenant):
        raise CliError(f"invalid tenant {args.tenant!r}: must match {layout.NAME_PATTERN.pattern}")
    settings = _settings()
    return integrity.verify(open_store(settings.storage_url), Catalog(settings.catalog_url), tenant=args.tenant,
                            record=args.record).as_dict()


def _print_cleanup(result: dict) -> None:
    print(f"{'id':>6}  {'from':<11} {'to':<11} {'reason':<21} {'why':<22} object")
    for t in result["transitions"]:
        mark = "" if t.get("applied", True) else "  (not applied)"
        print(f"{t['upload_id']:>6}  {t['from_state']:<11} {t['to_state']:<11} {t['reason']:<21} {t['why']:<22} "
              f"{t['object_key_after'] or t['object_key_before'] or ''}{mark}")
    for o in result["expired_objects"]:
        print(f"{'-':>6}  expired {o['reason']:<26} {o['size'] or 0:>12} B  {o['key']}")
    for p in result["problems"]:
        print(f"left alone: {p['tenant']}/{p['dataset']}: {p['problem']}")
    counts = result["counts"]
    summary = ", ".join(f"{k} {v}" for k, v in counts["transitions"].items()) or "no transitions"
    print(f"{'dry run: ' if result['dry_run'] else ''}{summary}; {sum(counts['expired_objects'].values())} "
          f"expired objects ({counts['expired_bytes']} bytes)")


def cmd_features(args) -> dict | list:
    """The feature store: register a definition, list, show, and point-in-time `get`."""
    settings = _settings()
    catalog = Catalog(settings.catalog_url)
    try:
        layout.check_name("tenant", args.tenant)
        if args.action == "register":
            return fs.register_feature_table(catalog, args.tenant, fs.load_spec(args.file), actor=_actor(),
                                             source=args.file).as_dict()
        if args.action == "list":
            versions = fs.list_versions(catalog, args.tenant)
            out = []
            for record in catalog.feature_definitions(args.tenant):
                mine = [v for v in versions if v.name == record.name]
                latest = next((v for v in reversed(mine) if v.state == "complete"), None)
                out.append({"name": record.name, "revision": record.revision, "owner": record.owner,
                            "description": record.description, "source": record.definition["source"],
                            "entities": [c["name"] for c in record.definition["entities"]],
                            "features": [c["name"] for c in record.definition["features"]],
                            "ttl_seconds": record.definition["ttl_seconds"], "versions": len(mine),
                            "latest_version": latest.as_dict() if latest else None})
            return out
        if args.action == "show":
            if args.version is None:
                record, _ = fs.get_definition(catalog, args.tenant, args.name)
                return {"name": record.name, "revision": record.revision, "definition": record.definition,
                        "definition_sha256": record.definition_sha256, "registered_by": record.created_by,
                        "registered_at": _iso(record.created_at),
                        "versions": [v.as_dict() for v in fs.list_versions(catalog, args.tenant, args.name)]}
            version = fs.get_version(catalog, args.tenant, args.name, args.version)
            record, _ = fs.get_definition(catalog, args.tenant, args.name, revision=version.revision)
            manifest = fs.read_manifest(open_store(settings.storage_url), catalog, version)
            return {**version.as_dict(), "definition": record.definition, "parts": manifest["parts"],
                    "sources": manifest["sources"]}
        return _features_get(args, settings, catalog)
    except (fs.FeatureError, fs.FeatureNotFound, layout.InvalidKey) as err:
        raise CliError(str(err)) from None


def _features_get(args, settings, catalog: Catalog) -> dict:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(args.entities)
    if not path.is_file():
        raise CliError(f"no such file: {args.entities}")
    entities = pq.read_table(path) if path.suffix in (".parquet", ".pq") else pacsv.read_csv(path)
    wanted = [f"{args.name}:{f.strip()}" for f in args.features.split(",")] if args.features else args.name
    version = args.version if args.version is not None else fs.get_version(catalog, args.tenant, args.name).version
    result = fs.get_historical_features(open_store(settings.storage_url), catalog, args.tenant, entities, wanted,
                                        version=version, ttl=args.ttl, event_timestamp_column=args.timestamp_column)
    added = result.column_names[entities.num_columns:]
    out = {"tenant": args.tenant, "name": args.name, "version": version, "rows": result.num_rows,
           "columns": result.column_names,
           "matched": {c: result.num_rows - result.column(c).null_count for c in added}}
    if args.out:
        pq.write_table(result, args.out, compression="zstd")
        return {**out, "out": str(Path(args.out).resolve())}
    return {**out, "records": result.to_pylist()}


def _print_human(command: str, result) -> None:
    if command == "upload":
        for item in result["uploaded"]:
            print(f"{item['path']} -> {result['storage_url']}/{item['key']}")
    elif command == "status":
        print(f"{'id':>6}  {'state':<11} {'rows':>9} {'bad':>6}  {'reason':<22} key")
        for e in result:
            print(f"{e['upload_id']:>6}  {e['state']:<11} {e['rows'] or 0:>9} {e['quarantined_rows'] or 0:>6}  "
                  f"{e['reason'] or '':<22} {e['key']}")
    elif command == "list":
        print(f"{'id':>6}  {'state':<10} {'rows':>9} {'quality':>7} {'uses':>4}  object")
        for e in result:
            quality = f"{e['quality']:.3f}" if e["quality"] is not None else ""
            print(f"{e['upload_id']:>6}  {e['state']:<10} {e['rows'] or 0:>9} {quality:>7} {e['uses']:>4}  "
                  f"{e['object_key'] or ''}")
    elif command == "training-set":
        sets = result if isinstance(result, list) else [result["training_set"]]
        for ts in sets:
            print(f"{ts['tenant']}/{ts['name']} v{ts['version']}  {ts['state']:<9} {ts['files']:>5} files "
                  f"{ts['rows'] or 0:>10} rows  {ts['prefix']}")
    elif command == "training-path":
        print(result["url"])
    elif command == "export":
        print(f"{result['tenant']} {result['week']}: {result['rows']} rows in {result['parts']} {result['format']} "
              f"part(s) from {result['files']} file(s) -> {result['url']}")
    elif command == "verify-export":
        print(f"{result['manifest_key']}: {result['parts_checked']} part(s) checked, "
              f"{'ok' if result['ok'] else str(len(result['problems'])) + ' problem(s)'}")
        for problem in result["problems"]:
            print(f"  {problem}")
    elif command == "cleanup":
        _print_cleanup(result)
    elif command in ("backup", "restore"):
        print(f"{command} {result['backup_id']}: {result['rows']} rows in {len(result['tables'])} tables")
    elif command == "backups":
        for b in result:
            print(f"{b['backup_id']}  {'complete' if b['complete'] else 'incomplete':<10} {b.get('rows', '-'):>10} "
                  f"rows {b['bytes']:>12} B")
    elif command == "verify":
        print(f"{result['objects_checked']} objects checked ({result['hashed']} hashed), "
              + ", ".join(f"{n} {k}" for k, n in result["counts"].items()))
        for kind in integrity.KINDS:
            for f in result[kind]:
                print(f"  {kind:<8} {f['what']:<22} {f['key']}")
    elif command == "forget":
        c = result["counts"]
        print(f"{'dry run ' if result['dry_run'] else ''}{result['request_id']}: {c['uploads']} upload(s), "
              f"{c['objects_rewritten']} object(s) rewritten, {c['objects_deleted']} deleted, "
              f"{c['data_rows_erased']} data row(s) erased, {c['not_rewritten']} not rewritten")
        for e in result["rewritten"] + result["deleted"] + result["not_rewritten"]:
            print(f"  {e['what']:<26} {e['key']}")
    elif command == "features":
        if isinstance(result, list):
            for t in result:
                latest = t["latest_version"]
                print(f"{t['name']:<32} r{t['revision']:<3} {t['versions']:>3} versions  latest "
                      f"{'v' + str(latest['version']) + ' ' + str(latest['rows']) + ' rows' if latest else '-'}")
        elif "records" in result or "out" in result:
            print(f"{result['rows']} rows, matched {result['matched']}" + (f" -> {result['out']}" if "out" in result else ""))
        else:
            print(json.dumps(result, indent=2, default=str))
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

    ls = sub.add_parser("list", help="data files in one state (fresh, used, archived, ...)")
    ls.add_argument("--state", required=True, help=f"one of {', '.join(STATES)}")
    ls.add_argument("--tenant")
    ls.add_argument("--dataset")

    ts = sub.add_parser("training-set", help="create, list or record the use of training sets")
    ts_sub = ts.add_subparsers(dest="action", required=True)
    create = ts_sub.add_parser("create", help="snapshot fresh data and mark it used")
    create.add_argument("--tenant", required=True)
    create.add_argument("--dataset", action="append", help="repeat for several (default: all datasets)")
    create.add_argument("--min-quality", type=float)
    create.add_argument("--max-rows", type=int)
    create.add_argument("--name", help=f"default: {tsets.DEFAULT_NAME}")
    create.add_argument("--consumer", help="who the set is for, recorded in the lineage (default: you)")
    create.add_argument("--sample-rows", type=int,
                        help="with no fresh data, sample this many rows of used data instead of failing")
    create.add_argument("--run-id")
    use = ts_sub.add_parser("use", help="record that a consumer read a training set (one more use of its files)")
    use.add_argument("--tenant", required=True)
    use.add_argument("--name")
    use.add_argument("--version", type=int, help="default: the newest complete one")
    use.add_argument("--consumer", required=True)
    use.add_argument("--run-id")
    lst = ts_sub.add_parser("list", help="the tenant's training sets")
    lst.add_argument("--tenant")
    lst.add_argument("--name")
    for p in ts_sub.choices.values():
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")

    tp = sub.add_parser("training-path", help="the snapshot a trainer should read next")
    tp.add_argument("--tenant", required=True)
    tp.add_argument("--name")
    cl = sub.add_parser("cleanup", help="archive, deprecate and delete per the retention policy; expire leftovers")
    cl.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    cl.add_argument("--tenant", help="only this tenant (platform-wide leftovers are left to a full pass)")
    cl.add_argument("--now", help="plan as of this ISO time instead of now (e.g. a dry run of next month)")
    ex = sub.add_parser("export", help="export a tenant's ISO week to exports/{tenant}/{week}/ (replaces it)")
    ex.add_argument("--tenant", required=True)
    ex.add_argument("--week", required=True, help="ISO week, e.g. 2026-W47 (UTC, Monday to Monday)")
    ex.add_argument("--format", choices=exports.EXPORT_FORMATS, help="default: the tenant's _tenant.yaml, else parquet")
    ex.add_argument("--run-id")
    ve = sub.add_parser("verify-export", help="re-hash a week's export against its manifest (exit 1 on a problem)")
    ve.add_argument("path", metavar="PATH", help="exports/{tenant}/{week}/, its manifest key, or a URL below the store")
    fe = sub.add_parser("features", help="feature tables: register, list, show, get (point in time)")
    fe_sub = fe.add_subparsers(dest="action", required=True)
    reg = fe_sub.add_parser("register", help="register a definition (YAML or JSON); unchanged: nothing new")
    reg.add_argument("--tenant", required=True)
    reg.add_argument("--file", required=True, help="definition.yaml or definition.json")
    fl = fe_sub.add_parser("list", help="the tenant's feature tables with their latest version")
    fl.add_argument("--tenant", required=True)
    fsh = fe_sub.add_parser("show", help="a feature table's definition and versions, or one version")
    fsh.add_argument("--tenant", required=True)
    fsh.add_argument("--name", required=True)
    fsh.add_argument("--version", type=int)
    fg = fe_sub.add_parser("get", help="feature values as of each entity row's timestamp")
    fg.add_argument("--tenant", required=True)
    fg.add_argument("--name", required=True)
    fg.add_argument("--entities", required=True, help="entity keys + a timestamp column: .parquet or .csv")
    fg.add_argument("--version", type=int, help="default: the latest complete version")
    fg.add_argument("--features", help="comma-separated feature names (default: all)")
    fg.add_argument("--ttl", help="override the definition's TTL: 7d, 12h, 30m, 45s or seconds")
    fg.add_argument("--timestamp-column", default="event_timestamp", help="the entity rows' time (default: %(default)s)")
    fg.add_argument("--out", help="write the result as Parquet here instead of listing the rows")
    for p in fe_sub.choices.values():
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    bk = sub.add_parser("backup", help="back up the catalog and every manifest to _platform/backups/, then prune")
    bk.add_argument("--no-prune", action="store_true", help="keep every earlier backup this time")
    rs = sub.add_parser("restore", help="restore a backup into an empty catalog (DATA_PLATFORM_CATALOG_URL)")
    rs.add_argument("backup_id", metavar="BACKUP_ID", help="a backup id, or latest")
    rs.add_argument("--force", action="store_true", help="drop everything in the catalog first")
    rs.add_argument("--restore-manifests", action="store_true",
                    help="also put back manifests missing from the store from the backup's copies")
    sub.add_parser("backups", help="the backups in the store, newest first")
    vf = sub.add_parser("verify", help="compare every catalogued object with the store (exit 1 on a finding)")
    vf.add_argument("--tenant", help="only this tenant's objects (backups are checked by a full pass)")
    vf.add_argument("--record", action="store_true",
                    help="hash data objects with no recorded checksum and record it (trust on first verify)")
    fg = sub.add_parser("forget", help="erase a data subject from every object of a tenant, with a receipt")
    fg.add_argument("--tenant", required=True)
    fg.add_argument("--subject", help="the raw value (an email, phone number, IP address or name)")
    fg.add_argument("--subject-file", help="read the raw value from this file instead ('-': stdin)")
    fg.add_argument("--kind", choices=erasure.KINDS, help="only columns of this kind (default: every kind)")
    fg.add_argument("--column", help="only this column")
    fg.add_argument("--request-id", help="your id for the request: the same id again returns the same receipt "
                    "(default: one request per subject and UTC day)")
    fg.add_argument("--dry-run", action="store_true", help="list what would change; change nothing")
    for name, p in sub.choices.items():
        if name not in ("training-set", "features"):  # their actions take --json themselves
            p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


COMMANDS = {"upload": cmd_upload, "status": cmd_status, "stats": cmd_stats, "list": cmd_list,
            "training-set": cmd_training_set, "training-path": cmd_training_path, "cleanup": cmd_cleanup,
            "export": cmd_export, "verify-export": cmd_verify_export,
            "features": cmd_features, "backup": cmd_backup, "restore": cmd_restore, "backups": cmd_backups,
            "verify": cmd_verify, "forget": cmd_forget}

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool SIGPIPE killed


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
    try:
        if args.json:
            json.dump(result, sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")
        else:
            _print_human(args.command, result)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): the command's work is done, and Python would
        # print a traceback now and another at exit. Exit as a tool killed by SIGPIPE
        # does in a shell, saying nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    if isinstance(result, dict) and result.get("ok") is False and result.get("error"):
        # A check that found problems: the report is printed, and the exit code says so.
        print(f"data-platform {args.command}: {result['error']}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The integrity check: every object the catalog (or a manifest it trusts) names is
compared with the store, and objects nothing names are found. Plain Python, no Dagster.

What is compared, per object (`what` in a finding):

  data                   data/ and archive/ Parquet of ingested uploads: sha256 and size against
                         uploads.data_sha256/data_size; where those are still null, existence
                         only, and `record=True` hashes the object and records them (trust on
                         first verify: whatever the bytes are then becomes the reference)
  quarantine_original    a quarantined upload's original bytes: uploads.sha256 (of the landing
                         bytes, which quarantine copies as they are) and uploads.size
  index_run              registered runs under _platform/indexes/: existence
  training_set_manifest  manifest.json of a complete training set: training_sets.manifest_sha256
  training_set_part      each part its manifest lists: sha256 and bytes, under the set's prefix
  feature_manifest       manifest.json of a complete feature version: feature_versions.manifest_sha256
  feature_part           as training-set parts
  export_manifest        exports/{t}/{week}/manifest.json: its parts must lie under its export_id
  export_part            as training-set parts
  backup_object          the objects a complete backup's backup.json lists: existence and size

A finding is `missing` (not in the store), `changed` (size or sha256 differ) or
`orphaned`: under the platform's prefixes and named by nothing. For data/, archive/,
quarantine/ and _platform/indexes/ the orphans are exactly the objects a cleanup pass
would expire (`retention.unreferenced_objects`, same rules, its reason as `what`); under
training_sets/, features/, exports/ and _platform/backups/ this module adds the objects
no complete set, version, week manifest or complete backup names. Like cleanup, an
object counts as an orphan only once older than DATA_PLATFORM_TEMP_OBJECT_HOURS (an
ingestion writes its objects before the commit that names them); younger ones are only
counted. Objects of builds still running (training sets `building`) are left alone.

Cost: one streamed GET per object with a checksum (a bounded thread pool), one listing
per prefix for the objects checked for existence only, and the listings of the orphan
sweep. A `missing` object is checked against a fresh read of the catalog before it is
reported, so a file that retention archived or deleted during the pass is not reported.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from data_platform import layout, retention
from data_platform.backups import BACKUP_FILE, BACKUP_ID, BACKUPS, INCOMPLETE_AFTER, backup_time
from data_platform.backups import export_manifest_keys, read_object
from data_platform.catalog import BUILDING, COMPLETE, INGESTED, QUARANTINED, Catalog
from data_platform.contracts import NEVER
from data_platform.storage import ObjectChanged, ObjectInfo, ObjectStore

MISSING, CHANGED, ORPHANED = "missing", "changed", "orphaned"
KINDS = (MISSING, CHANGED, ORPHANED)

DATA = "data"
QUARANTINE_ORIGINAL = "quarantine_original"
INDEX_RUN = "index_run"
TRAINING_SET_MANIFEST, TRAINING_SET_PART = "training_set_manifest", "training_set_part"
FEATURE_MANIFEST, FEATURE_PART = "feature_manifest", "feature_part"
EXPORT_MANIFEST, EXPORT_PART = "export_manifest", "export_part"
BACKUP_OBJECT = "backup_object"

CHUNK = 8 * 1024 * 1024
WORKERS = 8  # parallel GETs: S3 latency, not bandwidth, bounds a single stream


@dataclass(frozen=True)
class Expected:
    """One object the catalog or a trusted manifest names, and what it should be."""
    key: str
    what: str
    sha256: str | None = None  # None: existence (and size, if known) only
    size: int | None = None
    upload_id: int | None = None


@dataclass(frozen=True)
class Finding:
    kind: str  # missing | changed | orphaned
    what: str
    key: str
    expected: dict | None
    actual: dict | None
    detail: str | None = None
    upload_id: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class IntegrityReport:
    tenant: str | None
    checked_at: datetime
    orphan_min_age_hours: int
    findings: list[Finding] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)  # objects compared, by `what`
    hashed: int = 0
    hashed_bytes: int = 0
    existence_only: int = 0
    recorded: int = 0
    not_yet_orphaned: int = 0  # under training_sets/, features/, exports/, backups: unnamed but young
    errors: list[str] = field(default_factory=list)  # objects that could not be read (not a verdict)

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def ok(self) -> bool:
        return not self.findings and not self.errors

    def counts(self) -> dict:
        return {kind: len(self.of_kind(kind)) for kind in KINDS}

    def as_dict(self) -> dict:
        """The `data-platform verify --json` document."""
        out = {"ok": self.ok, "tenant": self.tenant, "checked_at": self.checked_at.isoformat(),
               "objects_checked": sum(self.checked.values()), "by_what": dict(self.checked),
               "hashed": self.hashed, "hashed_bytes": self.hashed_bytes, "existence_only": self.existence_only,
               "recorded": self.recorded, "counts": self.counts(), "not_yet_orphaned": self.not_yet_orphaned,
               "orphan_min_age_hours": self.orphan_min_age_hours, "errors": self.errors}
        for kind in KINDS:
            out[kind] = [f.as_dict() for f in self.of_kind(kind)]
        if not self.ok:
            shown = ", ".join(f"{n} {k}" for k, n in self.counts().items() if n)
            if self.errors:
                shown = ", ".join(filter(None, [shown, f"{len(self.errors)} unreadable"]))
            first = self.findings[0] if self.findings else None
            out["error"] = f"{shown}" + (f"; first: {first.kind} {first.what} {first.key}" if first else
                                         f"; first: {self.errors[0]}")
        return out


def orphan_min_age_hours() -> int:
    """Cleanup's DATA_PLATFORM_TEMP_OBJECT_HOURS: younger unnamed objects may be a write
    whose commit is still to come. `never` (cleanup keeps leftovers) still reports them
    after the default day."""
    hours = retention.RetentionDefaults.from_env().temp_object_hours
    return 24 if hours == NEVER else int(hours)


def verify(store: ObjectStore, catalog: Catalog, *, tenant: str | None = None, record: bool = False,
           now: datetime | None = None, orphan_min_age: int | None = None,
           workers: int = WORKERS) -> IntegrityReport:
    """Compare the store with the catalog (of one tenant, or all) and find orphans."""
    if tenant is not None:
        layout.check_name("tenant", tenant)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    hours = orphan_min_age_hours() if orphan_min_age is None else orphan_min_age
    report = IntegrityReport(tenant=tenant, checked_at=now, orphan_min_age_hours=hours)
    listings = _Listings(store)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        expected, named, rows = _expectations(store, catalog, tenant, pool, report)
        to_hash = [e for e in expected if e.sha256 is not None or (record and e.what == DATA)]
        by_key = {e.key for e in to_hash}
        for e in expected:
            if e.key not in by_key:
                _check_listed(e, listings, report)
        for e, finding, actual in pool.map(lambda e: _check_hashed(store, e), to_hash):
            report.checked[e.what] += 1
            report.hashed += 1
            if actual is not None:
                report.hashed_bytes += actual["size"]
                if e.sha256 is None and finding is None:  # trust on first verify
                    catalog.record_data_checksum(e.upload_id, actual["sha256"], actual["size"])
                    report.recorded += 1
            if finding is not None:
                if finding.kind is None:
                    report.errors.append(finding.detail)
                else:
                    report.findings.append(finding)
        if report.of_kind(MISSING):
            _drop_no_longer_named(store, catalog, tenant, pool, report)
    _orphans(store, catalog, tenant, now, hours, named, rows, listings, report)
    return report


# -- what should be there ----------------------------------------------------------------------


def _expectations(store: ObjectStore, catalog: Catalog, tenant: str | None, pool: ThreadPoolExecutor,
                  report: IntegrityReport) -> tuple[list[Expected], set[str], dict]:
    """Every expected object, the keys named under the manifest-owned prefixes, and the
    catalog rows read."""
    rows = catalog.integrity_rows(tenant)
    out: list[Expected] = []
    for u in rows["uploads"]:
        if u.state in INGESTED:
            out.append(Expected(u.object_key, DATA, u.data_sha256, u.data_size, u.id))
        elif u.state == QUARANTINED and u.object_key.endswith("/"):
            out.append(Expected(u.object_key + layout.safe_original_name(u.landing_key), QUARANTINE_ORIGINAL,
                                u.sha256, u.size, u.id))
    out += [Expected(r.object_key, INDEX_RUN, upload_id=r.upload_id) for r in rows["index_runs"]]

    manifests = [(f"{r.prefix}manifest.json", TRAINING_SET_MANIFEST, TRAINING_SET_PART, r.prefix, r.manifest_sha256)
                 for r in rows["training_sets"] if r.state == COMPLETE]
    manifests += [(f"{r.prefix}manifest.json", FEATURE_MANIFEST, FEATURE_PART, r.prefix, r.manifest_sha256)
                  for r in rows["feature_versions"] if r.state == COMPLETE]
    manifests += [(key, EXPORT_MANIFEST, EXPORT_PART, key[:-len("manifest.json")], None)
                  for key in export_manifest_keys(store, tenant)]
    named: set[str] = set()
    for manifest_key, what, found, parts in pool.map(lambda m: _read_manifest(store, *m), manifests):
        named.add(manifest_key)
        out += parts
        named.update(p.key for p in parts)
        if found is not None:
            report.findings.append(found)
        report.checked[what] += 1
    if tenant is None:  # backups belong to the platform, not to a tenant
        for e in _backup_objects(store):
            out.append(e)
            named.add(e.key)
    return out, named, rows


def _read_manifest(store: ObjectStore, key: str, what: str, part_what: str, prefix: str,
                   sha256: str | None) -> tuple[str, str, Finding | None, list[Expected]]:
    """One GET: the manifest checked against the catalog's sha256, and its parts."""
    body = read_object(store, key)
    if body is None:
        return key, what, Finding(MISSING, what, key, {"sha256": sha256}, None), []
    actual = hashlib.sha256(body).hexdigest()
    finding = None
    if sha256 is not None and actual != sha256:
        finding = Finding(CHANGED, what, key, {"sha256": sha256}, {"sha256": actual, "size": len(body)},
                          "differs from the sha256 the catalog recorded")
    try:
        manifest = json.loads(body)
        parts = manifest.get("parts") or []
        own = f"{prefix}{manifest['export_id']}/" if what == EXPORT_MANIFEST else prefix
    except (ValueError, KeyError, AttributeError) as err:
        return key, what, finding or Finding(CHANGED, what, key, None, {"sha256": actual, "size": len(body)},
                                       f"not a manifest ({type(err).__name__})"), []
    outside = [p.get("key") for p in parts if not str(p.get("key", "")).startswith(own)]
    if outside and finding is None:  # a manifest never points outside its own prefix
        finding = Finding(CHANGED, what, key, {"parts_under": own}, {"outside": outside[:10]},
                          "lists parts outside its prefix")
    return key, what, finding, [Expected(p["key"], part_what, p.get("sha256"), p.get("bytes")) for p in parts
                          if str(p.get("key", "")).startswith(own)]


def _backup_objects(store: ObjectStore) -> list[Expected]:
    out = []
    markers = [info.key for info in store.list(BACKUPS) if info.key.endswith("/" + BACKUP_FILE)
               and info.key.count("/") == 3]
    for key in markers:
        body = read_object(store, key)
        if body is None:
            continue  # pruned meanwhile
        doc = json.loads(body)
        out.append(Expected(key, BACKUP_OBJECT))
        out += [Expected(t["key"], BACKUP_OBJECT, size=t["bytes"]) for t in doc.get("tables", ())]
        out += [Expected(m["key"], BACKUP_OBJECT, size=m["bytes"]) for m in doc.get("manifests", ())]
    return out


# -- comparing -------------------------------------------------------------------------------------


class _Listings:
    """Each prefix listed once per pass: existence checks and the orphan sweep share them."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._done: dict[str, dict[str, ObjectInfo]] = {}

    def get(self, prefix: str) -> dict[str, ObjectInfo]:
        if prefix not in self._done:
            self._done[prefix] = {i.key: i for i in self.store.list(prefix) if not i.is_folder_marker}
        return self._done[prefix]

    @staticmethod
    def prefix_of(key: str) -> str:
        parts = key.split("/")
        depth = 4 if key.startswith(f"{layout.PLATFORM}/indexes/") else 2
        return "/".join(parts[:depth]) + "/"


def _check_listed(e: Expected, listings: _Listings, report: IntegrityReport) -> None:
    info = listings.get(BACKUPS if e.key.startswith(BACKUPS) else _Listings.prefix_of(e.key)).get(e.key)
    report.checked[e.what] += 1
    report.existence_only += 1
    if info is None:
        report.findings.append(Finding(MISSING, e.what, e.key, _expected(e), None, upload_id=e.upload_id))
    elif e.size is not None and info.size != e.size:
        report.findings.append(Finding(CHANGED, e.what, e.key, _expected(e), {"size": info.size},
                                       "size differs", e.upload_id))


def _check_hashed(store: ObjectStore, e: Expected) -> tuple[Expected, Finding | None, dict | None]:
    """One streamed GET. A finding of kind None is an object that could not be read."""
    digest, size = hashlib.sha256(), 0
    try:
        with store.open_read(e.key) as (_, src):
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except ObjectChanged:
        return e, Finding(MISSING, e.what, e.key, _expected(e), None, upload_id=e.upload_id), None
    except Exception as err:  # noqa: BLE001 - reported; a verdict needs the bytes
        return e, Finding(None, e.what, e.key, None, None, f"{e.key}: {type(err).__name__}: {err}"), None
    actual = {"sha256": digest.hexdigest(), "size": size}
    differs = [k for k in ("sha256", "size") if getattr(e, k) is not None and getattr(e, k) != actual[k]]
    if differs:
        return e, Finding(CHANGED, e.what, e.key, _expected(e), actual, " and ".join(differs) + " differ"
                          if len(differs) > 1 else f"{differs[0]} differs", e.upload_id), actual
    return e, None, actual


def _expected(e: Expected) -> dict:
    return {"sha256": e.sha256, "size": e.size}


def _drop_no_longer_named(store: ObjectStore, catalog: Catalog, tenant: str | None, pool: ThreadPoolExecutor,
                          report: IntegrityReport) -> None:
    """Read the catalog (and manifests) again: an object retention moved or deleted, or an
    export replaced, during the pass is not missing."""
    again = IntegrityReport(tenant=tenant, checked_at=report.checked_at, orphan_min_age_hours=0)
    still = {e.key for e in _expectations(store, catalog, tenant, pool, again)[0]}
    report.findings = [f for f in report.findings if f.kind != MISSING or f.key in still]


# -- orphans -----------------------------------------------------------------------------------------


def _orphans(store: ObjectStore, catalog: Catalog, tenant: str | None, now: datetime, hours: int,
             named: set[str], rows: dict, listings: _Listings, report: IntegrityReport) -> None:
    cutoff = now - timedelta(hours=hours)

    def consider(info: ObjectInfo, what: str, detail: str) -> None:
        if info.last_modified > cutoff:
            report.not_yet_orphaned += 1
        else:
            report.findings.append(Finding(ORPHANED, what, info.key, None,
                                           {"size": info.size, "last_modified": info.last_modified.isoformat()},
                                           detail))

    # data/, archive/, quarantine/, _platform/indexes/, released sets, failed versions:
    # what cleanup would expire, by cleanup's own rules.
    for o in retention.unreferenced_objects(catalog, store, now=now, tenant=tenant, min_age_hours=hours):
        report.findings.append(Finding(ORPHANED, o.reason, o.key, None,
                                       {"size": o.size, "last_modified": o.last_modified.isoformat() + "Z"},
                                       "cleanup expires it", o.upload_id))
    running = {r.prefix for r in rows["training_sets"] if r.state == BUILDING}
    running |= {r.prefix for r in rows["feature_versions"] if r.state == BUILDING}
    left_to_cleanup = {r.prefix for r in rows["training_sets"] if r.state not in (COMPLETE, BUILDING)}
    left_to_cleanup |= {r.prefix for r in rows["feature_versions"] if r.state not in (COMPLETE, BUILDING)}
    known = {r.prefix for r in rows["training_sets"]} | {r.prefix for r in rows["feature_versions"]}
    for top in (layout.TRAINING_SETS, layout.FEATURES, layout.EXPORTS):
        for info in _scoped(listings, top, tenant):
            if info.key in named:
                continue
            prefix = "/".join(info.key.split("/")[:4]) + "/"
            if prefix in running or prefix in left_to_cleanup:
                continue
            if top == layout.EXPORTS:
                consider(info, EXPORT_PART, "not named by its week's manifest")
            else:
                consider(info, TRAINING_SET_PART if top == layout.TRAINING_SETS else FEATURE_PART,
                         "not listed by its manifest" if prefix in known else "under no catalogued prefix")
    if tenant is None:
        for info in listings.get(BACKUPS).values():
            if info.key in named:
                continue
            backup_id = info.key[len(BACKUPS):].split("/", 1)[0]
            if not BACKUP_ID.fullmatch(backup_id):
                consider(info, BACKUP_OBJECT, "not a backup")
            elif now - backup_time(backup_id) > INCOMPLETE_AFTER:  # younger: may still be running
                consider(info, BACKUP_OBJECT, "incomplete backup (no backup.json); pruning removes it")


def _scoped(listings: _Listings, top: str, tenant: str | None) -> Iterable[ObjectInfo]:
    return listings.get(f"{top}/{tenant}/" if tenant else f"{top}/").values()


__all__ = ["verify", "IntegrityReport", "Finding", "Expected", "orphan_min_age_hours", "MISSING", "CHANGED",
           "ORPHANED", "KINDS"]

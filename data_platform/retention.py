"""Retention: which files move on (archived, deprecated, deleted) and why, and doing it
so that a crash at any step leaves each file in exactly one state; plus the expiry of
quarantined uploads and of temporary and orphaned objects. Plain Python, no Dagster.

The policy of a dataset is its contract's `retention` block over the platform defaults
(`RetentionDefaults.from_env`): a key absent from the contract takes the default, an
explicit null (or `never`) means never. With the clock `now` given by the caller:

  fresh/used -> archived    uses >= archive_after_uses, or days since it became fresh
                            (ingested_at) >= archive_after_days; a file already due for
                            deprecation is archived on the way (deprecate_after_days)
  archived -> deprecated    days since ingested_at >= deprecate_after_days
  deprecated -> deleted     days since deprecation (state_since) >= delete_after_days
  quarantined -> deleted    days in quarantine >= quarantine_days (quarantine_expired)

A file may take several steps in one pass (a 200-day-old fresh file with the defaults
is archived then deprecated). Files held by a training set still `building` are never
touched: its build reads their data/ objects.

Order of effects, each idempotent:
  archive    copy data/... -> archive/...; ONE transaction (state + object_key); delete data/...
  deprecate  ONE transaction (the data stays readable)
  delete     ONE transaction (state, tombstone, index runs, content entry); then the bytes:
             the data or archive object, the index runs, the upload's quarantine prefix
A crash between two steps leaves the catalog in one state per file and, at worst, an
extra copy; the next pass finishes it: it deletes every object of a tombstoned upload
and the data/ object of an upload already archived (whatever their age), and sweeps
objects nothing refers to once they are older than `temp_object_hours` (an ingestion
may be between writing an object and committing it; nothing younger is deleted).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta

from data_platform import layout
from data_platform.catalog import (
    ARCHIVED, DELETED, DEPRECATED, FRESH, INGESTED, QUARANTINED, USED, Catalog, RetentionMove, RetentionRow,
    to_naive_utc,
)
from data_platform.contracts import NEVER, ContractError, ContractRegistry, RetentionPolicy
from data_platform.storage import IncompleteWrite, ObjectInfo, ObjectStore

# Transition reasons (audit log, tombstones, `cleanup --json`).
ARCHIVE_AFTER_USES = "archive_after_uses"
ARCHIVE_AFTER_DAYS = "archive_after_days"
DEPRECATE_AFTER_DAYS = "deprecate_after_days"
DELETE_AFTER_DAYS = "delete_after_days"
QUARANTINE_EXPIRED = "quarantine_expired"

# Why an object expires.
DELETED_UPLOAD = "deleted_upload"  # an object of an upload deleted earlier (a crashed pass left it)
SUPERSEDED = "superseded"  # the data/ object of an upload already archived
ORPHAN_OBJECT = "orphan_object"  # under data/, archive/ or quarantine/, and no upload refers to it
ORPHAN_INDEX_RUN = "orphan_index_run"  # under _platform/indexes/, not registered
RELEASED_TRAINING_SET = "released_training_set"  # a training set whose build was given up
FAILED_FEATURE_VERSION = "failed_feature_version"  # a feature version whose build failed
TEMPORARY_FILE = "temporary_file"  # the local store's .tmp/ leftovers
ABANDONED_MULTIPART_UPLOAD = "abandoned_multipart_upload"

ENV = {
    "archive_after_uses": "DATA_PLATFORM_ARCHIVE_AFTER_USES",
    "archive_after_days": "DATA_PLATFORM_ARCHIVE_AFTER_DAYS",
    "deprecate_after_days": "DATA_PLATFORM_DEPRECATE_AFTER_DAYS",
    "delete_after_days": "DATA_PLATFORM_DELETE_AFTER_DAYS",
    "quarantine_days": "DATA_PLATFORM_QUARANTINE_DAYS",
    "temp_object_hours": "DATA_PLATFORM_TEMP_OBJECT_HOURS",
}

Limit = int | str  # an int >= 0, or NEVER


class RetentionConfigError(ValueError):
    """A retention variable that is neither an integer >= 0 nor `never`."""


@dataclass(frozen=True)
class RetentionDefaults:
    """The platform's retention, from DATA_PLATFORM_* variables (read when asked)."""
    archive_after_uses: Limit = 3
    archive_after_days: Limit = 90
    deprecate_after_days: Limit = 180
    delete_after_days: Limit = 30  # grace period after deprecation
    quarantine_days: Limit = 30
    temp_object_hours: Limit = 24

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetentionDefaults:
        env = os.environ if environ is None else environ
        values = {}
        for name, var in ENV.items():
            raw = env.get(var, "").strip()
            if raw:
                values[name] = _limit(var, raw)
        return cls(**values)

    def policy(self, contract: RetentionPolicy | None) -> RetentionPolicy:
        """A dataset's effective policy: the contract's keys over these defaults."""
        given = contract or RetentionPolicy()
        return RetentionPolicy(**{f.name: getattr(self, f.name) if getattr(given, f.name) is None
                                  else getattr(given, f.name) for f in fields(RetentionPolicy)})


def _limit(var: str, raw: str) -> Limit:
    if raw.lower() == NEVER:
        return NEVER
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise RetentionConfigError(f"{var}={raw!r}: expected an integer >= 0 or never")
    return value


def _due(measure: float, limit: Limit) -> bool:
    return limit != NEVER and measure >= limit


@dataclass(frozen=True)
class Transition:
    """One planned step of one upload; an upload's steps are listed in order."""
    upload_id: int
    tenant: str | None
    dataset: str | None
    landing_key: str
    from_state: str
    to_state: str
    reason: str  # the policy rule: archive_after_uses, archive_after_days, ...
    why: str  # what was measured: used_3_times, age_91_days, deprecated_30_days, ...
    limit: int  # the rule's value in the dataset's policy
    object_key_before: str | None
    object_key_after: str | None
    size: int
    rows: int | None

    @property
    def audit_detail(self) -> dict:
        return {"why": self.why, self.reason if self.reason != QUARANTINE_EXPIRED else "quarantine_days": self.limit}

    def move(self) -> RetentionMove:
        return RetentionMove(self.upload_id, self.from_state, self.reason, self.audit_detail)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExpiredObject:
    """An object (or an unfinished write) the pass deletes, and why."""
    key: str
    reason: str
    size: int | None
    last_modified: datetime  # naive UTC; the start of an unfinished write
    etag: str | None = None
    upload_id: int | None = None
    write: IncompleteWrite | None = None  # set for .tmp/ files and multipart uploads

    def as_dict(self) -> dict:
        return {"key": self.key, "reason": self.reason, "size": self.size,
                "last_modified": self.last_modified.isoformat() + "Z", "upload_id": self.upload_id,
                "kind": "object" if self.write is None else self.write.kind}


@dataclass
class CleanupPlan:
    now: datetime  # naive UTC
    tenant: str | None
    transitions: list[Transition]
    expired_objects: list[ExpiredObject]
    held: int = 0  # uploads left alone because a building training set holds them
    problems: list[dict] = field(default_factory=list)  # datasets left alone (e.g. a broken contract)

    def counts(self) -> dict:
        return {
            "transitions": dict(Counter(f"{t.from_state}->{t.to_state}" for t in self.transitions)),
            "by_reason": dict(Counter(t.reason for t in self.transitions)),
            "files": len({t.upload_id for t in self.transitions}),
            "expired_objects": dict(Counter(o.reason for o in self.expired_objects)),
            "expired_bytes": sum(o.size or 0 for o in self.expired_objects),
            "held_by_building_training_sets": self.held,
        }

    def as_dict(self, *, dry_run: bool, result: CleanupResult | None = None) -> dict:
        """The `data-platform cleanup --json` document."""
        transitions = [t.as_dict() for t in self.transitions]
        if result is not None:
            for entry, t in zip(transitions, self.transitions):
                entry["applied"] = (t.upload_id, t.to_state) in result.applied
        out = {"dry_run": dry_run, "now": self.now.isoformat() + "Z", "tenant": self.tenant,
               "transitions": transitions, "expired_objects": [o.as_dict() for o in self.expired_objects],
               "counts": self.counts(), "problems": self.problems}
        if result is not None:
            out["counts"]["applied"] = len(result.applied)
            out["counts"]["expired_objects_deleted"] = result.expired_deleted
            out["failed"] = result.failed
        return out


@dataclass
class CleanupResult:
    applied: set[tuple[int, str]] = field(default_factory=set)  # (upload id, state reached)
    failed: list[dict] = field(default_factory=list)  # steps that did not happen, with why
    expired_deleted: int = 0
    bytes_deleted: int = 0


# -- planning -------------------------------------------------------------------------

def plan_cleanup(catalog: Catalog, store: ObjectStore, contracts: ContractRegistry | None, *, now: datetime,
                 tenant: str | None = None, defaults: RetentionDefaults | None = None) -> CleanupPlan:
    """Every transition the policy calls for at `now`, and every object that expires.
    Reads only: the dry run is this."""
    now = to_naive_utc(now)
    defaults = defaults or RetentionDefaults.from_env()
    if tenant is not None:
        layout.check_name("tenant", tenant)
    rows = catalog.retention_rows(tenant)
    policies, problems = _policies(rows, contracts, defaults)
    transitions: list[Transition] = []
    held = 0
    for row in rows:
        if row.state not in (FRESH, USED, ARCHIVED, DEPRECATED, QUARANTINED):
            continue
        if row.held:
            held += 1
            continue
        if row.state == QUARANTINED:
            transitions += _quarantine_expiry(row, defaults.quarantine_days, now)
        elif (row.tenant, row.dataset) in policies:
            transitions += _chain(row, policies[(row.tenant, row.dataset)], now)
    expired = _expired_objects(catalog, store, rows, transitions, now=now, tenant=tenant,
                               threshold=defaults.temp_object_hours)
    return CleanupPlan(now=now, tenant=tenant, transitions=transitions, expired_objects=expired, held=held,
                       problems=problems)


def _policies(rows: list[RetentionRow], contracts: ContractRegistry | None, defaults: RetentionDefaults):
    datasets = {(r.tenant, r.dataset) for r in rows if r.state in INGESTED and r.tenant and r.dataset}
    with_contract = contracts.datasets() if contracts is not None else set()
    policies, problems = {}, []
    for tenant, dataset in sorted(datasets):
        try:
            contract = contracts.find(tenant, dataset) if (tenant, dataset) in with_contract else None
        except (ContractError, ValueError) as err:
            # Its contract may say "never": leave the dataset alone rather than guess.
            problems.append({"tenant": tenant, "dataset": dataset, "problem": str(err).splitlines()[0]})
            continue
        policies[(tenant, dataset)] = defaults.policy(contract.retention if contract else None)
    return policies, problems


def _days(delta: timedelta) -> int:
    return int(delta.total_seconds() // 86400)


def _chain(row: RetentionRow, policy: RetentionPolicy, now: datetime) -> list[Transition]:
    """The steps one ingested file takes at `now`, in order."""
    born = row.ingested_at or row.state_since
    if born is None:
        return []
    age = now - born
    state, key, since = row.state, row.object_key, row.state_since or born
    out: list[Transition] = []

    def step(to_state: str, reason: str, why: str, limit: int, new_key: str | None) -> None:
        nonlocal state, key, since
        out.append(Transition(row.id, row.tenant, row.dataset, row.landing_key, state, to_state, reason, why, limit,
                              key, new_key, row.size, row.rows))
        state, key, since = to_state, new_key, now

    if state in (FRESH, USED):
        if key != layout.data_key(row.tenant, row.dataset, row.id):
            return []  # not where ingestion puts data: nothing this pass knows how to move
        archive = layout.archive_key(row.tenant, row.dataset, row.id)
        if _due(row.uses, policy.archive_after_uses):
            step(ARCHIVED, ARCHIVE_AFTER_USES, f"used_{row.uses}_times", policy.archive_after_uses, archive)
        elif _due(age / timedelta(days=1), policy.archive_after_days):
            step(ARCHIVED, ARCHIVE_AFTER_DAYS, f"age_{_days(age)}_days", policy.archive_after_days, archive)
        elif _due(age / timedelta(days=1), policy.deprecate_after_days):
            step(ARCHIVED, DEPRECATE_AFTER_DAYS, f"age_{_days(age)}_days", policy.deprecate_after_days, archive)
    if state == ARCHIVED and _due(age / timedelta(days=1), policy.deprecate_after_days):
        step(DEPRECATED, DEPRECATE_AFTER_DAYS, f"age_{_days(age)}_days", policy.deprecate_after_days, key)
    if state == DEPRECATED and _due((now - since) / timedelta(days=1), policy.delete_after_days):
        step(DELETED, DELETE_AFTER_DAYS, f"deprecated_{_days(now - since)}_days", policy.delete_after_days, None)
    return out


def _quarantine_expiry(row: RetentionRow, days: Limit, now: datetime) -> list[Transition]:
    since = row.state_since
    if since is None or not _due((now - since) / timedelta(days=1), days):
        return []
    return [Transition(row.id, row.tenant, row.dataset, row.landing_key, QUARANTINED, DELETED, QUARANTINE_EXPIRED,
                       f"quarantined_{_days(now - since)}_days", days, row.object_key, None, row.size, row.rows)]


def _expired_objects(catalog: Catalog, store: ObjectStore, rows: list[RetentionRow], transitions: list[Transition],
                     *, now: datetime, tenant: str | None, threshold: Limit) -> list[ExpiredObject]:
    by_id = {r.id: r for r in rows}
    live = {r.object_key for r in rows if r.state in INGESTED and r.object_key}
    planned = {k for t in transitions for k in (t.object_key_before, t.object_key_after) if k}
    cutoff = None if threshold == NEVER else now - timedelta(hours=threshold)
    out: list[ExpiredObject] = []

    def old(when: datetime) -> bool:
        return cutoff is not None and to_naive_utc(when) <= cutoff

    def expire(info: ObjectInfo, reason: str, upload_id: int | None) -> None:
        out.append(ExpiredObject(info.key, reason, info.size, to_naive_utc(info.last_modified), info.etag,
                                 upload_id))

    def scoped(top: str) -> str:
        return f"{top}/{tenant}/" if tenant else f"{top}/"

    # data/ and archive/: an object is kept while an ingested upload's object_key names it.
    for info in _listing(store, [scoped(layout.DATA), scoped(layout.ARCHIVE)]):
        if info.key in live or info.key in planned:
            continue
        upload_id = layout.upload_id_in_key(info.key)
        row = by_id.get(upload_id)
        if row is not None and row.tombstoned:
            expire(info, DELETED_UPLOAD, upload_id)
        elif (row is not None and row.state in (ARCHIVED, DEPRECATED) and info.key.startswith(f"{layout.DATA}/")
              and info.key == layout.data_key(row.tenant, row.dataset, row.id)):
            expire(info, SUPERSEDED, upload_id)  # the archive step's last effect, interrupted
        elif old(info.last_modified):
            expire(info, ORPHAN_OBJECT, upload_id)

    # _platform/indexes/: kept while registered.
    registered = catalog.registered_index_keys(tenant)
    index_prefixes = ([f"{layout.PLATFORM}/indexes/{kind}/{tenant}/" for kind in layout.INDEX_KINDS] if tenant
                      else [f"{layout.PLATFORM}/indexes/"])
    for info in _listing(store, index_prefixes):
        if info.key in registered:
            continue
        upload_id = layout.upload_id_in_key(info.key)
        row = by_id.get(upload_id)
        if row is not None and row.tombstoned:
            expire(info, DELETED_UPLOAD, upload_id)
        elif old(info.last_modified):
            expire(info, ORPHAN_INDEX_RUN, upload_id)

    # quarantine/: an upload's original bytes, report and rejected rows go with the upload.
    for info in _listing(store, [scoped(layout.QUARANTINE)]):
        upload_id = layout.upload_id_in_key(info.key)
        row = by_id.get(upload_id)
        if row is not None and row.tombstoned:
            expire(info, DELETED_UPLOAD, upload_id)
        elif (row is None or row.state == DELETED) and old(info.last_modified):
            expire(info, ORPHAN_OBJECT, upload_id)

    for info in _listing(store, catalog.released_training_set_prefixes(tenant)):
        if old(info.last_modified):
            expire(info, RELEASED_TRAINING_SET, None)
    for info in _listing(store, catalog.failed_feature_version_prefixes(tenant)):
        if old(info.last_modified):
            expire(info, FAILED_FEATURE_VERSION, None)

    if tenant is None:  # unfinished writes belong to no tenant: a whole-platform pass takes them
        for write in store.incomplete_writes():
            if old(write.started):
                reason = TEMPORARY_FILE if write.kind == "temporary_file" else ABANDONED_MULTIPART_UPLOAD
                out.append(ExpiredObject(write.key, reason, write.size, to_naive_utc(write.started), None, None,
                                         write))
    return out


def unreferenced_objects(catalog: Catalog, store: ObjectStore, *, now: datetime, tenant: str | None = None,
                         min_age_hours: Limit = 24) -> list[ExpiredObject]:
    """The objects a cleanup pass would expire because nothing refers to them (the same
    rules, with no transitions planned), for the integrity check's `orphaned`. Unfinished
    writes are left out: they are not objects yet."""
    rows = catalog.retention_rows(tenant)
    return [o for o in _expired_objects(catalog, store, rows, [], now=to_naive_utc(now), tenant=tenant,
                                        threshold=min_age_hours) if o.write is None]


def _listing(store: ObjectStore, prefixes: Iterable[str]) -> Iterable[ObjectInfo]:
    for prefix in prefixes:
        for info in store.list(prefix):
            if not info.is_folder_marker:
                yield info


# -- applying -------------------------------------------------------------------------

def apply_cleanup(plan: CleanupPlan, catalog: Catalog, store: ObjectStore, *, actor: str,
                  workers: int = 8) -> CleanupResult:
    """Carry the plan out, step by step in the order of the module docstring. Each
    catalog step moves only files still in the state the plan saw, so a plan made
    from a stale view (or a second pass running at once) changes nothing twice."""
    result = CleanupResult()
    _archive(plan, catalog, store, actor, workers, result)
    moves = [t for t in plan.transitions if t.to_state == DEPRECATED]
    if moves:
        done = set(catalog.deprecate([t.move() for t in moves], actor=actor, now=plan.now))
        _record(result, moves, done, "deprecate")
    _delete(plan, catalog, store, actor, result)
    _expire(plan, catalog, store, result)
    return result


def _record(result: CleanupResult, moves: list[Transition], done: set[int], step: str) -> None:
    for t in moves:
        if t.upload_id in done:
            result.applied.add((t.upload_id, t.to_state))
        else:
            result.failed.append({"upload_id": t.upload_id, "step": step,
                                  "error": f"no longer {t.from_state} (changed meanwhile, or its previous step "
                                           "failed), or held by a building training set"})


def _archive(plan: CleanupPlan, catalog: Catalog, store: ObjectStore, actor: str, workers: int,
             result: CleanupResult) -> None:
    moves = [t for t in plan.transitions if t.to_state == ARCHIVED]
    if not moves:
        return

    def copy(t: Transition) -> str | None:
        try:
            store.copy(t.object_key_before, t.object_key_after)
        except Exception as err:  # noqa: BLE001 - e.g. the source went (a concurrent pass archived it)
            return f"{type(err).__name__}: {err}"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(copy, moves))
    copied = [t for t, e in zip(moves, errors) if e is None]
    for t, error in zip(moves, errors):
        if error is not None:
            result.failed.append({"upload_id": t.upload_id, "step": "archive_copy", "error": error})
    done = set(catalog.archive([t.move() for t in copied], actor=actor, now=plan.now))
    _record(result, copied, done, "archive")
    store.delete_many([t.object_key_before for t in copied if t.upload_id in done])
    # A copy whose transition did not happen is ours to remove, unless the catalog points
    # at that key anyway (another pass archived the file meanwhile).
    stray = [t.object_key_after for t in copied if t.upload_id not in done]
    if stray:
        kept = catalog.referenced_keys(stray)
        store.delete_many([k for k in stray if k not in kept])


def _delete(plan: CleanupPlan, catalog: Catalog, store: ObjectStore, actor: str, result: CleanupResult) -> None:
    moves = [t for t in plan.transitions if t.to_state == DELETED]
    if not moves:
        return
    deleted = catalog.delete_uploads([t.move() for t in moves], actor=actor, now=plan.now)
    _record(result, moves, {d.upload_id for d in deleted}, "delete")
    keys: list[str] = []
    for d in deleted:
        keys += d.index_keys
        if d.object_key and not d.object_key.endswith("/"):
            keys.append(d.object_key)
        if d.from_state == QUARANTINED or d.quarantined_rows:
            prefix = layout.quarantine_prefix(d.tenant, d.dataset, d.upload_id)
            keys += [info.key for info in store.list(prefix)]
    store.delete_many(keys)


def _expire(plan: CleanupPlan, catalog: Catalog, store: ObjectStore, result: CleanupResult) -> None:
    objects = [o for o in plan.expired_objects if o.write is None]
    # Checked again now: the catalog may point at a key since the plan was made.
    referenced = catalog.referenced_keys([o.key for o in objects])
    gone = []
    for o in objects:
        if o.key in referenced:
            continue
        info = store.head(o.key)
        # Only the version the plan saw: a rewrite (even of the same bytes) has a new time.
        if info is None or info.etag != o.etag or to_naive_utc(info.last_modified) != o.last_modified:
            continue
        gone.append(o)
    store.delete_many([o.key for o in gone])
    for o in plan.expired_objects:
        if o.write is not None:
            store.abort_write(o.write)
            gone.append(o)
    result.expired_deleted = len(gone)
    result.bytes_deleted = sum(o.size or 0 for o in gone)

"""Process kills: each job runs in a forked child that dies by `os._exit` just before its Nth
store call or catalog statement (no except, finally or rollback runs), N drawn (seeded) over
a clean run's calls, 20 points per job (10 on PostgreSQL and the S3 endpoint). The next run
(after the lease, where there is one) must give a clean run's result and keep the job's
invariants, with `verify` clean, also once the killed run's leftovers are old enough to sweep."""

import gc
import json
import os
import random
import re
import shutil
import signal
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import psycopg2
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from data_platform import erasure, integrity
from data_platform import features as fs
from data_platform import training_sets as tsets
from data_platform.backups import BackupError, create_backup, prune_backups, restore_backup, scan_backups
from data_platform.catalog import (
    BUILDING, COMPLETE, DELETED, FAILED, FRESH, INGESTED, LANDING, USED, Catalog, NoFreshData, metadata, utcnow,
)
from data_platform.catalog.schema import audit_log, erasure_requests, training_set_files, uploads
from data_platform.contracts import ContractRegistry
from data_platform.exports import Week, export_week, read_manifest, verify_export
from data_platform.retention import RetentionDefaults, apply_cleanup, plan_cleanup
from data_platform.storage import LocalObjectStore, ObjectWriter, S3ObjectStore
from data_platform_tests.conftest import BUCKET, PG_ADMIN_DSN
from data_platform_tests.support import ingest_everything, jsonl, read_data
from data_platform_tests.test_erasure import holds_alice, lifecycle, subject, tenant_objects, without_times

POINTS = 20  # kill points per job
PG_POINTS = 10  # on PostgreSQL and the S3 endpoint, where a point costs more
LANES = 2  # worker processes sharing them (each forks its children)
KILLED = 17  # the child's exit status when it died at its point
CHILD_SECONDS = 120  # a child still running after this is hung: a failure, not a wait
LANE_SECONDS = 500  # a lane's whole share of the points (pytest's own timeout is 600 s)
LATER = timedelta(days=2)  # when leftovers of a killed run are old enough for every sweep
STORE_CALLS = ("list", "head", "open_read", "get_bytes", "put_bytes", "upload_file", "open_write", "copy",
               "delete", "delete_many", "incomplete_writes", "abort_write")


# -- the kill ----------------------------------------------------------------------------------------


WRITES = {"put_bytes": 0, "upload_file": 1, "copy": 1}  # store calls that write an object: where its key is


class _Calls:
    """Counts store calls and SQL statements (and commits), and notes the objects written;
    at call `kill_at` the process ends on the spot, after noting which call it was."""

    def __init__(self, kill_at: int | None, note_fd: int):
        self.kill_at, self.fd, self.n, self.lock = kill_at, note_fd, 0, threading.Lock()
        self.written: list[str] = []
        self.labels: list[str] = []  # of every call, when counting (no kill_at)

    def __call__(self, label: str) -> None:
        with self.lock:
            self.n += 1
            if self.kill_at is None:
                self.labels.append(label[:300])
            elif self.n == self.kill_at:
                os.write(self.fd, json.dumps({"at": label[:300], "written": self.written}).encode())
                os._exit(KILLED)

    def install(self) -> None:
        """In the child only: every engine's statements, every store's calls, every write's commit."""
        sa.event.listen(Engine, "before_cursor_execute",
                        lambda _conn, _cur, statement, *_: self("sql " + " ".join(statement.split()[:4])))
        sa.event.listen(Engine, "commit", lambda _conn: self("sql COMMIT"))
        for cls in (LocalObjectStore, S3ObjectStore):
            for name in STORE_CALLS:
                def counted(store, *args, _real=getattr(cls, name), _name=name, **kwargs):
                    self(f"store.{_name} {args[0] if args and isinstance(args[0], str) else ''}".rstrip())
                    out = _real(store, *args, **kwargs)
                    if _name in WRITES:
                        self.written.append(args[WRITES[_name]])
                    return out
                setattr(cls, name, counted)
        commit = ObjectWriter.commit

        def counted_commit(writer):
            self("store.open_write(...).commit")
            return commit(writer)
        ObjectWriter.commit = counted_commit


@contextmanager
def recording_writes(store, written: list[str]):
    """The keys `store` writes to while inside, in `written`."""
    for name, at in WRITES.items():
        def recorded(*args, _real=getattr(store, name), _at=at, **kwargs):
            out = _real(*args, **kwargs)
            written.append(args[_at])
            return out
        setattr(store, name, recorded)
    try:
        yield
    finally:
        for name in WRITES:
            delattr(store, name)


def fork(body, scratch: Path) -> tuple[int, Path]:
    """Fork a child that runs `body(fd)` (fd: its note to the parent) and ends with
    os._exit(what body returned), or 3 with the traceback noted if it raised; it never
    returns into pytest."""
    note = scratch / f"note-{uuid.uuid4().hex}"
    fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    gc.freeze()  # the child's collections leave the parent's objects alone: fewer pages copied
    pid = os.fork()
    if pid == 0:
        status = 3
        try:
            status = body(fd)
        except BaseException:  # noqa: BLE001 - reported to the parent through the note
            os.write(fd, traceback.format_exc().encode())
        finally:
            os._exit(status)
    gc.unfreeze()
    os.close(fd)
    return pid, note


def wait(pid: int, note: Path, seconds: float) -> tuple[int, str]:
    """The child's exit status and note; a child still running after `seconds` is hung."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} hung: {note.read_text()[-3000:]}")
        time.sleep(0.005)
    text = note.read_text()
    note.unlink()
    return os.waitstatus_to_exitcode(status), text


def run_in_child(fn, kill_at: int | None, scratch: Path) -> tuple[int, str]:
    """`fn` in a child with the counter installed: exit status KILLED at call `kill_at`,
    0 when `fn` returned (the note says how many calls it made), 3 when it raised."""
    def body(fd: int) -> int:
        calls = _Calls(kill_at, fd)
        calls.install()
        fn()
        os.write(fd, json.dumps({"calls": calls.n, "written": calls.written, "labels": calls.labels}).encode())
        return 0
    return wait(*fork(body, scratch), CHILD_SECONDS)


# -- sandboxes: a starting state, copied afresh for every point ---------------------------------


class LocalSandbox:
    """A local store and a SQLite catalog under `root/work/`, and a starting state (`save`)."""

    kind = "local+sqlite"

    def __init__(self, root: Path, template: Path | None = None):
        self.root, self.work, self.template = root, root / "work", template or root / "template"
        if template is not None:
            shutil.copytree(template, self.work)  # a migrated catalog opens at once
        self.work.mkdir(parents=True, exist_ok=True)
        self.store = LocalObjectStore(self.work / "objects")
        self.catalog = Catalog(f"sqlite:///{self.work / 'catalog.db'}")

    def lane(self, i: int) -> "LocalSandbox":
        """Another work area starting from the same state."""
        return LocalSandbox(self.root / f"lane-{i}", self.template)

    def load(self, template: Path) -> None:
        self.catalog.dispose()
        shutil.rmtree(self.work)
        shutil.copytree(template, self.work)  # copy2 keeps mtimes: local ETags stay what the catalog saw

    def save(self) -> None:
        self.catalog.dispose()
        shutil.rmtree(self.template, ignore_errors=True)
        shutil.copytree(self.work, self.template)

    def reset(self) -> None:
        self.load(self.template)

    def for_child(self):
        self.catalog.engine.dispose(close=False)  # never touch the parent's connections
        return self.store, self.catalog

    def before_fork(self) -> None:
        self.catalog.dispose()

    def close(self) -> None:
        self.catalog.dispose()


def _admin_sql(*statements: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


class PgS3Sandbox:
    """A PostgreSQL database and a prefix of the S3 endpoint's bucket. The starting state is
    the rows of every catalog table (put back after deleting all, sequences moved past them:
    much quicker than CREATE DATABASE ... TEMPLATE) and a template prefix."""

    kind = "postgresql+s3"

    def __init__(self, template: tuple[dict, str] | None = None):
        tag = uuid.uuid4().hex[:10]
        self.work_db, self.work_prefix = f"dp_kill_{tag}", f"kill-{tag}"
        self.rows, self.template_prefix = template or (None, f"kill-{tag}-template")
        self.session = boto3.session.Session()  # its clients share the models botocore loaded
        self.bucket = S3ObjectStore(BUCKET, session=self.session)
        self.bucket.ensure_bucket()
        _admin_sql(f'CREATE DATABASE "{self.work_db}"')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
        self.store = S3ObjectStore(BUCKET, self.work_prefix, session=self.session)
        self.catalog = Catalog(f"{base}/{self.work_db}")

    def lane(self, i: int) -> "PgS3Sandbox":
        return PgS3Sandbox((self.rows, self.template_prefix))

    def _copy_objects(self, src: str, dst: str) -> None:
        for write in self.bucket.incomplete_writes():
            if write.key.startswith(dst + "/"):
                self.bucket.abort_write(write)
        want = {i.key[len(src):]: i.etag for i in self.bucket.list(src + "/")}
        have = {i.key[len(dst):]: i.etag for i in self.bucket.list(dst + "/")}
        self.bucket.delete_many([dst + k for k in have if k not in want])
        with ThreadPoolExecutor(8) as pool:  # only what differs: the endpoint's time is this test's
            list(pool.map(lambda k: self.bucket.copy(src + k, dst + k), [k for k in want if have.get(k) != want[k]]))

    def save(self) -> None:
        with self.catalog.engine.connect() as conn:
            self.rows = {t.name: [r._asdict() for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                         for t in metadata.sorted_tables}
        self._copy_objects(self.work_prefix, self.template_prefix)

    def reset(self) -> None:
        self.catalog.dispose()
        tables = metadata.sorted_tables
        with self.catalog.engine.begin() as conn:
            for t in reversed(tables):  # on tables this small, quicker than TRUNCATE
                conn.execute(t.delete())
            for t in tables:
                if self.rows[t.name]:
                    conn.execute(t.insert(), self.rows[t.name])
                if (c := t.autoincrement_column) is not None:  # the next id follows the rows put back
                    conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence(:t, :c), COALESCE(MAX({c.name}), 1), "
                                         f"MAX({c.name}) IS NOT NULL) FROM {t.name}"), {"t": t.name, "c": c.name})
        self.catalog.dispose()
        self._copy_objects(self.template_prefix, self.work_prefix)

    def for_child(self):
        self.catalog.engine.dispose(close=False)
        # Its own boto3 client: the parent's pooled HTTP connections stay the parent's.
        return S3ObjectStore(BUCKET, self.work_prefix, session=self.session), self.catalog

    def before_fork(self) -> None:
        self.catalog.dispose()

    def close(self) -> None:
        self.catalog.dispose()
        _admin_sql(f'DROP DATABASE IF EXISTS "{self.work_db}" WITH (FORCE)')


# -- what every job is checked against -----------------------------------------------------------


def assert_verify_clean(store, catalog, *, tenant: str | None = None, now: datetime | None = None) -> None:
    report = integrity.verify(store, catalog, tenant=tenant, now=now)
    assert report.ok, [f.as_dict() for f in report.findings] + report.errors


def sweep_and_verify(store, catalog, later: datetime) -> None:
    """Once everything a killed run left is old: a cleanup pass that only expires objects
    (the policy's transitions are not this test's business) leaves nothing `verify`, at that
    clock, calls an orphan, and no unfinished write."""
    plan = plan_cleanup(catalog, store, ContractRegistry(None, store), now=later)
    plan.transitions.clear()
    result = apply_cleanup(plan, catalog, store, actor="sweep")
    assert result.failed == []
    assert list(store.incomplete_writes()) == []
    assert_verify_clean(store, catalog, now=later.replace(tzinfo=UTC))


def listing(store, prefix: str = "") -> list[str]:
    return sorted(i.key for i in store.list(prefix))


def expire_claims(catalog) -> None:
    """Time passes: the killed run's ingestion leases run out."""
    with catalog.engine.begin() as conn:
        conn.execute(uploads.update().where(uploads.c.state == LANDING)
                     .values(claimed_until=utcnow() - timedelta(hours=1)))


def audit_once(catalog) -> None:
    """No upload took the same step twice."""
    with catalog.engine.connect() as conn:
        steps = Counter(conn.execute(sa.select(audit_log.c.upload_id, audit_log.c.from_state, audit_log.c.to_state)))
    assert [s for s, n in steps.items() if n > 1] == []


# -- the jobs -------------------------------------------------------------------------------------------


class Job:
    """prepare: the starting state (once); run: what is killed; rerun: what the next run
    does; outcome: what must equal a clean run's; check: the job's own invariants; sweep:
    what collects a killed run's leftovers once they are old (besides cleanup)."""

    name = ""
    needs_lifecycle = False
    scratch: Path

    def prepare(self, store, catalog) -> None: ...

    def begin_point(self) -> None: ...

    def run(self, store, catalog) -> None: ...

    def rerun(self, store, catalog) -> None:
        self.run(store, catalog)

    def outcome(self, store, catalog) -> dict:
        return {}

    def check(self, store, catalog) -> None: ...

    def later(self) -> datetime:
        return utcnow() + LATER

    def check_writes(self, written: list[str]) -> None:
        """`written`: the objects the killed run and the re-run wrote, in order."""

    def focus(self, labels: list[str]) -> list[int]:
        """Points always among the job's (a window where a kill once went wrong), from the
        labels of a clean run's calls (call n is labels[n - 1])."""
        return []

    def sweep(self, store, catalog) -> None: ...


TICKETS_CONTRACT = b"""
version: 1
columns:
  id: {type: string, required: true, regex: "^t-"}
  email: {type: string, pii: email}
  n: {type: integer, required: true, min: 0}
primary_key: [id]
validation: {max_failing_share: 0.5, blocking: true}
"""


def _tickets(ids, bad=()) -> list[dict]:
    return [{"id": f"t-{i}", "email": f"user{i}@example.org", "n": -1 if i in bad else i} for i in ids]


class Ingestion(Job):
    """A sensor tick and a run per dataset over eight uploads: good, overlapping rows, some
    rows breaking the contract, the same bytes twice, all rows bad, a corrupt gzip, a key
    outside the layout, another tenant."""

    name = "ingestion"

    def prepare(self, store, catalog):
        store.put_bytes("_platform/contracts/acme/tickets.yaml", TICKETS_CONTRACT)
        t1 = jsonl(_tickets(range(20)))
        land = {
            "acme/tickets/t1.jsonl": t1,
            "acme/tickets/t2.jsonl": jsonl(_tickets(range(10, 32), bad=(30, 31))),  # 10 rows t1 holds, 2 bad
            "acme/tickets/t3.jsonl": t1,  # the same bytes again: duplicate
            "acme/tickets/t4.jsonl": jsonl(_tickets(range(40, 44), bad=range(40, 44))),  # quarantined whole
            "acme/events/e1.csv": ("id,v\n" + "".join(f"e-{i},{i}\n" for i in range(15))).encode(),
            "acme/events/e2.jsonl.gz": b"not gzip at all",
            "acme/stray.jsonl": jsonl([{"id": "s"}]),  # invalid_key
            "globex/events/g1.jsonl": jsonl([{"id": f"g-{i}"} for i in range(10)]),
        }
        for key, data in land.items():
            store.put_bytes(f"landing/{key}", data)

    def run(self, store, catalog):
        ingest_everything(store, catalog, claimer="killed-run")

    def rerun(self, store, catalog):
        expire_claims(catalog)
        for _ in range(2):  # the next tick and run, then one more that finds nothing to do
            _, _, failures = ingest_everything(store, catalog, claimer="next-run")
            assert failures == []

    def outcome(self, store, catalog):
        ups = catalog.list_uploads()
        ids = Counter()
        for u in ups:
            if u.state == FRESH:
                ids.update((u.tenant, u.dataset, i) for i in read_data(store, u.object_key).column("id").to_pylist())
        # Objects by upload, not id: PostgreSQL does not give back ids a killed transaction took.
        names = {f"upload-{u.id:010d}": u.landing_key for u in ups}
        return {"uploads": sorted((u.landing_key, u.state, u.rows, u.quarantined_rows, u.reason) for u in ups),
                "rows": sorted(ids.items()),
                "objects": sorted(re.sub(r"upload-\d{10}", lambda m: names.get(m[0], m[0]), k) for k in listing(store)
                                  if not k.endswith("report.json"))}

    def check(self, store, catalog):
        ups = catalog.list_uploads()
        assert len({u.landing_key for u in ups}) == len(ups)  # one ledger row per upload
        assert {u.landing_key[len("landing/"):]: (u.state, u.reason) for u in ups} == {
            "acme/tickets/t1.jsonl": (FRESH, None), "acme/tickets/t2.jsonl": (FRESH, None),
            "acme/tickets/t3.jsonl": ("duplicate", "duplicate_content"),
            "acme/tickets/t4.jsonl": ("quarantined", "too_many_invalid_rows"), "acme/events/e1.csv": (FRESH, None),
            "acme/events/e2.jsonl.gz": ("quarantined", "corrupt_compression"),
            "acme/stray.jsonl": ("quarantined", "invalid_key"), "globex/events/g1.jsonl": (FRESH, None)}
        assert listing(store, "landing/") == []
        tickets = []
        for u in ups:
            if u.state == FRESH:
                ids = read_data(store, u.object_key).column("id").to_pylist()
                assert len(ids) == u.rows
                tickets += ids if u.dataset == "tickets" else []
        assert sorted(tickets) == sorted(f"t-{i}" for i in range(30))  # each good row once, none lost
        assert_verify_clean(store, catalog)
        audit_once(catalog)


def _events(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "value": i, "text": f"row {prefix} number {i}"} for i in range(n)]


def _ingest(store, catalog, files: dict[str, list[dict]]) -> None:
    for path, rows in files.items():
        store.put_bytes(f"landing/{path}.jsonl", jsonl(rows))
    _, outcomes, failures = ingest_everything(store, catalog)
    assert not failures and {o.state for o in outcomes} == {FRESH}, outcomes


class TrainingSet(Job):
    """A build of acme's four fresh files (two datasets); the next build comes after the lease."""

    name = "training_set"
    request = tsets.TrainingSetRequest("acme", name="nightly")

    def prepare(self, store, catalog):
        _ingest(store, catalog, {"acme/events/e0": _events("e0", 10), "acme/events/e1": _events("e1", 20),
                                 "acme/events/e2": _events("e2", 30), "acme/clicks/c0": _events("c0", 5),
                                 "other/events/o0": _events("o0", 7)})

    def run(self, store, catalog):
        tsets.create_training_set(store, catalog, self.request, actor="killed-build")

    def rerun(self, store, catalog):
        later = utcnow() + tsets.LEASE + timedelta(seconds=1)  # the killed build's lease has run out
        try:
            tsets.create_training_set(store, catalog, self.request, actor="next-build", now=later)
        except NoFreshData:
            pass  # the killed build had claimed everything: it was completed first
        with pytest.raises(NoFreshData):  # and nothing is left for another
            tsets.create_training_set(store, catalog, self.request, actor="next-build", now=later)

    def outcome(self, store, catalog):
        sets = catalog.training_sets(tenant="acme")
        keys = {u.id: u.landing_key for u in catalog.list_uploads()}
        rows = Counter()
        for ts in sets:
            if ts.state == COMPLETE:
                table = tsets.table_of(store, tsets.read_manifest(store, ts))
                rows.update(zip(map(keys.get, table.column(tsets.SOURCE_COLUMN).to_pylist()),
                                table.column("id").to_pylist()))
        return {"sets": [(ts.name, ts.version, ts.state, ts.rows, ts.files) for ts in sets],
                "uploads": sorted((u.landing_key, u.state, u.uses) for u in catalog.list_uploads()),
                "rows": sorted(rows.items())}

    def check(self, store, catalog):
        [ts] = catalog.training_sets(tenant="acme")
        assert ts.state == COMPLETE and ts.version == 1
        acme = catalog.list_uploads(tenant="acme")
        assert {u.state for u in acme} == {USED}
        with catalog.engine.connect() as conn:  # every file in the set, once
            held = Counter(conn.execute(sa.select(training_set_files.c.upload_id)).scalars())
        assert held == Counter(u.id for u in acme)
        manifest = tsets.read_manifest(store, ts)
        assert tsets.verify_snapshot(store, manifest) == []
        table = tsets.table_of(store, manifest)
        assert table.num_rows == ts.rows == sum(u.rows for u in acme) == 65
        assert Counter(zip(table.column(tsets.SOURCE_COLUMN).to_pylist(), table.column("id").to_pylist())
                       ).most_common(1)[0][1] == 1  # no row twice
        assert {u.state for u in catalog.list_uploads(tenant="other")} == {FRESH}
        assert_verify_clean(store, catalog)


class Cleanup(Job):
    """One pass at a clock the test sets: two used files archived (uses), two archived and
    deprecated on the way (age), a deprecated one deleted, a quarantined one expired, and
    orphans swept."""

    name = "cleanup"
    defaults = RetentionDefaults()  # 3 uses, 90 / 180 days, 30 days' grace, 30 days' quarantine, 24 h

    def _pass(self, store, catalog, now):
        plan = plan_cleanup(catalog, store, ContractRegistry(None, store), now=now, defaults=self.defaults)
        return plan, apply_cleanup(plan, catalog, store, actor="cleanup")

    def prepare(self, store, catalog):
        _ingest(store, catalog, {f"acme/tickets/f{i}": _events(f"f{i}", 5) for i in range(6)})
        store.put_bytes("landing/acme/tickets/bad.jsonl.gz", b"not gzip")  # quarantined
        ingest_everything(store, catalog)
        t0 = max(u.ingested_at for u in catalog.list_uploads() if u.ingested_at)
        a, b, c, d, e, _ = [u.id for u in catalog.list_uploads(state=FRESH)]
        self._set(catalog, [e], ingested_at=t0 - timedelta(days=400))
        self._pass(store, catalog, t0 - timedelta(days=31))  # e: archived and deprecated 31 days ago
        self._set(catalog, [a, b], state=USED, uses=3)
        self._set(catalog, [c, d], ingested_at=t0 - timedelta(days=200))
        store.put_bytes("data/acme/tickets/upload-0000009999.parquet", b"a crashed attempt")
        store.put_bytes("_platform/indexes/rows/acme/tickets/upload-0000009998.parquet", b"unregistered")
        self.now = t0 + timedelta(days=31)
        self.originals = {u.landing_key: store.get_bytes(u.object_key) for u in catalog.list_uploads()
                          if u.state in INGESTED}

    @staticmethod
    def _set(catalog, ids, **values):
        with catalog.engine.begin() as conn:
            conn.execute(uploads.update().where(uploads.c.id.in_(ids)).values(**values))

    def run(self, store, catalog):
        self._pass(store, catalog, self.now)

    def rerun(self, store, catalog):
        _, result = self._pass(store, catalog, self.now)
        assert result.failed == []
        plan, _ = self._pass(store, catalog, self.now)
        assert plan.transitions == [] and plan.expired_objects == []  # nothing left to do

    def outcome(self, store, catalog):
        return {"uploads": sorted((u.landing_key, u.state, u.object_key) for u in catalog.list_uploads()),
                "tombstones": len(catalog.tombstones()), "objects": listing(store)}

    def check(self, store, catalog):
        ups = catalog.list_uploads()
        assert Counter(u.state for u in ups) == {"archived": 2, "deprecated": 2, DELETED: 2, FRESH: 1}
        live = set()
        for u in ups:
            if u.state in INGESTED:  # every byte where the catalog says, as it was
                assert store.get_bytes(u.object_key) == self.originals[u.landing_key], u.landing_key
                live.add(u.object_key)
        assert set(listing(store, "data/")) | set(listing(store, "archive/")) == live
        assert set(listing(store, "_platform/indexes/")) == catalog.registered_index_keys()
        assert listing(store, "quarantine/") == []
        audit_once(catalog)
        assert_verify_clean(store, catalog)

    def later(self):
        return self.now + LATER


class Export(Job):
    """This week's export of acme (six files, three datasets), replacing the one made before."""

    name = "export"

    def prepare(self, store, catalog):
        _ingest(store, catalog, {"acme/events/e0": _events("e0", 10), "acme/events/e1": _events("e1", 20),
                                 "acme/events/e2": _events("e2", 30), "acme/clicks/c0": _events("c0", 5),
                                 "acme/clicks/c1": _events("c1", 5), "acme/views/v0": _events("v0", 8),
                                 "other/events/o0": _events("o0", 7)})
        self.week = Week.containing(datetime.now(UTC)).key
        self.prefix = f"exports/acme/{self.week}/"
        export_week(store, catalog, "acme", self.week, run_id="first")

    def run(self, store, catalog):
        export_week(store, catalog, "acme", self.week, run_id="weekly")

    def outcome(self, store, catalog):
        manifest = read_manifest(store, "acme", self.week)
        keys = {u.id: u.landing_key for u in catalog.list_uploads()}
        rows = Counter()
        for part in manifest["parts"]:
            table = pq.read_table(store.fs_path(part["key"]), filesystem=store.filesystem)
            rows.update(zip(map(keys.get, table.column("_upload_id").to_pylist()), table.column("id").to_pylist()))
        return {"run_id": manifest["run_id"], "rows": manifest["rows"], "files": len(manifest["files"]),
                "content": sorted(rows.items())}

    def check(self, store, catalog):
        report = verify_export(store, self.prefix)
        assert report["ok"], report["problems"]
        manifest = read_manifest(store, "acme", self.week)
        assert manifest["run_id"] == "weekly" and manifest["rows"] == 78
        assert_verify_clean(store, catalog)

    def sweep(self, store, catalog):
        # The week's next run deletes unnamed parts once an hour old: one export is left.
        export_week(store, catalog, "acme", self.week, run_id="later", now=datetime.now(UTC) + timedelta(hours=2))
        current = read_manifest(store, "acme", self.week)["export_id"]
        assert {k[len(self.prefix):].split("/")[0] for k in listing(store, self.prefix)} == {"manifest.json", current}


class Erasure(Job):
    """`forget` of a subject after a whole lifecycle (fresh, used, archived, training sets, a
    feature version, an export, quarantine): the retry resumes the same request."""

    name = "erasure"
    needs_lifecycle = True

    def prepare(self, store, catalog):
        self.globex = {k: store.get_bytes(k) for k in tenant_objects(store, "globex")}

    def run(self, store, catalog):
        erasure.forget(store, catalog, subject(), client_id="ticket-7")

    def rerun(self, store, catalog):
        with catalog.engine.begin() as conn:  # time passes: the killed run's lease on the request runs out
            conn.execute(erasure_requests.update().where(erasure_requests.c.claimed_by.is_not(None))
                         .values(claimed_until=utcnow() - timedelta(hours=1)))
        receipt = erasure.forget(store, catalog, subject(), client_id="ticket-7")
        again = erasure.forget(store, catalog, subject(), client_id="ticket-7")
        assert again["already_done"] is True and without_times(again) == without_times(receipt)

    def outcome(self, store, catalog):
        state = erasure.request_state(catalog, erasure.request_id_for(subject(), "ticket-7"))
        receipt = json.loads(store.get_bytes(state["receipt_key"]))
        return {"state": state["state"], "receipt": without_times(receipt),
                "uploads": sorted((u.id, u.state, u.rows, u.object_key) for u in catalog.list_uploads())}

    def focus(self, labels):
        # Right after each object of a quarantined upload holding the subject is deleted: a
        # retry once found none of them listed any more and left the deletion out of the receipt.
        return [i + 2 for i, label in enumerate(labels) if label.startswith("store.delete quarantine/")]

    def check_writes(self, written):
        # Nothing rewritten twice, whatever the point: a step recorded before its write is
        # checked against both checksums on the retry. Only the receipt may be written
        # again (killed between its PUT and the commit that marks the request done).
        receipt = erasure.receipt_key("acme", erasure.request_id_for(subject(), "ticket-7"))
        assert {k for k, n in Counter(written).items() if n > 1} <= {receipt}, Counter(written).most_common(3)

    def check(self, store, catalog):
        assert listing(store, "_platform/erasure/") == [
            erasure.receipt_key("acme", erasure.request_id_for(subject(), "ticket-7"))]
        assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
        for ts in catalog.training_sets(tenant="acme"):
            if ts.state == COMPLETE:
                assert tsets.verify_snapshot(store, tsets.read_manifest(store, ts)) == []
        assert fs.verify_version(store, catalog, fs.get_version(catalog, "acme", "activity")) == []
        for key in listing(store, "exports/acme/"):
            if key.endswith("/manifest.json"):
                assert verify_export(store, key)["ok"]
        assert {k: store.get_bytes(k) for k in tenant_objects(store, "globex")} == self.globex
        assert_verify_clean(store, catalog)


def catalog_rows(catalog) -> dict:
    with catalog.engine.connect() as conn:
        return {t.name: sorted(tuple(map(str, r)) for r in conn.execute(sa.select(t))) for t in metadata.sorted_tables}


class Backup(Job):
    """A backup of the lifecycle's catalog and manifests; the next one must restore."""

    name = "backup"
    needs_lifecycle = True

    def run(self, store, catalog):
        create_backup(store, catalog)

    def outcome(self, store, catalog):
        target = Catalog(f"sqlite:///{self.scratch / f'restored-{uuid.uuid4().hex}.db'}")
        try:
            restore_backup(store, target.url, "latest")
            return {"restored": catalog_rows(target) == catalog_rows(catalog),
                    "complete": sum(b.complete for b in scan_backups(store))}
        finally:
            target.dispose()

    def check(self, store, catalog):
        assert_verify_clean(store, catalog)

    def sweep(self, store, catalog):
        prune_backups(store, now=datetime.now(UTC) + LATER)  # an incomplete backup a day old goes
        assert [b.complete for b in scan_backups(store)] == [True]


class Restore(Job):
    """A restore of the lifecycle's backup into a new, empty SQLite catalog."""

    name = "restore"
    needs_lifecycle = True

    def prepare(self, store, catalog):
        create_backup(store, catalog)

    def begin_point(self):
        self.target = f"sqlite:///{self.scratch / f'restored-{uuid.uuid4().hex}.db'}"

    def run(self, store, catalog):
        restore_backup(store, self.target, "latest")

    def rerun(self, store, catalog):
        try:
            restore_backup(store, self.target, "latest")
        except BackupError as err:
            # Only a restore whose transaction committed leaves rows: then the catalog is whole (below).
            assert "is not empty" in str(err)

    def outcome(self, store, catalog):
        target = Catalog(self.target)
        try:
            return {"restored": catalog_rows(target) == catalog_rows(catalog),
                    "revision": target.schema_revision()}
        finally:
            target.dispose()


class FeatureVersion(Job):
    """The next version of the lifecycle's feature table; a build whose builder died is
    marked failed after a while, and its objects are swept."""

    name = "feature_version"
    needs_lifecycle = True

    def run(self, store, catalog):
        fs.materialise_feature_table(store, catalog, "acme", "activity", actor="killed")

    def rerun(self, store, catalog):
        fs.abandon_stale_builds(catalog, now=utcnow() + fs.ABANDONED_AFTER + timedelta(minutes=1))
        fs.materialise_feature_table(store, catalog, "acme", "activity", actor="next")

    def outcome(self, store, catalog):
        versions = fs.list_versions(catalog, "acme", "activity")
        newest = fs.get_version(catalog, "acme", "activity")
        table = fs.read_version(store, catalog, newest)
        return {"complete": sum(v.state == COMPLETE for v in versions), "rows": newest.rows,
                "content": sorted(map(str, table.to_pylist()))}

    def check(self, store, catalog):
        versions = fs.list_versions(catalog, "acme", "activity")
        assert {v.state for v in versions} <= {COMPLETE, FAILED} and BUILDING not in {v.state for v in versions}
        assert fs.verify_version(store, catalog, fs.get_version(catalog, "acme", "activity")) == []
        assert_verify_clean(store, catalog)


JOBS = {job.name: job for job in (Ingestion(), TrainingSet(), Cleanup(), Export(), Erasure(), Backup(), Restore(),
                                  FeatureVersion())}


# -- the sweep ------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """The clean run, the count, then the points: split between LANES worker processes, each
    with its own work area, that reset it, fork the child that dies, re-run and check."""

    job: Job
    sandbox: LocalSandbox | PgS3Sandbox
    scratch: Path
    points: int = POINTS
    lanes: int = LANES

    def child(self, sb, kill_at: int | None) -> tuple[int, str]:
        def fn():
            store, catalog = sb.for_child()
            self.job.run(store, catalog)
        self.job.begin_point()
        sb.before_fork()
        return run_in_child(fn, kill_at, self.scratch)

    def go(self, template: Path | None = None) -> dict:
        sb, job = self.sandbox, self.job
        job.scratch = self.scratch
        if template is not None:
            sb.load(template)
        job.prepare(sb.store, sb.catalog)
        sb.save()
        # A clean run in this process: the reference, and every lazy import and model load
        # done once here rather than in each child.
        job.begin_point()
        written: list[str] = []
        with recording_writes(sb.store, written):
            job.run(sb.store, sb.catalog)
        job.check_writes(written)
        self.expected = job.outcome(sb.store, sb.catalog)
        job.check(sb.store, sb.catalog)
        # The same, counted, in a child: how many calls there are to choose from.
        sb.reset()
        status, note = self.child(sb, None)
        assert status == 0, note
        counted = json.loads(note)
        self.total = counted["calls"]
        assert self.total >= self.points, f"{job.name}: only {self.total} calls"
        focus = [n for n in job.focus(counted["labels"]) if 1 <= n <= self.total]
        assert len(focus) < self.points
        candidates = focus + [n for n in random.Random(f"{job.name}/{sb.kind}").sample(range(1, self.total + 1),
                                                                                        self.total) if n not in focus]
        lanes = [sb.lane(i) for i in range(self.lanes)]
        workers, results = [], []
        try:
            sb.before_fork()
            for i, lane in enumerate(lanes):
                lane.before_fork()
                want = self.points // self.lanes + (i < self.points % self.lanes)
                workers.append(fork(lambda fd, lane=lane, i=i, want=want: self.lane(lane, candidates[i::self.lanes],
                                                                                    want, fd), self.scratch))
            while workers:
                results.append(wait(*workers[0], LANE_SECONDS))
                workers.pop(0)
        finally:
            for pid, _ in workers:  # not reaped yet (another lane hung, or an interrupt): ours to end
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            for lane in lanes:
                lane.close()
        hit, finished = {}, []
        for status, note in results:
            assert status == 0, note[-6000:]
            for line in note.splitlines():
                record = json.loads(line)
                if "killed" in record:
                    hit[record["killed"]] = record["at"]
                else:
                    finished.append(record["finished"])
        assert len(hit) == self.points, (job.name, self.total, sorted(hit), finished)
        return {"job": job.name, "on": sb.kind, "calls": self.total, "points": sorted(hit), "finished_early": finished}

    def lane(self, sb, candidates: list[int], want: int, fd: int) -> int:
        """In a worker process: kill points until `want` were hit; each hit noted, as a JSON line."""
        job, hits = self.job, 0
        for n in candidates:
            if hits == want:
                break
            sb.reset()
            status, note = self.child(sb, n)
            if status == 0:  # fewer calls this time (threads, retries): take another point
                os.write(fd, (json.dumps({"finished": n}) + "\n").encode())
                continue
            assert status == KILLED, f"{job.name}: the child failed before its call {n}:\n{note}"
            killed = json.loads(note)
            note, written = killed["at"], killed["written"]
            hits += 1
            try:
                with recording_writes(sb.store, written):
                    job.rerun(sb.store, sb.catalog)
                job.check_writes(written)
                got = job.outcome(sb.store, sb.catalog)
                assert got == self.expected, {k: {"got": str(got[k])[:1500], "clean run": str(self.expected[k])[:1500]}
                                              for k in got if got[k] != self.expected.get(k)}
                job.check(sb.store, sb.catalog)
                later = job.later()
                job.sweep(sb.store, sb.catalog)
                sweep_and_verify(sb.store, sb.catalog, later)
            except Exception as err:
                raise AssertionError(f"{job.name} on {sb.kind}, killed at call {n} of {self.total} ({note}): "
                                     f"{type(err).__name__}: {err}") from err
            os.write(fd, (json.dumps({"killed": n, "at": note}) + "\n").encode())
        return 0


@pytest.fixture(scope="module")
def lifecycle_template(tmp_path_factory) -> Path:
    """test_erasure's lifecycle (every kind of object a tenant can have), built once."""
    sandbox = LocalSandbox(tmp_path_factory.mktemp("lifecycle"))
    lifecycle(sandbox.store, sandbox.catalog)
    sandbox.save()
    return sandbox.template


@pytest.mark.parametrize("name", list(JOBS))
def test_a_job_killed_at_random_points_converges_on_the_next_run(name, tmp_path, request):
    job = JOBS[name]
    template = request.getfixturevalue("lifecycle_template") if job.needs_lifecycle else None
    sandbox = LocalSandbox(tmp_path / "sandbox")
    try:
        summary = Sweep(job, sandbox, tmp_path).go(template)
    finally:
        sandbox.close()
    print(summary)


@pytest.mark.parametrize("name", ["ingestion", "training_set"])
def test_killed_jobs_converge_on_postgresql_and_the_s3_endpoint(name, tmp_path, s3_store):
    sandbox = PgS3Sandbox()
    try:
        summary = Sweep(JOBS[name], sandbox, tmp_path, points=PG_POINTS).go()
    finally:
        sandbox.close()
    print(summary)

"""Right to erasure (GDPR art. 17): one data subject erased from every object of a tenant,
with a receipt. Plain Python, no Dagster.

**Finding.** The subject's raw value becomes its pseudonym(s) under the tenant's key
(per kind: emails and IPs are lower-cased first, so without `kinds` both forms are
looked up). The erasure index (`indexes.uploads_holding_subject`, one small run per
fresh upload) names the uploads holding it; no data file is read to find them. From
those uploads: their data/ or archive/ Parquet and index runs; the complete training
sets holding them (`training_set_files`), the complete feature versions built from them
(`feature_version_sources`) and the export weeks whose manifest lists them. Rows match
when a personal-data column of the upload (`pii_columns` of its ingestion report,
restricted by `kinds` and `column`) holds the subject's pseudonym; in training-set and
export parts also `_upload_id` must be one of those uploads; in feature parts (no
lineage column; transformations may rename) any string column holding the pseudonym.

Free text never holds an email, phone or IP: ingestion redacted them. A name may be
written in free text, where no index points at it: when the subject may be a name, the
free-text columns of the tenant's uploads are scanned for it (the tenant's alone) and it
is redacted in place ("[redacted]"), in the data and in the training-set, export and
feature parts copied from it. Quarantine holds raw values (rejected rows, the original
bytes of a rejected upload), which were never pseudonymised and so are not indexed: that
prefix is scanned for the raw value, and so are the originals of uploads rejected as
`invalid_key` whose landing key lies under the tenant's prefix (`landing/{tenant}/`).

**Not coming back.** Before it looks for the subject, a request records its pseudonyms in
the tenant's suppression list (`erasure_suppressions`): ingestion drops rows holding them
and rejected rows holding the raw value, so uploads still waiting in landing, or uploaded
later, do not bring the subject back (see `Catalog.suppressions`).

**Renumbered rows.** Erased rows shift the rows after them; near-duplicate flags
(`_near_duplicate_of_upload`, `_near_duplicate_of_row`) name a row of an upload by
number, so every upload of the dataset whose flags point at a rewritten one is rewritten
with the numbers moved (a flag pointing at an erased row is cleared).

**Rewriting.** A data object, an index run or a quarantine file is rewritten at its own
key: every layout rule (retention's moves, the orphan sweep) derives these keys from
the upload id, and one PUT replaces an object whole (readers get the old or the new
bytes, never a mix). A part of a training set, feature version or export is written
under a new key beside it (`part-00000.e{request}.parquet`), then the manifest is
replaced (one PUT: readers of the old manifest still find the old parts), then the
catalog points at the new manifest, then the old parts go. Each object's step is
recorded in `erasure_steps` before its new bytes are written (the before and after
sha256: a write-ahead record) and marked done in the transaction that updates the
catalog (rows, checksums, manifest sha256), so a retry after a crash finishes exactly
what was left and never erases an object twice.

**Exactly once.** The request id is derived from the tenant, the subject's pseudonyms
and a client id (or the UTC day); `erasure_requests` holds it `started`, with the uploads
found at the start (an object already rewritten no longer holds the subject, so a retry
must not look again), then `done` once the receipt is written. A finished request
returns its stored receipt. One run works on a request at a time: it holds a lease on
the request's row, renewed with every step it records; a second run waits for it (then
returns the receipt) or gives up with `ErasureBusy`; a crashed run's lease runs out and
the next run takes the request over.

**Inside the tenant's scope.** Like every tenant job, `forget` scopes the store and catalog
it is given on entry (`tenancy.scoped`): its bookkeeping is catalog methods attributed to
the tenant (`erasure_requests`, `erasure_steps`, and the rows it rewrites), so a bug inside
it cannot read or write another tenant's objects or rows. The one thing outside the scope
is reached through a narrow view, `tenancy.InvalidKeyOriginals`: the originals of the
tenant's uploads rejected as `invalid_key` (under `quarantine/_invalid/`, which belongs to
no tenant), read and deleted, nothing else.

**The receipt** (`_platform/erasure/{tenant}/{request_id}.json`) is built from the
steps: every object rewritten (before/after key, sha256, rows, bytes), deleted, or not
rewritten and why. It holds a sha256 of the pseudonyms, never the raw value nor a
pseudonym (a pseudonym would let anyone holding the data find the subject's rows).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import secrets
import socket
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from data_platform import layout, tenancy
from data_platform.backups import export_manifest_keys, read_object
from data_platform.catalog import (
    ERASURE_DONE, ERASURE_STARTED, INGESTED, QUARANTINED, Catalog, ErasureLeaseLost, RetentionMove, Upload,
    fewer_counts,
)
from data_platform.indexes import ROWS, SUBJECTS, run_parquet_options, uploads_holding_subject
from data_platform.privacy import (
    REDACTED, Pseudonymizer, kind_of_value, redact_pattern, sorted_distinct, subject_keys_of, value_pattern,
    value_regex,
)
from data_platform.refinement import NEAR_DUP_ROW, NEAR_DUP_UPLOAD
from data_platform.storage import ObjectChanged, ObjectStore

KINDS = ("email", "phone", "ip", "name")
RECEIPTS = f"{layout.PLATFORM}/erasure"
SOURCE_COLUMN = "_upload_id"  # training sets and exports: the upload each row came from
STARTED, DONE = ERASURE_STARTED, ERASURE_DONE
WRITING = "writing"  # a step's new bytes may or may not be in the store yet
WRITTEN = "written"  # a part's new bytes are in the store; its manifest is still the old one
REWRITTEN, REMOVED, NOT_REWRITTEN = "rewritten", "deleted", "not_rewritten"
ERASED_REASON = "erased_subject"  # the reason code of a quarantined upload deleted by an erasure
_PART_SUFFIX = re.compile(r"\.e[0-9a-f]{8}(?=\.[a-z]+$)")
INVALID_PREFIX = f"{layout.QUARANTINE}/_invalid/"  # originals of uploads rejected as invalid_key
LEASE = timedelta(minutes=5)  # a run's hold on its request, renewed with every step it records
WAIT_SECONDS = 30.0  # how long a second run of a request waits for the first before giving up
_POLL_SECONDS = 0.2
MATCHED_UPLOADS_SHOWN = 20  # ingestion reports the 20 uploads its near-duplicates matched most

# What the receipt says about objects erasure never has to touch.
NOTES = {
    "free_text": "emails, phone numbers and IP addresses in free text were redacted at ingestion; "
                 "names written in free text are searched and redacted when the subject may be a name "
                 "(not an email, phone number or IP address): see found.scanned",
    "backups": "catalog backups hold catalog rows (states, counts, checksums, column names), no row values; "
               "their manifest copies hold keys and checksums; the suppression list (pseudonyms) is a catalog "
               "table and is in them",
    "landing": "uploads still waiting in landing, and later uploads, are covered by the suppression list: "
               "ingestion drops their rows holding the subject's pseudonym and their rejected rows holding "
               "the raw value (a name inside free text of a later upload is not caught: no raw value is kept)",
    "near_duplicate_flags": "flags in uploads' data that named a row of a rewritten upload follow its new "
                            "numbering (cleared when that row was erased); training-set, export and feature "
                            "copies keep the flags they were built with",
}


class ErasureError(RuntimeError):
    """A request that cannot run as asked, or not now (e.g. a training set is building)."""


class ErasureBusy(ErasureError):
    """Another run holds the request (its lease has not run out): retry later."""


# -- the subject --------------------------------------------------------------------------------


class Subject:
    """One data subject of one tenant: pseudonyms per kind, and a pattern for raw text.
    Holds the raw value only inside the compiled pattern; never printed or stored."""

    def __init__(self, key: bytes, tenant: str, value: str, *, kinds: Iterable[str] | None = None,
                 column: str | None = None):
        layout.check_name("tenant", tenant)
        value = (value or "").strip()
        if not value:
            raise ErasureError("the subject is empty")
        kinds = tuple(kinds) if kinds else KINDS
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ErasureError(f"unknown kind {unknown[0]!r}; expected one of {', '.join(KINDS)}")
        self.tenant, self.kinds, self.column = tenant, kinds, column
        ps = Pseudonymizer(key, tenant)
        self.pseudonyms = {kind: ps.pseudonym(value, kind) for kind in kinds}
        # Raw text (quarantine): the value not glued to a longer word or address.
        self._raw = re.compile(rf"(?<![\w.+@-]){re.escape(value)}(?![\w@-])", re.IGNORECASE)
        # Free text, when the value may be a name (emails, phones and IPs were redacted at
        # ingestion): RE2 for Arrow columns, `re` for text handled line by line.
        self.may_be_name = "name" in kinds and kind_of_value(value) is None
        self._text_pattern = value_pattern(value) if self.may_be_name else None
        self._text_regex = value_regex(value) if self.may_be_name else None

    def __repr__(self) -> str:
        return f"Subject(tenant={self.tenant!r}, kinds={self.kinds!r}, column={self.column!r})"

    @property
    def sha256(self) -> str:
        """What identifies the subject in the catalog and the receipt: not reversible to a
        pseudonym, let alone to the value."""
        joined = "\n".join(sorted(set(self.pseudonyms.values())))
        return hashlib.sha256(f"erasure\n{self.tenant}\n{joined}".encode()).hexdigest()

    def in_raw(self, text: str) -> bool:
        return self._raw.search(text) is not None

    def suppression_entries(self) -> list[tuple[str, str | None, str]]:
        """What the tenant's suppression list records: (kind, column or None, pseudonym)."""
        return [(kind, self.column, pseudonym) for kind, pseudonym in sorted(self.pseudonyms.items())]

    def redact(self, array) -> tuple[pa.Array, int]:
        """Free text with the value replaced by "[redacted]", and how many times."""
        return redact_pattern(array, self._text_pattern)

    def redact_text(self, text: str) -> tuple[str, int]:
        return self._text_regex.subn(REDACTED, text)

    def text_hits(self, array) -> pa.Array:
        """Per value: whether the free text holds the value (nulls: False)."""
        return pc.fill_null(pc.match_substring_regex(array, self._text_pattern), False)

    def columns_of(self, upload: Upload) -> dict[str, set[str]]:
        """The upload's personal-data columns this request matches, with the pseudonyms to find."""
        pii = upload.report.get("pii_columns") or {}
        return {name: {self.pseudonyms[kind]} for name, kind in pii.items()
                if kind in self.pseudonyms and (self.column is None or name == self.column)}


def request_id_for(subject: Subject, client_id: str | None = None, day: date | None = None) -> str:
    """Same tenant, subject and client id (or, without one, the same UTC day): same request."""
    bucket = f"client:{client_id}" if client_id else f"day:{(day or datetime.now(UTC).date()).isoformat()}"
    scope = f"{','.join(sorted(subject.kinds))}|{subject.column or ''}"
    return hashlib.sha256(f"{subject.sha256}\n{scope}\n{bucket}".encode()).hexdigest()[:32]


def receipt_key(tenant: str, request_id: str) -> str:
    return f"{RECEIPTS}/{layout.check_name('tenant', tenant)}/{request_id}.json"


# -- the request --------------------------------------------------------------------------------


def forget(store: ObjectStore, catalog: Catalog, subject: Subject, *, client_id: str | None = None,
           dry_run: bool = False, actor: str = "erasure", checkpoint: Callable[[str], None] | None = None,
           now: datetime | None = None, lease: timedelta = LEASE, wait: float = WAIT_SECONDS) -> dict:
    """Erase the subject from every object of its tenant and return the receipt (or, with
    `dry_run`, what would change: nothing is written, in the store or the catalog).

    While another run holds the same request, waits up to `wait` seconds for it (then
    returns its receipt) and raises `ErasureBusy` after that."""
    now = now or datetime.now(UTC)
    request_id = request_id_for(subject, client_id, now.date())
    # The tenant's scope, like every tenant job; plus the one narrow view it needs outside
    # it, built from the unscoped objects before they are put out of reach.
    invalid = tenancy.InvalidKeyOriginals(store, catalog, subject.tenant)
    store, catalog = tenancy.scoped(store, catalog, subject.tenant)
    if dry_run:
        run = _Run(store, catalog, subject, request_id, dry=True, actor=actor, checkpoint=None, invalid=invalid)
        run.execute(_find_uploads(store, catalog, subject))
        return run.receipt(requested_at=now, completed_at=None)
    row = _begin(store, catalog, subject, request_id, actor, now)
    done = _stored_receipt(store, row)
    if done is not None:
        return done
    owner = f"{actor}@{socket.gethostname()}:{os.getpid()}"[:119] + f":{secrets.token_hex(4)}"
    row = _take_lease(catalog, subject.tenant, request_id, owner, lease, wait)
    try:
        done = _stored_receipt(store, row)  # finished by the run this one waited for
        if done is not None:
            return done
        run = _Run(store, catalog, subject, request_id, dry=False, actor=actor, checkpoint=checkpoint, owner=owner,
                   lease=lease, invalid=invalid)
        run.execute(json.loads(row.scope)["uploads"])
        receipt = run.receipt(requested_at=row.created_at.replace(tzinfo=UTC), completed_at=datetime.now(UTC))
        body = json.dumps(receipt, indent=2, sort_keys=True).encode()
        key = receipt_key(subject.tenant, request_id)
        run.renew()
        store.put_bytes(key, body)
        run.check("after_receipt")
        finished = catalog.finish_erasure_request(subject.tenant, request_id, owner, receipt_key=key,
                                                  receipt_sha256=hashlib.sha256(body).hexdigest())
        if not finished:
            raise ErasureError(f"erasure {request_id} lost its lease to another run before it finished; "
                               "that run writes the receipt")
        return receipt
    finally:
        catalog.release_erasure_request(subject.tenant, request_id, owner)  # a run that stops lets go at once


def _stored_receipt(store: ObjectStore, row: sa.Row) -> dict | None:
    """A finished request's receipt, as stored (None if not finished, or the receipt is
    gone or changed: then the steps, all done, give it again)."""
    if row.state != DONE:
        return None
    body = read_object(store, row.receipt_key)
    if body is not None and hashlib.sha256(body).hexdigest() == row.receipt_sha256:
        return {**json.loads(body), "already_done": True}
    return None


def _take_lease(catalog: Catalog, tenant: str, request_id: str, owner: str, lease: timedelta,
                wait: float) -> sa.Row:
    """Hold the request for `owner` once it is free: held by nobody, or its holder's lease
    ran out (a crashed run). Returns the request's row (`done` if the run waited for
    finished it; a finished request whose receipt is gone is written again under the lease)."""
    deadline = time.monotonic() + wait
    while True:
        taken, row = catalog.claim_erasure_request(tenant, request_id, owner, lease=lease)
        if taken:
            return row
        left = deadline - time.monotonic()
        if left <= 0:
            until = row.claimed_until.replace(tzinfo=UTC).isoformat() if row.claimed_until else None
            raise ErasureBusy(f"erasure request {request_id} is being run by {row.claimed_by} (lease until {until}); "
                              "retry once it is done (or, if that run died, once its lease has run out)")
        time.sleep(min(_POLL_SECONDS, left))


def _find_uploads(store: ObjectStore, catalog: Catalog, subject: Subject) -> list[int]:
    found: set[int] = set()
    for pseudonym in set(subject.pseudonyms.values()):
        found.update(uploads_holding_subject(store, catalog, subject.tenant, pseudonym))
    out = []
    for upload_id in sorted(found):
        u = catalog.get(upload_id)
        if u is not None and u.tenant == subject.tenant and u.state in INGESTED and u.object_key:
            out.append(upload_id)
    return out


def _begin(store: ObjectStore, catalog: Catalog, subject: Subject, request_id: str, actor: str,
           now: datetime) -> sa.Row:
    """The request's row: created `started` with the uploads found now, or the one a
    first attempt created (its list wins: rewritten objects no longer hold the subject).
    The subject goes on the tenant's suppression list first: an upload ingested after
    that drops its rows, one committed before it is found by the lookup that follows."""
    row = catalog.erasure_request(request_id, subject.tenant)
    if row is not None:
        return row
    catalog.record_suppressions(subject.tenant, request_id, subject.suppression_entries())
    scope = {"kinds": list(subject.kinds), "column": subject.column, "uploads": _find_uploads(store, catalog, subject)}
    return catalog.start_erasure_request(subject.tenant, request_id, subject_sha256=subject.sha256, scope=scope,
                                         actor=actor)


def request_state(catalog: Catalog, request_id: str) -> dict | None:
    row = catalog.erasure_request(request_id)
    return dict(row._mapping) if row else None


# -- one run of a request -----------------------------------------------------------------------


@dataclass
class _Step:
    key: str
    what: str
    action: str
    state: str
    upload_id: int | None
    detail: dict = field(default_factory=dict)


class _Run:
    def __init__(self, store: tenancy.TenantStore, catalog: tenancy.TenantCatalog, subject: Subject,
                 request_id: str, *, dry: bool, actor: str, checkpoint: Callable[[str], None] | None,
                 invalid: tenancy.InvalidKeyOriginals, owner: str | None = None, lease: timedelta = LEASE):
        self.store, self.catalog, self.subject, self.request_id = store, catalog, subject, request_id
        self.invalid = invalid  # the originals of the tenant's invalid keys, outside the scope
        self.dry, self.actor, self._checkpoint = dry, actor, checkpoint
        self.owner, self.lease = owner, lease
        self.steps: dict[str, _Step] = {} if dry else self._load_steps()
        self.uploads: dict[int, Upload] = {}  # found through the subject index: rows to erase
        self.upload_ids: list[int] = []
        self.erased_rows: dict[int, np.ndarray] = {}  # upload -> its erased rows (numbers before the erasure)
        self.redacted: set[int] = set()  # uploads whose free text holds the value (a name)
        self.text_columns: set[str] = set()  # free-text columns of the tenant's uploads (names)
        self.scanned: list[str] = []
        self._tmp = None

    def check(self, point: str) -> None:
        """A named point between two effects (tests inject crashes here)."""
        if self._checkpoint is not None:
            self._checkpoint(point)

    # -- the lease and the ledger of steps

    def renew(self) -> None:
        """Extend this run's lease on the request; raises if another run took it over (this
        run's lease ran out): that run carries on from the steps recorded."""
        if self.dry or self.owner is None:
            return
        self._ledger("renew_erasure_request")

    def _ledger(self, method: str, *args, **kwargs):
        """A catalog method that records for this run's request: the lease is renewed in
        its transaction, which records nothing if another run took the request over."""
        try:
            return getattr(self.catalog, method)(self.subject.tenant, self.request_id, *args, owner=self.owner,
                                                 lease=self.lease, **kwargs)
        except ErasureLeaseLost as err:
            raise ErasureError(str(err)) from None

    def _load_steps(self) -> dict[str, _Step]:
        return {r["key"]: _Step(**r) for r in self.catalog.erasure_steps(self.subject.tenant, self.request_id)}

    def _save(self, *steps: _Step, commit: str = "save_erasure_steps", **change):
        """Record steps, with the catalog change that goes with them (`commit`: the catalog
        method making it, which records the steps in the same transaction); its answer."""
        for step in steps:
            self.steps[step.key] = step
        if not self.dry:
            return self._ledger(commit, **change, steps=[asdict(step) for step in steps])
        return None

    def _drop(self, keys: list[str]) -> None:
        """Forget steps that no longer describe the store (a replaced export)."""
        for key in keys:
            self.steps.pop(key, None)
        if not self.dry and keys:
            self._ledger("drop_erasure_steps", keys)

    def _done(self, key: str) -> bool:
        step = self.steps.get(key)
        return step is not None and step.state == DONE

    # -- the whole request

    def execute(self, upload_ids: list[int]) -> None:
        self.upload_ids = list(upload_ids)
        for upload_id in self.upload_ids:
            u = self.catalog.get(upload_id)
            if u is not None:
                self.uploads[upload_id] = u
        with tempfile.TemporaryDirectory(prefix="erasure-") as tmp:
            self._tmp = Path(tmp)
            self._scan_free_text()
            self._refuse_building_sets()
            self._plan()
            for upload_id in sorted(set(self.upload_ids) | self.redacted):
                self._upload(upload_id, erase=upload_id in self.uploads)
            self._flag_holders()
            self._training_sets()
            self._feature_versions()
            self._exports()
            self._quarantine()
            self._invalid_keys()
        self.check("before_receipt")

    def _affected(self) -> set[int]:
        """Uploads whose copies (training sets, feature versions, exports) must change."""
        return set(self.uploads) | self.redacted

    def _refuse_building_sets(self) -> None:
        ids = sorted(self._affected())
        if not ids:
            return
        held = self.catalog.training_set_building_from(self.subject.tenant, ids)
        if held is not None:
            # Its build may be reading the old bytes right now: erasing under it would let
            # the subject into the snapshot. Nothing has been changed; retry once it is complete.
            raise ErasureError(f"training set {held.name} v{held.version} is being built from upload "
                               f"{held.upload_id}; retry once it is complete")

    # -- names in free text: not indexed, so the tenant's free-text columns are scanned

    def _scan_free_text(self) -> None:
        """When the subject may be a name: the uploads of the tenant whose free-text columns
        hold it (read column by column, a batch at a time, matched in Arrow). Bounded to the
        tenant; uploads found through the subject index are redacted as they are rewritten."""
        if not self.subject.may_be_name:
            return
        candidates = [u for u in self.catalog.list_uploads(tenant=self.subject.tenant)
                      if u.state in INGESTED and u.object_key]
        if self.subject.column is not None and not any(
                (u.report.get("pii_columns") or {}).get(self.subject.column) == "name" for u in candidates):
            return  # restricted to a column that holds no names
        # Uploads a first attempt redacted no longer hold the value: their copies still may.
        self.redacted |= {s.upload_id for s in self.steps.values()
                          if s.what == "data" and s.detail.get("values_redacted")}
        scanned = 0
        for u in candidates:
            columns = _text_columns_of(u)
            self.text_columns |= set(columns)
            if not columns:
                continue
            scanned += 1
            if u.id in self.redacted:
                continue  # a first attempt redacted it already
            if u.id in self.uploads or self._holds_text(u.object_key, columns):
                self.redacted.add(u.id)
        self.scanned.append(f"free-text columns of {scanned} upload(s) of tenant {self.subject.tenant} "
                            "(a name written in free text is not indexed)")

    def _holds_text(self, key: str, columns: list[str]) -> bool:
        try:
            return self._read_text_hits(key, columns)
        except FileNotFoundError:
            return False  # deleted or moved since it was listed

    def _read_text_hits(self, key: str, columns: list[str]) -> bool:
        with self.store.filesystem.open_input_file(self.store.fs_path(key)) as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            if not present:
                return False
            for batch in parquet.iter_batches(columns=present, batch_size=65_536):
                for column in batch.columns:
                    if pc.any(self.subject.text_hits(column.cast(pa.string()))).as_py():
                        return True
        return False

    # -- data objects and their index runs

    def _plan(self) -> None:
        """The rows each found upload loses, numbered as before the erasure, before any is
        rewritten: another upload's near-duplicate flags may name them. From the step of a
        first attempt, or else from the upload's personal-data columns alone."""
        for upload_id in self.upload_ids:
            u = self.uploads.get(upload_id)
            if u is None or u.state not in INGESTED or not u.object_key:
                continue
            step = self.steps.get(u.object_key)
            if step is not None and step.what == "data":
                self.erased_rows[upload_id] = np.array(step.detail.get("erased_rows", []), dtype=np.int64)
                continue
            columns = self.subject.columns_of(u)
            try:
                with self.store.filesystem.open_input_file(self.store.fs_path(u.object_key)) as f:
                    parquet = pq.ParquetFile(f)
                    present = [c for c in columns if c in parquet.schema_arrow.names]
                    table = parquet.read(columns=present) if present else pa.table({})
            except FileNotFoundError:
                continue  # moved or deleted since: `_upload` says what to do
            self.erased_rows[upload_id] = np.flatnonzero(_match(table, columns)) if present else np.zeros(0, np.int64)

    def _upload(self, upload_id: int, *, erase: bool) -> None:
        """Rewrite one upload's data object at its key: the subject's rows erased (`erase`),
        near-duplicate flags pointing at erased or renumbered rows fixed, the value
        redacted in free text (a name); then its index runs, then the catalog."""
        u = self.catalog.get(upload_id)
        if u is None or u.state not in INGESTED or not u.object_key:
            return  # deleted since the request started: nothing of it is left to erase
        if erase:
            self.uploads[upload_id] = u
        data = self.steps.get(u.object_key)
        if data is not None and data.state == DONE:
            return
        local = self._tmp / f"data-{upload_id}.parquet"
        current, current_sha = self._download(u.object_key, local)
        if data is not None and current_sha == data.detail["after"]["sha256"]:
            new_local = local  # PUT before a crash
        else:
            if data is not None and current_sha != data.detail["before"]["sha256"]:
                raise ErasureError(f"{u.object_key} changed while erasure {self.request_id} was under way")
            table = pq.read_table(current)
            mask = _match(table, self.subject.columns_of(u)) if erase else np.zeros(table.num_rows, dtype=bool)
            erased = np.flatnonzero(mask)
            if erase:
                self.erased_rows[upload_id] = erased
            new = table.filter(pa.array(~mask))
            new, remapped = self._remap_flags(new)
            new, redacted, redacted_rows = self._redact(new, u) if upload_id in self.redacted else (new, 0, [])
            if not len(erased) and not remapped and not redacted:
                return  # a subject-key collision named this upload, or nothing of it changes
            new_local = self._tmp / f"data-{upload_id}.new.parquet"
            _write_parquet(new, new_local, table.schema)
            data = _Step(u.object_key, "data", REWRITTEN, WRITING, upload_id, {
                "before": {"key": u.object_key, "sha256": current_sha, "rows": table.num_rows,
                           "bytes": current.stat().st_size},
                "after": {"key": u.object_key, "sha256": _sha(new_local), "rows": table.num_rows - len(erased),
                          "bytes": new_local.stat().st_size},
                "rows_erased": int(len(erased)), "erased_rows": erased.tolist()})
            if remapped:
                data.detail["flags_remapped"] = remapped
            if redacted:
                data.detail.update(values_redacted=redacted, redacted_rows=redacted_rows)
            self._save(data)
            if not self.dry:
                self.store.upload_file(new_local, u.object_key)
            self.check(f"after_data:{upload_id}")
        runs = self._index_runs(u, new_local, np.array(data.detail["erased_rows"], dtype=np.int64),
                                np.array(data.detail.get("redacted_rows", []), dtype=np.int64))
        if self.dry:
            for step in [data] + runs:
                step.state = DONE
            return
        for step in [data] + runs:
            step.state = DONE
        after = data.detail["after"]
        moved = self._save(data, *runs, commit="commit_erased_upload", upload_id=upload_id, object_key=u.object_key,
                           rows=after["rows"], sha256=after["sha256"], size=after["bytes"],
                           index_run_entries={s.key: s.detail["after"]["rows"] for s in runs if s.action == REWRITTEN})
        if not moved:
            raise ErasureError(f"upload {upload_id} moved while erasure {self.request_id} rewrote it; retry")
        self.check(f"after_upload:{upload_id}")

    def _remap_flags(self, table: pa.Table) -> tuple[pa.Table, int]:
        """Near-duplicate flags naming a row of an upload that loses rows: the row's new
        number (the erased rows before it fewer), or no flag when that row was erased.
        Returns the table and how many flags changed."""
        if NEAR_DUP_UPLOAD not in table.column_names or NEAR_DUP_ROW not in table.column_names:
            return table, 0
        targets = {x: e for x, e in self.erased_rows.items() if len(e)}
        if not targets or table.num_rows == 0:
            return table, 0
        of_upload = pc.fill_null(table.column(NEAR_DUP_UPLOAD), -1).to_numpy().astype(np.int64)
        of_row = pc.fill_null(table.column(NEAR_DUP_ROW), -1).to_numpy().astype(np.int64)
        new_row, cleared = of_row.copy(), np.zeros(len(of_row), dtype=bool)
        for x, erased in targets.items():
            at = np.flatnonzero(of_upload == x)
            if not len(at):
                continue
            rows = of_row[at]
            cleared[at] = np.isin(rows, erased)
            new_row[at] = rows - np.searchsorted(erased, rows)
        changed = int((cleared | (new_row != of_row)).sum())
        if not changed:
            return table, 0
        absent = (of_upload < 0) | cleared
        i_up, i_row = table.schema.get_field_index(NEAR_DUP_UPLOAD), table.schema.get_field_index(NEAR_DUP_ROW)
        table = table.set_column(i_up, table.schema.field(i_up),
                                 pa.array(of_upload, table.schema.field(i_up).type, mask=absent))
        table = table.set_column(i_row, table.schema.field(i_row),
                                 pa.array(new_row, table.schema.field(i_row).type, mask=absent))
        return table, changed

    def _redact(self, table: pa.Table, u: Upload) -> tuple[pa.Table, int, list[int]]:
        """The value redacted in the upload's free-text columns: the table, how many
        occurrences, and the rows changed (for the near-duplicate run)."""
        changed = np.zeros(table.num_rows, dtype=bool)
        table, total = self._redact_columns(table, set(_text_columns_of(u)), changed)
        return table, total, np.flatnonzero(changed).tolist()

    def _flag_holders(self) -> None:
        """The other uploads of a dataset whose near-duplicate flags name a row of an
        upload that lost rows: rewritten with the numbers moved. The ingestion report names
        the uploads a near-duplicate matched (the 20 most matched): only uploads matching
        one of those, or more than 20, are read."""
        targets = {x for x, e in self.erased_rows.items() if len(e)}
        if not targets:
            return
        datasets = {self.uploads[x].dataset for x in targets if x in self.uploads}
        done = set(self.upload_ids) | self.redacted
        for dataset in sorted(datasets):
            for u in self.catalog.list_uploads(tenant=self.subject.tenant, dataset=dataset):
                if u.id in done or u.state not in INGESTED or not u.object_key:
                    continue
                step = self.steps.get(u.object_key)
                if step is None:
                    near = u.report.get("near_duplicates") or {}
                    matched = near.get("matched_uploads") or {}
                    if near.get("action") == "drop" or not matched:
                        continue
                    if len(matched) < MATCHED_UPLOADS_SHOWN and not targets & {int(k) for k in matched}:
                        continue
                self._upload(u.id, erase=False)

    def _index_runs(self, u: Upload, new_data: Path, erased: np.ndarray, redacted: np.ndarray) -> list[_Step]:
        """The upload's index runs after its rows changed: the subjects run rebuilt (rows
        erased), the near-duplicate run without the erased rows' entries (later rows
        renumbered) nor those of rows whose text was redacted (sketched from the name)."""
        out = []
        if not len(erased) and not len(redacted):
            return out  # only near-duplicate flags moved: the runs stay as they are
        for kind, key in sorted(self.catalog.index_run_keys_of_upload(u.id).items()):
            step = self.steps.get(key)
            if step is not None and step.state == DONE:
                continue
            if kind == ROWS:
                # Hashes of the raw rows (before pseudonymisation, in the contract's types;
                # sorted, not row-aligned): neither the erased rows' entries can be told apart
                # nor the run rebuilt from pseudonymised data.
                out.append(_Step(key, "index_run:rows", NOT_REWRITTEN, DONE, u.id, {
                    "reason": "unkeyed 64-bit hashes of whole raw rows, sorted: the erased rows' entries cannot "
                              "be told apart (and only stop the same raw row from being ingested again)"}))
                continue
            if kind == SUBJECTS and not len(erased):
                continue
            local = self._tmp / f"run-{kind}.parquet"
            _, current_sha = self._download(key, local)
            if step is not None and current_sha == step.detail["after"]["sha256"]:
                out.append(step)  # already in place
                continue
            if step is not None and current_sha != step.detail["before"]["sha256"]:
                raise ErasureError(f"{key} changed while erasure {self.request_id} was under way")
            run = pq.read_table(local)
            if kind == SUBJECTS:
                new = pa.table({"subject": _subject_keys(pq.read_table(new_data), u)})
            else:  # near_dup: one entry per kept row, by row number; later rows move up
                rows = run.column("row").to_numpy().astype(np.int64)
                shifted = rows - np.searchsorted(erased, rows)
                keep = ~np.isin(rows, erased) & ~np.isin(shifted, redacted)
                new = run.filter(pa.array(keep)).set_column(
                    run.schema.get_field_index("row"), run.schema.field("row"),
                    pa.array(shifted[keep], run.schema.field("row").type))
                new = new.replace_schema_metadata(run.schema.metadata)
            new_local = self._tmp / f"run-{kind}.new.parquet"
            pq.write_table(new, new_local, **run_parquet_options(kind, new.schema))
            step = _Step(key, f"index_run:{kind}", REWRITTEN, WRITING, u.id, {
                "before": {"key": key, "sha256": current_sha, "rows": run.num_rows, "bytes": local.stat().st_size},
                "after": {"key": key, "sha256": _sha(new_local), "rows": new.num_rows,
                          "bytes": new_local.stat().st_size}})
            self._save(step)
            if not self.dry:
                self.store.upload_file(new_local, key)
            out.append(step)
        return out

    # -- manifests and their parts

    def _training_sets(self) -> None:
        ids = sorted(self._affected())
        if not ids:
            return
        for ts in self.catalog.complete_training_sets_holding(self.subject.tenant, ids):
            self._container(f"{ts.prefix}manifest.json", "training_set", ts.prefix, fmt="parquet", lineage=True,
                            catalog_row=ts)

    def _feature_versions(self) -> None:
        ids = sorted(self._affected())
        if not ids:
            return
        for v in self.catalog.complete_feature_versions_from(self.subject.tenant, ids):
            self._container(f"{v.prefix}manifest.json", "feature", v.prefix, fmt="parquet", lineage=False,
                            catalog_row=v)

    def _exports(self) -> None:
        ids = self._affected()
        if not ids:
            return
        for key in sorted(export_manifest_keys(self.store, self.subject.tenant)):
            if self._done(key):
                self._container(key, "export", "", fmt="", lineage=True, catalog_row=None)
                continue
            body = read_object(self.store, key)
            if body is None:
                continue
            manifest = json.loads(body)
            if not ids & {f.get("upload_id") for f in manifest.get("files", ())} and key not in self.steps:
                continue
            self._container(key, "export", f"{key[:-len('manifest.json')]}{manifest.get('export_id')}/",
                            fmt=manifest.get("format", "parquet"), lineage=True, catalog_row=None)

    def _container(self, manifest_key: str, what: str, prefix: str, *, fmt: str, lineage: bool, catalog_row) -> None:
        """Rewrite the parts holding the subject under new keys, then the manifest, then the
        catalog's record of it, then delete the old parts."""
        if self._done(manifest_key):
            if not self.dry:  # a crash may have come between the commit and these deletes
                self.store.delete_many(self.steps[manifest_key].detail["parts"])
            return
        body = read_object(self.store, manifest_key)
        if body is None:
            return
        sha = hashlib.sha256(body).hexdigest()
        step = self.steps.get(manifest_key)
        if step is not None and sha == step.detail["after"]["sha256"]:
            return self._commit_container(step, what, catalog_row)  # the manifest PUT landed before a crash
        if step is not None and sha != step.detail["before"]["sha256"]:
            if what != "export":
                raise ErasureError(f"{manifest_key} changed while erasure {self.request_id} was under way")
            # The week was exported again meanwhile: the new export is what to erase from. Our
            # parts named by no manifest are deleted now (the new export's are elsewhere).
            self.store.delete_many(self.steps[k].detail["after"]["key"] for k in step.detail["parts"])
            self._drop([manifest_key, *step.detail["parts"]])
        manifest = json.loads(body)
        columns: dict[str, set[str]] = defaultdict(set)
        for u in self.uploads.values():
            for name, values in self.subject.columns_of(u).items():
                columns[name] |= values
        all_pseudonyms = set(self.subject.pseudonyms.values())
        parts, erased_by_upload, part_steps = [], Counter(), []
        for part in manifest["parts"]:
            if not part["key"].startswith(prefix):
                parts.append(part)  # never rewrite what lies outside the manifest's own prefix
                continue
            pstep = self.steps.get(part["key"])
            if pstep is None or (pstep.state == WRITING and not self._is_there(pstep)):
                pstep = self._part(part, what, fmt, columns if lineage else None, all_pseudonyms)
            if pstep is None:
                parts.append(part)
                continue
            part_steps.append(pstep)
            erased_by_upload.update({int(k): v for k, v in pstep.detail.get("erased_by_upload", {}).items()})
            after = pstep.detail["after"]
            parts.append({**part, "key": after["key"], "rows": after["rows"], "bytes": after["bytes"],
                          "sha256": after["sha256"]})
        if not part_steps:
            if what == "feature":
                self._save(_Step(manifest_key, "feature_manifest", NOT_REWRITTEN, DONE, None, {
                    "reason": "built from an upload that held the subject, but no row of it names the subject "
                              "(features keyed or aggregated by other columns): build a new version and retire "
                              "this one if it describes the subject"}))
            return
        erased = sum(p.detail["rows_erased"] for p in part_steps)
        redacted = sum(p.detail.get("values_redacted", 0) for p in part_steps)
        entry = {"request_id": self.request_id, "rows_erased": erased}
        if redacted:
            entry["values_redacted"] = redacted
        new = {**manifest, "parts": parts, "rows": sum(p["rows"] for p in parts),
               "bytes": sum(p["bytes"] for p in parts),
               "erasures": list(manifest.get("erasures", ())) + [entry]}
        for f in new.get("files", ()):
            n = erased_by_upload.get(f.get("upload_id"), 0)
            if n:
                f["rows"] = f["rows"] - n
                if f.get("rows_in_file") is not None:
                    f["rows_in_file"] -= n
        new_body = json.dumps(new, indent=2, sort_keys=True).encode()
        step = _Step(manifest_key, f"{what}_manifest", REWRITTEN, WRITING, None, {
            "before": {"key": manifest_key, "sha256": sha, "rows": manifest.get("rows"), "bytes": len(body)},
            "after": {"key": manifest_key, "sha256": hashlib.sha256(new_body).hexdigest(), "rows": new["rows"],
                      "bytes": len(new_body)},
            "data_bytes": new["bytes"], "rows_erased": erased,
            **({"values_redacted": redacted} if redacted else {}),
            "parts": [p.key for p in part_steps],
            "erased_by_upload": {str(k): v for k, v in sorted(erased_by_upload.items())}})
        self._save(step)
        if not self.dry:
            self.store.put_bytes(manifest_key, new_body)
        self.check(f"after_manifest:{manifest_key}")
        self._commit_container(step, what, catalog_row)

    def _is_there(self, step: _Step) -> bool:
        info = self.store.head(step.detail["after"]["key"])
        return info is not None and info.size == step.detail["after"]["bytes"]

    def _part(self, part: dict, what: str, fmt: str, columns: dict[str, set[str]] | None,
              pseudonyms: set[str]) -> _Step | None:
        """A part without the subject's rows (of the found uploads) and, when the subject may
        be a name, with it redacted in the free-text columns; None if nothing changes."""
        local = self._tmp / "part"
        _, sha = self._download(part["key"], local)
        new_local = self._tmp / "part.new"
        ids = set(self.uploads)
        text = self.text_columns if self.redacted else set()
        redacted = 0
        if fmt == "parquet":
            table = pq.read_table(local)
            mask = _match(table, columns, ids) if columns is not None else self._feature_rows(table)
            kept = table.filter(pa.array(~mask))
            kept, redacted = self._redact_columns(kept, text)
            if not mask.any() and not redacted:
                return None
            _write_parquet(kept, new_local, table.schema)
            rows_before = table.num_rows
            erased_ids = table.column(SOURCE_COLUMN).to_numpy()[mask] if columns is not None else np.array([])
        elif fmt == "jsonl":
            rows_before, erased_ids, redacted = _filter_jsonl(local, new_local, columns, ids, self.subject, text)
        elif fmt == "csv":
            rows_before, erased_ids, redacted = _filter_csv(local, new_local, columns, ids, self._redact_columns, text)
        else:
            raise ErasureError(f"{part['key']}: unknown format {fmt!r}")
        if not len(erased_ids) and columns is not None and not redacted:
            return None
        erased = int(len(erased_ids)) if columns is not None else int(mask.sum())
        new_key = _new_part_key(part["key"], self.request_id)
        step = _Step(part["key"], f"{what}_part", REWRITTEN, WRITING, None, {
            "before": {"key": part["key"], "sha256": sha, "rows": rows_before, "bytes": local.stat().st_size},
            "after": {"key": new_key, "sha256": _sha(new_local), "rows": rows_before - erased,
                      "bytes": new_local.stat().st_size},
            "rows_erased": erased,
            "erased_by_upload": {str(k): int(v) for k, v in sorted(Counter(erased_ids.tolist()).items())}})
        if redacted:
            step.detail["values_redacted"] = redacted
        self._save(step)
        if not self.dry:
            self.store.upload_file(new_local, new_key)  # beside the old part: the manifest still names that one
            step.state = WRITTEN
            self._save(step)
        self.check(f"after_part:{part['key']}")
        return step

    def _redact_columns(self, table: pa.Table, columns: set[str],
                        changed: np.ndarray | None = None) -> tuple[pa.Table, int]:
        """The value redacted in these string columns: the table and how many occurrences.
        Rows that held it are marked in `changed` when given."""
        total = 0
        for name in sorted(columns):
            if name not in table.column_names:
                continue
            i = table.schema.get_field_index(name)
            column = table.column(i)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            if changed is not None:
                changed |= self.subject.text_hits(column).to_numpy(zero_copy_only=False)
            text, n = self.subject.redact(column)
            if n:
                total += n
                table = table.set_column(i, table.schema.field(i), text.cast(column.type))
        return table, total

    def _feature_rows(self, table: pa.Table) -> np.ndarray:
        """Feature parts have no lineage column: rows whose source personal-data columns
        (same name) hold the subject; a transformation may rename them, so an unrestricted
        request also looks at every other string column (a pseudonym names one subject)."""
        columns: dict[str, set[str]] = defaultdict(set)
        for u in self.uploads.values():
            for name, values in self.subject.columns_of(u).items():
                columns[name] |= values
        mask = _match(table, columns)
        if set(self.subject.kinds) == set(KINDS) and self.subject.column is None:
            mask |= _match_any(table, set(self.subject.pseudonyms.values()), None)
        return mask

    def _commit_container(self, step: _Step, what: str, catalog_row) -> None:
        parts = [self.steps[k] for k in step.detail["parts"]]
        if self.dry:
            for s in [step] + parts:
                s.state = DONE
            return
        after = step.detail["after"]
        figures = {"manifest_sha256": after["sha256"], "rows": after["rows"], "size": step.detail["data_bytes"]}
        for s in [step] + parts:
            s.state = DONE
        if what == "training_set":
            self._save(step, *parts, commit="commit_erased_training_set", set_id=catalog_row.id, **figures,
                       erased_by_upload={int(k): n for k, n in step.detail["erased_by_upload"].items()})
        elif what == "feature":
            self._save(step, *parts, commit="commit_erased_feature_version", version=catalog_row, **figures)
        else:
            self._save(step, *parts)
        self.check(f"after_commit:{step.key}")
        self.store.delete_many([p.key for p in parts])  # nothing names them any more

    # -- quarantine: raw values, never indexed, so scanned

    def _quarantine(self) -> None:
        prefix = f"{layout.QUARANTINE}/{self.subject.tenant}/"
        # A first attempt's deletions, finished first: one that died after deleting some or
        # all of an upload's objects (before its step was done) no longer finds them listed
        # below, and its receipt would lose the deletion (found by test_kills.py).
        for step in list(self.steps.values()):
            if step.what == "quarantine_upload" and step.key.startswith(prefix) and step.state != DONE:
                u = self.catalog.get(step.upload_id)
                if u is not None:
                    self._original(u, step.key, [])
        objects = sorted(self.store.list(prefix), key=lambda i: i.key)
        by_upload: dict[int, list] = defaultdict(list)
        for info in objects:
            upload_id = layout.upload_id_in_key(info.key)
            if upload_id is not None:
                by_upload[upload_id].append(info)
        for upload_id, infos in sorted(by_upload.items()):
            originals = [i for i in infos if "/original/" in i.key]
            u = self.catalog.get(upload_id)
            if u is None or u.tenant != self.subject.tenant:
                continue
            if originals and (u.state == QUARANTINED or originals[0].key in self.steps):
                if self._original(u, originals[0].key, infos):
                    continue
            for info in infos:
                if info.key.endswith("/rejected_rows.jsonl"):
                    self._rejected_rows(u, info.key)
                elif info.key.endswith("/report.json"):
                    self._report(u, info.key)

    def _invalid_keys(self) -> None:
        """Originals of uploads rejected as `invalid_key` lie under quarantine/_invalid/,
        outside every tenant's prefix. One whose landing key lies under the tenant's own
        landing prefix (`landing/{tenant}/...`: only who may write there could put it there)
        is the tenant's and is searched like any quarantined original. One whose key names
        no tenant cannot be attributed: reading it for this tenant's subject would reach
        what may be another tenant's bytes, so it is left and listed, for an operator.
        Both through `self.invalid`, the narrow view of them the tenant's scope leaves out."""
        view = self.invalid
        searched = 0
        for u in view.uploads():
            searched += 1
            infos = sorted(view.list(u.object_key), key=lambda i: i.key)
            originals = [i for i in infos if "/original/" in i.key]
            if originals:
                self._original(u, originals[0].key, infos, store=view, catalog=view)
        for upload_id, prefix in view.unattributed():
            if prefix not in self.steps:
                self._save(_Step(prefix, "quarantine_invalid_key", NOT_REWRITTEN, DONE, upload_id, {
                    "reason": "an upload rejected as invalid_key whose landing key names no tenant: its bytes "
                              "cannot be attributed to this tenant, so they were not searched; an operator may "
                              "inspect and delete them"}))
        # A first attempt's deletions (the uploads are no longer quarantined): finish them.
        for step in list(self.steps.values()):
            if step.what == "quarantine_upload" and step.key.startswith(INVALID_PREFIX) and step.state != DONE:
                u = view.get(step.upload_id)
                if u is not None:
                    self._original(u, step.key, [], store=view, catalog=view)
        self.scanned.append(f"{INVALID_PREFIX}: the originals of {searched} upload(s) rejected as invalid_key "
                            f"under {view.landing}")

    def _original(self, u: Upload, original_key: str, infos, *, store=None, catalog=None) -> bool:
        """A rejected upload's original bytes hold raw personal data by definition and may
        not even parse: one holding the subject is deleted, with its whole quarantine
        prefix, and the upload gets a tombstone (reason erased_subject). Through the tenant's
        scope, or (`store`, `catalog`) the view of the tenant's invalid-key originals."""
        store, catalog = store or self.store, catalog or self.catalog
        step = self.steps.get(original_key)
        if step is not None and step.state == DONE:
            return True
        if step is None:
            local = self._tmp / "original"
            _, sha = self._download(original_key, local, store)
            if not self.subject.in_raw(_raw_text(local, original_key)):
                return False
            step = _Step(original_key, "quarantine_upload", REMOVED, WRITING, u.id, {
                "before": {"key": original_key, "sha256": sha, "rows": None, "bytes": local.stat().st_size},
                "reason": ERASED_REASON, "also_deleted": sorted(i.key for i in infos if i.key != original_key)})
            self._save(step)
        if not self.dry:
            again = catalog.get(u.id)
            if again is not None and again.state == QUARANTINED:
                catalog.delete_uploads([RetentionMove(u.id, QUARANTINED, ERASED_REASON,
                                                      {"request_id": self.request_id})], actor=self.actor)
            self.check(f"after_tombstone:{u.id}")
            store.delete_many([original_key] + step.detail["also_deleted"])
        step.state = DONE
        self._save(step)
        return True

    def _rejected_rows(self, u: Upload, key: str) -> None:
        """Lines holding the raw value go; the upload's `quarantined_rows` (and its report's
        counts per reason) drop by as many, in the transaction that marks the step done."""
        def rewrite(data: bytes) -> tuple[bytes, int, int, dict]:
            lines = data.splitlines(keepends=True)
            kept, by_reason = [], Counter()
            for line in lines:
                if self.subject.in_raw(line.decode("utf-8", "replace")):
                    by_reason[_reason_of(line)] += 1
                else:
                    kept.append(line)
            erased = len(lines) - len(kept)
            return b"".join(kept), len(lines), erased, {"erased_by_reason": dict(by_reason)} if erased else {}

        def commit(step: _Step) -> None:
            self._save(step, commit="commit_erased_rejected_rows", upload_id=u.id,
                       rows_erased=step.detail["rows_erased"], erased_by_reason=step.detail["erased_by_reason"])
        self._in_place(u, key, "quarantine_rejected_rows", rewrite, commit)

    def _report(self, u: Upload, key: str) -> None:
        rows_step = self.steps.get(key[:-len("report.json")] + "rejected_rows.jsonl")
        gone = rows_step.detail if rows_step is not None and rows_step.action == REWRITTEN else None

        def rewrite(data: bytes) -> tuple[bytes, int, int, dict]:
            doc = json.loads(data)
            found = [0]

            def clean(value):
                if isinstance(value, dict):
                    return {k: clean(v) for k, v in value.items()}
                if isinstance(value, list):
                    return [clean(v) for v in value if not (isinstance(v, dict) and self._holds(v, found))]
                if isinstance(value, str) and self.subject.in_raw(value):
                    found[0] += 1
                    return "[erased]"
                return value
            doc = clean(doc)
            counted = gone is not None and isinstance(doc.get("rejected_rows"), int)
            if counted:  # the rejected rows erased from rejected_rows.jsonl: its counts follow
                doc["rejected_rows"] = max(0, doc["rejected_rows"] - gone["rows_erased"])
                doc["rejected_by_reason"] = fewer_counts(doc.get("rejected_by_reason") or {}, gone["erased_by_reason"])
            new = json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")
            return new, None, found[0], {"counts_updated": True} if counted and new != data else {}
        self._in_place(u, key, "quarantine_report", rewrite)

    def _holds(self, value: dict, found: list) -> bool:
        """A sample row (a dict in a list) holding the subject goes whole."""
        if self.subject.in_raw(json.dumps(value, ensure_ascii=False)):
            found[0] += 1
            return True
        return False

    def _in_place(self, u: Upload, key: str, what: str, rewrite, commit=None) -> None:
        step = self.steps.get(key)
        if step is not None and step.state == DONE:
            return
        local = self._tmp / "in-place"
        try:
            _, sha = self._download(key, local)
        except ObjectChanged:
            return
        if step is not None and sha not in (step.detail["before"]["sha256"], step.detail["after"]["sha256"]):
            raise ErasureError(f"{key} changed while erasure {self.request_id} was under way")
        if step is None or sha == step.detail["before"]["sha256"]:
            new, rows, erased, extra = rewrite(local.read_bytes())
            if not erased and not extra:
                return
            step = _Step(key, what, REWRITTEN, WRITING, u.id, {
                "before": {"key": key, "sha256": sha, "rows": rows, "bytes": local.stat().st_size},
                "after": {"key": key, "sha256": hashlib.sha256(new).hexdigest(),
                          "rows": None if rows is None else rows - erased, "bytes": len(new)},
                "rows_erased": erased, **extra})
            self._save(step)
            if not self.dry:
                self.store.put_bytes(key, new)
            self.check(f"after_quarantine:{key}")
        step.state = DONE
        if self.dry or commit is None:
            self._save(step)
            return
        commit(step)  # the catalog's change and the step, in one transaction

    # -- helpers

    def _download(self, key: str, local: Path, store=None) -> tuple[Path, str]:
        with open(local, "wb") as dst:
            _, sha = (store or self.store).download(key, dst)
        return local, sha

    def receipt(self, *, requested_at: datetime, completed_at: datetime | None) -> dict:
        done = sorted((s for s in self.steps.values() if s.state == DONE), key=lambda s: (s.what, s.key))
        entry = lambda s: {"key": s.key, "what": s.what, "upload_id": s.upload_id}  # noqa: E731
        also = lambda s: {k: s.detail[k] for k in ("values_redacted", "flags_remapped")  # noqa: E731
                          if s.detail.get(k)}
        rewritten = [{**entry(s), "before": s.detail["before"], "after": s.detail["after"],
                      "rows_erased": s.detail.get("rows_erased"), **also(s)} for s in done if s.action == REWRITTEN]
        deleted = [{**entry(s), "before": s.detail["before"], "reason": s.detail["reason"],
                    "also_deleted": s.detail.get("also_deleted", [])} for s in done if s.action == REMOVED]
        skipped = [{**entry(s), "reason": s.detail["reason"]} for s in done if s.action == NOT_REWRITTEN]
        data = [s for s in done if s.what == "data" and s.action == REWRITTEN]
        found = {"uploads": self.upload_ids, "through": "subject index (_platform/indexes/subjects/)",
                 "scanned": [f"{layout.QUARANTINE}/{self.subject.tenant}/ (raw values are not indexed)",
                             *self.scanned]}
        if self.subject.may_be_name:
            found["free_text_uploads"] = sorted(self.redacted)
        return {
            "kind": "erasure_receipt", "request_id": self.request_id, "tenant": self.subject.tenant,
            "subject_sha256": self.subject.sha256, "kinds": list(self.subject.kinds), "column": self.subject.column,
            "dry_run": self.dry, "requested_at": requested_at.isoformat(),
            "completed_at": completed_at.isoformat() if completed_at else None,
            "found": found,
            "rewritten": rewritten, "deleted": deleted, "not_rewritten": skipped,
            "suppression": {
                "recorded": not self.dry, "kinds": sorted(self.subject.pseudonyms), "column": self.subject.column,
                "covers": "uploads waiting in landing and every later upload of the tenant (erasure_suppressions: "
                          "the subject's pseudonyms, never the raw value)"},
            "counts": {"objects_rewritten": len(rewritten), "objects_deleted": len(deleted),
                       "not_rewritten": len(skipped), "data_rows_erased": sum(s.detail["rows_erased"] for s in data),
                       "uploads": len(self.upload_ids),
                       "values_redacted": sum(s.detail.get("values_redacted", 0) for s in done
                                              if s.action == REWRITTEN and not s.what.endswith("_manifest")),
                       "near_duplicate_flags_moved": sum(s.detail.get("flags_remapped", 0) for s in data)},
            "notes": NOTES,
        }


# -- rows -----------------------------------------------------------------------------------------


def _match(table: pa.Table, columns: dict[str, set[str]], upload_ids: set[int] | None = None) -> np.ndarray:
    """True for the rows where one of `columns` holds one of its pseudonyms (and, with
    `upload_ids`, that came from one of those uploads)."""
    mask = np.zeros(table.num_rows, dtype=bool)
    for name, values in columns.items():
        if name not in table.column_names:
            continue
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = col.cast(pa.string())
        mask |= pc.fill_null(pc.is_in(col, value_set=pa.array(sorted(values), col.type)), False).to_numpy(
            zero_copy_only=False)
    if upload_ids is not None and SOURCE_COLUMN in table.column_names and mask.any():
        mask &= np.isin(table.column(SOURCE_COLUMN).to_numpy(zero_copy_only=False), sorted(upload_ids))
    return mask


def _match_any(table: pa.Table, pseudonyms: set[str], column: str | None) -> np.ndarray:
    """Feature parts: any string column (or just `column`) holding a pseudonym."""
    names = [f.name for f in table.schema if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
             and (column is None or f.name == column)]
    return _match(table, {n: pseudonyms for n in names})


def _filter_jsonl(src: Path, dst: Path, columns: dict[str, set[str]], ids: set[int], subject: Subject,
                  text: set[str]) -> tuple[int, np.ndarray, int]:
    """Lines kept byte for byte; a line goes when its row matches; a line whose free text
    (`text` columns) holds the value is written again with it redacted."""
    total, erased, redacted = 0, [], 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        for line in f:
            total += 1
            row = json.loads(line)
            if row.get(SOURCE_COLUMN) in ids and any(row.get(c) in v for c, v in columns.items()):
                erased.append(row[SOURCE_COLUMN])
                continue
            found = 0
            for name in text:
                if isinstance(row.get(name), str):
                    row[name], n = subject.redact_text(row[name])
                    found += n
            if found:
                redacted += found
                line = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            out.write(line)
    return total, np.array(erased, dtype=np.int64), redacted


def _filter_csv(src: Path, dst: Path, columns: dict[str, set[str]], ids: set[int], redact,
                text: set[str]) -> tuple[int, np.ndarray, int]:
    """CSV values may hold quoted newlines: read and written by DuckDB, every value as text."""
    with duckdb.connect() as con:
        table = con.sql(f"SELECT * FROM read_csv('{_sql(src)}', header=true, all_varchar=true, "
                            f"quote='\"', escape='\"')").to_arrow_table()
        mask = _match(table, columns)
        source = np.array([int(v) if v is not None else -1 for v in table.column(SOURCE_COLUMN).to_pylist()])
        mask &= np.isin(source, sorted(ids))
        kept, redacted = redact(table.filter(pa.array(~mask)), text)  # noqa: F841 - read by DuckDB below
        con.execute(f"COPY (SELECT * FROM kept) TO '{_sql(dst)}' (FORMAT csv, HEADER true)")
    return table.num_rows, source[mask], redacted


def _sql(path: Path) -> str:
    return str(path).replace("'", "''")


def _write_parquet(table: pa.Table, path: Path, schema: pa.Schema) -> None:
    pq.write_table(table.cast(schema), path, compression="zstd")


def _subject_keys(table: pa.Table, u: Upload) -> pa.Array:
    """The upload's subjects run rebuilt from its (rewritten) data: the keys of the
    pseudonyms its personal-data columns hold, as ingestion writes them."""
    keys = [subject_keys_of(table.column(name)) for name, kind in (u.report.get("pii_columns") or {}).items()
            if kind != "free_text" and name in table.column_names]
    return pa.array(sorted_distinct(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64), pa.int64())


def _text_columns_of(u: Upload) -> list[str]:
    """An upload's free-text columns, where a name may be written: those declared or
    detected as free text, and the long text columns near-duplicate detection compared."""
    report = u.report
    pii = report.get("pii_columns") or {}
    columns = [name for name, kind in pii.items() if kind == "free_text"]
    columns += [c for c in (report.get("near_duplicates") or {}).get("text_columns") or () if c not in pii]
    return sorted(set(columns))


def _reason_of(line: bytes) -> str:
    try:
        return str(json.loads(line).get("reason"))
    except (ValueError, AttributeError):
        return "unknown"


def _raw_text(path: Path, key: str) -> str:
    """An original upload's content as text, for the raw-value search: decompressed, and a
    Parquet file's values as JSON; bytes that parse as neither are searched as they are."""
    data = path.read_bytes()
    if key.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            pass
    if key.endswith((".parquet", ".pq")):
        try:
            return json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False)
        except Exception:  # noqa: BLE001 - a corrupt file is searched as bytes
            pass
    return data.decode("utf-8", "replace")


def _new_part_key(key: str, request_id: str) -> str:
    stem, dot, ext = _PART_SUFFIX.sub("", key).rpartition(".")
    return f"{stem}.e{request_id[:8]}.{ext}"


def _sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


__all__ = ["Subject", "ErasureError", "forget", "request_id_for", "receipt_key", "request_state", "KINDS",
           "ERASED_REASON", "RECEIPTS"]

"""Ingest one upload: landing object -> Parquet under data/ (or quarantine), plus its
catalog transition. Plain Python: the Dagster layer only claims uploads and calls this.

The order of effects is what makes a crash at any point safe:
  1. read the landing object once (streaming, hashed), parse and refine it, and stream
     the Parquet to the data object's key as it is encoded (S3: a multipart upload);
  2. complete the data object at a key derived from the upload id (a re-run overwrites
     it) only once the upload is known to be kept; otherwise it is aborted;
  3. commit the catalog transition (one transaction);
  4. only then delete the landing object (a leftover is deleted by the next tick).
Nothing the catalog points at is ever half-written, and the original bytes exist in
landing until the catalog says where the upload went.
"""

import ctypes
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_platform import layout, tenancy
from data_platform.catalog import (
    DUPLICATE, FRESH, QUARANTINED, DELETED, Catalog, DuplicateContent, IndexChanged, Suppressions, SuppressionsChanged,
    Upload,
)
from data_platform.config import Settings
from data_platform.contracts import Contract, ContractRegistry
from data_platform.dedup import RowIndex
from data_platform.indexes import NEAR_DUP, SUBJECTS, NearDupRuns, RunStore
from data_platform.neardup import NearDupIndex
from data_platform.privacy import Pseudonymizer, load_pseudonym_key, values_in_raw
from data_platform.refinement import UploadRefiner
from data_platform.readers import (
    RejectedRow, UnreadableUpload, detect_format, read_ahead, read_stream_tables, read_tables,
)
from data_platform.storage import HashingReader, ObjectChanged, ObjectStore, ObjectWriter
from data_platform.validation import prepare_validation

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Most recent indexed texts per dataset that a new upload is compared with, the upload's
# own included (memory: about 154 bytes each, ~31 MB; see data_platform/neardup.py). At
# 800k (~100 MB) it was the largest holder of memory in a 1 GB upload, after imports; at
# 400k (~49 MB) it still put a 1 GB upload's peak RSS over 600 MB. 200k texts are the
# last ~100 MB of a dataset's text (gen_data's near-duplicates are within 8,192 rows).
NEAR_DUP_WINDOW = 200_000
# Immediate re-ingestions when a concurrent run of the dataset kept some of the same rows.
# Each conflict means another upload of the dataset committed, so with a few runs at once
# this many always suffice; past it the upload is released and the next run retries.
CONCURRENT_RETRIES = 10
SAMPLE_REJECTS = 20
DICTIONARY_MAX_DISTINCT = 0.5  # share of distinct values up to which a column is dictionary-encoded


@dataclass
class Outcome:
    """What became of one upload; the asset turns a batch of these into metadata."""

    upload_id: int
    landing_key: str
    state: str
    reason: str | None = None
    rows: int = 0
    quarantined_rows: int = 0
    object_key: str | None = None
    sha256: str | None = None
    size: int = 0
    schema: pa.Schema | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    refinement: dict | None = None  # validation and privacy report (RefinementReport.as_dict)


_json_string = json.encoder.encode_basestring  # a str as JSONEncoder(ensure_ascii=False) writes it (C)


def _reject_line(row: RejectedRow) -> str:
    """A rejected row's line of rejected_rows.jsonl: what `json.dumps(row.as_dict(),
    ensure_ascii=False)` writes, with no dict and no general encoder between (a tenth
    of the check stage's time per rejected row went into them: ~4 µs of ~13)."""
    raw = "null" if row.raw is None else _json_string(row.raw)
    return (f'{{"line": {int(row.line)}, "reason": {_json_string(row.reason)}, '
            f'"detail": {_json_string(row.detail)}, "raw": {raw}}}\n')


class _Rejects:
    """Rejected rows spooled to a local JSONL file (bounded memory), counted by reason."""

    def __init__(self, directory: Path):
        self.path = directory / "rejected_rows.jsonl"
        self._file = open(self.path, "w", encoding="utf-8")
        self.count = 0
        self.by_reason: Counter[str] = Counter()
        self.samples: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, row: RejectedRow) -> None:
        with self._lock:  # the parser (read-ahead thread) and validation both reject rows
            self._record(row)

    def _record(self, row: RejectedRow) -> None:
        self.count += 1
        self.by_reason[row.reason] += 1
        if len(self.samples) < SAMPLE_REJECTS:
            self.samples.append(row.as_dict())
        self._file.write(_reject_line(row))

    def close(self) -> None:
        self._file.close()

    def drop_subjects(self, pseudonymizer: Pseudonymizer, suppressions: Suppressions) -> int:
        """Drop (once closed) the rejected rows holding a subject on the tenant's suppression
        list, and return how many. Rejected rows are raw, never pseudonymised: each row's
        candidate values (`privacy.values_in_raw` of its raw text and detail) are
        pseudonymised per suppressed kind, a batch at a time, and compared in Arrow. Any
        column counts, as the erasure's own search of quarantine ignores columns."""
        if not self.count or not suppressions:
            return 0
        wanted = {kind: pa.array(sorted(frozenset().union(*columns.values())), pa.string())
                  for kind, columns in suppressions.by_kind.items()}
        dropped: Counter[str] = Counter()
        kept_path = self.path.with_name("rejected_rows.kept.jsonl")
        with open(self.path, encoding="utf-8") as src, open(kept_path, "w", encoding="utf-8") as out:
            while lines := list(islice(src, 10_000)):
                records = [json.loads(line) for line in lines]
                owners, values = [], []
                for i, record in enumerate(records):
                    for text in (record.get("raw"), record.get("detail")):
                        found = values_in_raw(text) if text else []
                        values += found
                        owners += [i] * len(found)
                hit = np.zeros(len(lines), dtype=bool)
                if values:
                    candidates, owners = pa.array(values, pa.string()), np.array(owners, dtype=np.int64)
                    for kind, pseudonyms in wanted.items():
                        match = pc.fill_null(pc.is_in(pseudonymizer.pseudonymize(candidates, kind),
                                                      value_set=pseudonyms), False)
                        hit[owners[match.to_numpy(zero_copy_only=False)]] = True
                for line, record, erased in zip(lines, records, hit):
                    if erased:
                        dropped[record["reason"]] += 1
                    else:
                        out.write(line)
        os.replace(kept_path, self.path)
        n = sum(dropped.values())
        if n:
            self.count -= n
            self.by_reason -= dropped
            with open(self.path, encoding="utf-8") as src:
                self.samples = [json.loads(line) for line in islice(src, SAMPLE_REJECTS)]
        return n


class ConcurrentIngestion(RuntimeError):
    """Another run of the dataset committed rows this attempt also kept: retried."""


class Ingestor:
    def __init__(self, store: ObjectStore, catalog: Catalog, *, claimer: str, pseudonym_key: bytes,
                 contract: Contract | None = None):
        self.store = store
        self.catalog = catalog
        self.claimer = claimer
        self.pseudonym_key = pseudonym_key
        self.contract = contract
        self._row_indexes: dict[tuple[str, str], RowIndex] = {}  # loaded once per dataset, kept current
        self._run_stores: dict[tuple[str, str, str], RunStore] = {}
        self._near_dups: dict[tuple[str, str], NearDupRuns] = {}

    def _runs(self, tenant: str, dataset: str, kind: str) -> RunStore:
        if (tenant, dataset, kind) not in self._run_stores:
            self._run_stores[tenant, dataset, kind] = RunStore(self.store, self.catalog, tenant, dataset, kind)
        return self._run_stores[tenant, dataset, kind]

    def _near_dup_index(self, tenant: str, dataset: str) -> NearDupRuns:
        if (tenant, dataset) not in self._near_dups:
            self._near_dups[tenant, dataset] = NearDupRuns(self._runs(tenant, dataset, NEAR_DUP),
                                                           NearDupIndex(max_rows=NEAR_DUP_WINDOW))
        return self._near_dups[tenant, dataset]

    def _row_index(self, tenant: str, dataset: str) -> RowIndex:
        if (tenant, dataset) not in self._row_indexes:
            self._row_indexes[tenant, dataset] = RowIndex(self._runs(tenant, dataset, RowIndex.KIND))
        return self._row_indexes[tenant, dataset]

    def ingest(self, upload: Upload) -> Outcome:
        """Take a claimed upload to fresh, duplicate, quarantined or (vanished) deleted."""
        for attempt in range(1, CONCURRENT_RETRIES + 1):
            try:
                with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
                    outcome = self._ingest(upload, Path(tmp))
            except ConcurrentIngestion:
                self._forget(upload)
                if attempt == CONCURRENT_RETRIES:
                    raise  # released with the error; the next run tries again
                log.info("upload %s: a concurrent run kept some of its rows first; ingesting it again", upload.id)
                continue
            except BaseException:
                self._forget(upload)
                raise
            if outcome.state != FRESH:
                self._forget(upload)
            return outcome
        raise AssertionError("unreachable")

    def _forget(self, upload: Upload) -> None:
        """The upload kept nothing: texts it staged must not match later uploads."""
        near_dups = self._near_dups.get((upload.tenant, upload.dataset))
        if near_dups is not None:
            near_dups.forget(upload.id)

    def _ingest(self, upload: Upload, tmp: Path) -> Outcome:
        assert upload.tenant and upload.dataset, "uploads with invalid keys are quarantined by the sensor"
        filename = layout.LandingKey.parse(upload.landing_key).filename
        rejects = _Rejects(tmp)
        row_index = self._row_index(upload.tenant, upload.dataset)
        row_index.begin(upload.id)
        near_dups = self._near_dup_index(upload.tenant, upload.dataset)
        near_dups.begin(upload.id)
        # Erased subjects (the tenant's suppression list): their rows are dropped, and the
        # commit is refused if an erasure added to the list meanwhile (then ingested again).
        suppressions = self.catalog.suppressions(upload.tenant)
        refiner = UploadRefiner(self.contract, Pseudonymizer(self.pseudonym_key, upload.tenant), rejects, row_index,
                                near_dups.index, upload.id, suppressed=suppressions.by_kind)
        data_key = layout.data_key(upload.tenant, upload.dataset, upload.id)
        # Sent while it is written; it becomes the object only at commit() below, so an
        # upload that ends up elsewhere (or a failure) leaves no data object.
        with self.store.open_write(data_key) as data:
            return self._ingest_into(upload, filename, tmp, rejects, refiner, row_index, near_dups, data,
                                     suppressions)

    def _ingest_into(self, upload: Upload, filename: str, tmp: Path, rejects: "_Rejects", refiner: UploadRefiner,
                     row_index: RowIndex, near_dups: NearDupRuns, data: ObjectWriter,
                     suppressions: Suppressions) -> Outcome:
        try:
            parsed = self._parse(upload, filename, tmp, rejects, refiner, data)
        except ObjectChanged:
            self.catalog.mark_vanished(upload, self.claimer)
            return Outcome(upload.id, upload.landing_key, DELETED, reason="vanished_before_ingestion")
        finally:
            rejects.close()
        sha256, size, rows, schema, unreadable = parsed
        erased_rejects = rejects.drop_subjects(refiner.pseudonymizer, suppressions)
        # An erased subject's rows were in the file: its original bytes are not kept anywhere.
        erased = {"erased_rows": refiner.report.erased_rows, "erased_rejected_rows": erased_rejects}
        whole = {"suppressions_seen": suppressions.seen, "keep_original": not any(erased.values()),
                 "erased": erased}

        if upload.attempts > MAX_ATTEMPTS:
            return self._quarantine_whole(upload, sha256, "ingestion_failed",
                                          f"gave up after {upload.attempts - 1} failed attempts: {upload.detail}",
                                          **whole)
        first = self.catalog.first_copy(upload.tenant, sha256)
        if first is not None and first.id != upload.id:
            return self._duplicate(upload, sha256, first)
        if unreadable is not None:
            return self._quarantine_whole(upload, sha256, unreadable.reason, unreadable.detail, **whole)
        report = refiner.report
        if self.contract is not None and report.failing_share > self.contract.max_failing_share:
            return self._quarantine_whole(
                upload, sha256, "too_many_invalid_rows",
                f"{report.rows_failing} of {report.rows_in} rows break contract {self.contract.version} "
                f"({report.failing_share:.1%} > max_failing_share {self.contract.max_failing_share:.1%})",
                rejects=rejects, refinement=report.as_dict(), **whole)
        duplicates = report.duplicates_in_file + report.duplicates_of_earlier_uploads
        if rows == 0 and duplicates and not rejects.count:
            self.catalog.mark_duplicate(upload, self.claimer, sha256=sha256, first=None, reason="all_rows_duplicate",
                                        detail={"duplicate_rows_removed": duplicates,
                                                **{k: v for k, v in erased.items() if v}})
            self.store.delete_if_unchanged(upload.landing_key, upload.etag)
            return Outcome(upload.id, upload.landing_key, DUPLICATE, reason="all_rows_duplicate", sha256=sha256,
                           size=size, refinement=report.as_dict())
        if rows == 0 and any(erased.values()) and not rejects.count:
            # Every row was an erased subject's: nothing is kept, not even the original bytes.
            self.catalog.mark_erased(upload, self.claimer, sha256=sha256, detail=erased)
            self.store.delete_if_unchanged(upload.landing_key, upload.etag)
            return Outcome(upload.id, upload.landing_key, DELETED, reason="erased_subject", sha256=sha256, size=size,
                           refinement=report.as_dict())
        if rows == 0:
            reason = "no_valid_rows" if rejects.count else "no_rows"
            detail = f"all {rejects.count} rows rejected" if rejects.count else "the file holds no rows"
            return self._quarantine_whole(upload, sha256, reason, detail, rejects=rejects, **whole)

        data_key = layout.data_key(upload.tenant, upload.dataset, upload.id)
        started = time.perf_counter()
        # The data's multipart upload is completed while the quality is scored and the
        # rejects and the index runs are written: completing is the endpoint's work (~0.5 s
        # per GB on moto, which copies the parts), the rest mostly ours (the language of
        # a sample of texts, sorting the subject keys), done first so that it overlaps
        # the completion, the uploads after it. Only the completion runs beside the rest:
        # each run at once would hold their buffers at once (+100 MB at the peak).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="data-commit") as pool:
            committing = pool.submit(data.commit)
            refiner.finish_quality(rejects.count)
            subjects = refiner.subject_keys()
            if rejects.count:
                self._write_rejects(upload, sha256, rejects, rows)
            runs = [run for run in (row_index.stage(), near_dups.stage(upload.id), self._stage_subjects(upload, subjects))
                    if run is not None]
            committing.result()
        report.seconds["upload"] += time.perf_counter() - started
        started = time.perf_counter()
        detail = {"rejected_by_reason": dict(rejects.by_reason), "contract": report.contract,
                  "duplicate_rows_removed": report.as_dict()["duplicate_rows_removed"],
                  "pii_columns": report.pii_columns, "pii_detected": report.pii_detected,
                  "pseudonymised_values": dict(report.pseudonymised), "redacted_in_text": dict(report.redacted),
                  "near_duplicates": report.near_duplicates, "quality": report.quality, **erased}
        while True:
            try:
                self.catalog.mark_fresh(
                    upload, self.claimer, sha256=sha256, rows=rows, quarantined_rows=rejects.count,
                    object_key=data_key, detail=detail, quality=report.quality["score"],
                    dataset_id=row_index.runs.dataset_id, runs=runs,
                    seen_runs={RowIndex.KIND: row_index.seen_run_id}, data_sha256=data.sha256, data_size=data.size,
                    suppressions_seen=suppressions.seen)
                break
            except SuppressionsChanged as changed:
                # An erasure started meanwhile: what this attempt wrote goes, and the upload is
                # ingested again with the subject on the list.
                self.store.delete(data_key)
                self.store.delete_many(self._reject_keys(upload) + [run.object_key for run in runs])
                raise ConcurrentIngestion(str(changed)) from None
            except IndexChanged as changed:
                # A concurrent run of the dataset committed first. Rows it also kept would
                # be kept twice: this attempt is redone (the next one sees its rows).
                overlap = row_index.conflicts(changed.runs)
                if overlap:
                    raise ConcurrentIngestion(f"a concurrent run of {upload.tenant}/{upload.dataset} committed "
                                              f"{overlap} of the rows this attempt kept; retrying") from None
            except DuplicateContent as dup:
                # Another run committed the same bytes first: ours become the duplicate.
                self.store.delete(data_key)
                self.store.delete_many(self._reject_keys(upload) + [run.object_key for run in runs])
                return self._duplicate(upload, sha256, self.catalog.get(dup.first_upload_id))
        row_index.committed()
        near_dups.committed(upload.id)
        report.seconds["commit"] += time.perf_counter() - started
        self.store.delete_if_unchanged(upload.landing_key, upload.etag)
        return Outcome(upload.id, upload.landing_key, FRESH, rows=rows, quarantined_rows=rejects.count,
                       object_key=data_key, sha256=sha256, size=size, schema=schema,
                       rejected_by_reason=dict(rejects.by_reason), refinement=report.as_dict())

    def _parse(self, upload: Upload, filename: str, tmp: Path, rejects: "_Rejects", refiner: UploadRefiner,
               data: ObjectWriter):
        """Read the landing object once and parse it into Parquet written to `data`.

        Text formats stream from the GET straight into the parser (download, hashing
        and parsing overlap); Parquet needs random access and is downloaded first.
        Returns (sha256, size, rows, schema, UnreadableUpload or None).
        """
        try:
            fmt, _ = detect_format(filename)
        except UnreadableUpload:
            fmt = None
        if fmt in ("jsonl", "csv"):
            with self.store.open_read(upload.landing_key, if_etag=upload.etag) as (info, body):
                source = HashingReader(body)
                try:
                    tables = _timed(read_stream_tables(source, filename, rejects), refiner.report.seconds, "parse")
                    rows, schema = _write_parquet(refiner(read_ahead(tables)), data, refiner.report.seconds)
                    unreadable = None
                except UnreadableUpload as err:
                    rows, schema, unreadable = 0, None, err
                return source.hexdigest(), info.size, rows, schema, unreadable
        local = tmp / "upload"
        with open(local, "wb") as f:
            info, sha256 = self.store.download(upload.landing_key, f, if_etag=upload.etag)
        try:
            tables = _timed(read_tables(local, filename, rejects), refiner.report.seconds, "parse")
            rows, schema = _write_parquet(refiner(read_ahead(tables)), data, refiner.report.seconds)
        except UnreadableUpload as err:
            return sha256, info.size, 0, None, err
        return sha256, info.size, rows, schema, None

    def _stage_subjects(self, upload: Upload, keys: np.ndarray):
        if len(keys) == 0:
            return None
        return self._runs(upload.tenant, upload.dataset, SUBJECTS).write(upload.id, pa.table({"subject": keys}))

    def _duplicate(self, upload: Upload, sha256: str, first: Upload) -> Outcome:
        # A crashed earlier attempt may have written data for this upload: it goes.
        self.store.delete(layout.data_key(upload.tenant, upload.dataset, upload.id))
        self.catalog.mark_duplicate(upload, self.claimer, sha256=sha256, first=first)
        self.store.delete_if_unchanged(upload.landing_key, upload.etag)
        return Outcome(upload.id, upload.landing_key, DUPLICATE, reason="duplicate_content",
                       object_key=first.object_key, sha256=sha256, size=upload.size)

    def _reject_keys(self, upload: Upload) -> list[str]:
        prefix = layout.quarantine_prefix(upload.tenant, upload.dataset, upload.id)
        return [prefix + "rejected_rows.jsonl", prefix + "report.json"]

    def _write_rejects(self, upload: Upload, sha256: str, rejects: _Rejects, rows_kept: int) -> None:
        rows_key, report_key = self._reject_keys(upload)
        self.store.upload_file(rejects.path, rows_key)
        self.store.put_bytes(report_key, _report(upload, sha256, reason="rejected_rows",
                                                 detail=f"{rejects.count} rows rejected, {rows_kept} kept",
                                                 rejects=rejects, rows_kept=rows_kept, rejected_rows_key=rows_key))

    def _quarantine_whole(self, upload: Upload, sha256: str, reason: str, detail: str,
                          rejects: _Rejects | None = None, refinement: dict | None = None, *,
                          suppressions_seen: int | None = None, keep_original: bool = True,
                          erased: dict | None = None) -> Outcome:
        prefix = quarantine_whole(self.store, upload, sha256=sha256, reason=reason, detail=detail, rejects=rejects,
                                  refinement=refinement, keep_original=keep_original)
        try:
            self.catalog.mark_quarantined(upload, self.claimer, claimer=self.claimer, reason=reason, object_key=prefix,
                                          sha256=sha256, quarantined_rows=rejects.count if rejects else None,
                                          detail={"detail": detail, **{k: v for k, v in (erased or {}).items() if v}},
                                          suppressions_seen=suppressions_seen)
        except SuppressionsChanged as changed:
            # An erasure started meanwhile: these raw bytes may hold its subject; the upload
            # is ingested again with the subject on the list.
            self.store.delete_many([i.key for i in self.store.list(prefix)])
            raise ConcurrentIngestion(str(changed)) from None
        self.store.delete_if_unchanged(upload.landing_key, upload.etag)
        return Outcome(upload.id, upload.landing_key, QUARANTINED, reason=reason, object_key=prefix, sha256=sha256,
                       size=upload.size, quarantined_rows=rejects.count if rejects else 0, refinement=refinement)


def quarantine_whole(store: ObjectStore, upload: Upload, *, sha256: str | None, reason: str, detail: str,
                     rejects: _Rejects | None = None, refinement: dict | None = None,
                     keep_original: bool = True) -> str:
    """Copy the original bytes (server-side) and a JSON report into quarantine; without
    `keep_original` (the file held an erased subject) only the report and rejected rows.

    Returns the quarantine prefix. The landing object is left for the caller to delete
    after the catalog commit.
    """
    prefix = layout.quarantine_prefix(upload.tenant, upload.dataset, upload.id)
    original_key = prefix + layout.safe_original_name(upload.landing_key)
    if keep_original:
        store.copy(upload.landing_key, original_key)
    else:
        store.delete(original_key)  # an earlier attempt's copy
        original_key = None
    rows_key = None
    if rejects is not None and rejects.count:
        rows_key = prefix + "rejected_rows.jsonl"
        store.upload_file(rejects.path, rows_key)
    store.put_bytes(prefix + "report.json", _report(upload, sha256, reason=reason, detail=detail, rejects=rejects,
                                                    original_key=original_key, rejected_rows_key=rows_key,
                                                    refinement=refinement, original_erased=not keep_original))
    return prefix


def _report(upload: Upload, sha256: str | None, *, reason: str, detail: str, rejects: _Rejects | None = None,
            rows_kept: int = 0, original_key: str | None = None, rejected_rows_key: str | None = None,
            refinement: dict | None = None, original_erased: bool = False) -> bytes:
    report = {
        "upload_id": upload.id,
        "landing_key": upload.landing_key,
        "tenant": upload.tenant,
        "dataset": upload.dataset,
        "size": upload.size,
        "etag": upload.etag,
        "sha256": sha256,
        "reason": reason,
        "detail": detail,
        "whole_file": original_key is not None or original_erased,
        "original_key": original_key,
        # The file held a subject on the tenant's suppression list (erased): not kept.
        "original_erased": original_erased,
        "rows_kept": rows_kept,
        "rejected_rows": rejects.count if rejects else 0,
        "rejected_by_reason": dict(rejects.by_reason) if rejects else {},
        "rejected_rows_key": rejected_rows_key,
        "sample_rejected_rows": rejects.samples if rejects else [],
        "validation": refinement,
        "reported_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8")


def _timed(tables: Iterator[pa.Table], seconds: Counter, stage: str) -> Iterator[pa.Table]:
    """The tables, adding the time spent producing them to seconds[stage]."""
    while True:
        started = time.perf_counter()
        table = next(tables, None)
        seconds[stage] += time.perf_counter() - started
        if table is None:
            return
        yield table


def _write_parquet(tables, sink, seconds: Counter | None = None) -> tuple[int, pa.Schema | None]:
    """Stream tables into one Parquet file written to `sink`; returns (rows, schema).

    Encoding and compression run in a writer thread while the next table is parsed
    (both release the GIL), with one table waiting for it, to bound memory.
    """
    pending: queue.Queue = queue.Queue(maxsize=1)
    failure: list[BaseException] = []
    trim = _Trimmer()
    schema_seen: list[pa.Schema] = []

    def write_all() -> None:
        writer = None
        try:
            while (table := pending.get()) is not None:
                if failure:
                    continue  # drain, so the producer never blocks on a dead writer
                try:
                    if writer is None:
                        writer = pq.ParquetWriter(sink, table.schema, compression="zstd",
                                                  use_dictionary=_repeating_columns(table))
                        schema_seen.append(writer.schema)
                    started = time.perf_counter()
                    writer.write_table(table, row_group_size=128 * 1024)
                    del table
                    trim()
                    if seconds is not None:
                        seconds["write"] += time.perf_counter() - started
                except BaseException as err:  # noqa: BLE001 - handed to the producer
                    failure.append(err)
        finally:
            if writer is not None:
                writer.close()

    thread = threading.Thread(target=write_all, name="parquet-writer", daemon=True)
    thread.start()
    rows = 0
    try:
        for table in tables:
            if failure:
                break
            pending.put(table)
            rows += table.num_rows
    finally:
        pending.put(None)
        thread.join()
        # What the stages freed, back to the OS before the upload's indexes are written.
        trim(force=True)
    if failure:
        raise failure[0]
    return rows, schema_seen[0] if schema_seen else None


try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _mallopt = ctypes.CDLL(None).mallopt
except (OSError, AttributeError):  # not glibc
    _malloc_trim = _mallopt = None
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TRIM_AFTER_GROWTH = 128 * 1024 * 1024


class _Trimmer:
    """Gives freed heap pages back to the OS once RSS grew by TRIM_AFTER_GROWTH since the
    last time. glibc keeps freed memory in per-thread arenas for reuse; with tables
    passing through five threads, what it kept grew through a 1 GB upload to more than
    what Arrow had in use (1 GB: peak RSS ~1075 MB; ~940 MB with ~16 trims, ~895 MB
    with ~44 at 64 MB of growth). Each trim costs: freed pages are faulted in again, and
    a trim per table added ~10% of CPU; hence only after growth."""

    def __init__(self):
        self.last = self._rss()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * _PAGE
        except OSError:
            return 0

    def __call__(self, force: bool = False) -> None:
        if _malloc_trim is None or not force and self._rss() < self.last + TRIM_AFTER_GROWTH:
            return
        _malloc_trim(0)
        self.last = self._rss()


def _repeating_columns(table: pa.Table) -> list[str]:
    """Columns worth a dictionary encoding: at most half their values distinct in the
    first table. On mostly distinct ones (texts, ids, pseudonyms, timestamps) Parquet
    tries a dictionary, gives up at its size limit and writes them plain anyway: that
    attempt was ~25% of the encoding time."""
    return [name for name, column in zip(table.column_names, table.columns)
            if pa.types.is_dictionary(column.type)
            or not (pa.types.is_nested(column.type) or pa.types.is_null(column.type))
            and pc.count_distinct(column).as_py() <= DICTIONARY_MAX_DISTINCT * len(column)]


_M_ARENA_MAX = -8  # mallopt parameter (glibc's malloc.h)
MALLOC_ARENAS = 2


def _use_returning_allocators() -> None:
    """Arrow's allocations from jemalloc, and at most MALLOC_ARENAS glibc arenas for
    threads started from now on.

    Tables pass through five threads. Arrow's default allocator (mimalloc) keeps freed
    blocks for reuse (200 MB of JSONL: peak RSS 834 MB); glibc's malloc, with an arena per
    thread and big blocks kept in them once its mmap threshold has risen, held ~60 MB more
    than jemalloc without decay (773 against 712 MB). jemalloc keeps freed pages for 1 s
    (Arrow's setting) in one arena for all threads (see data_platform/__init__.py). Given
    back at once, every table's buffers were fresh pages, faulted in and zeroed by the
    kernel (~20% of the CPU). With an arena per thread, keeping them 1 s cost up to 40 MB
    more at the peak than 0.5 s, so 0.5 s was set here; with one arena, 1 s is both
    leaner and cheaper (1 GB upload, against an arena per thread at 0.5 s: page faults
    239-254k -> 164-172k, peak RSS 523-537 -> 492-516 MB, with `selection`'s filters).
    What is still malloc'ed (numpy, Python objects, kernels' outputs) was spread over an
    arena per thread (parse, refinement, writer, senders, pools), each keeping its own free
    memory: two arenas saved ~25 MB at the peak of a 1 GB upload, for no measurable speed
    (the GIL serialises most of those allocations anyway)."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    if _mallopt is not None:
        _mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def quarantine_invalid_key(store: ObjectStore, catalog: Catalog, upload: Upload, why: str, actor: str) -> None:
    """An object in landing whose key does not fit the layout: keep its bytes in
    quarantine with reason `invalid_key`, never read it as data."""
    prefix = quarantine_whole(store, upload, sha256=None, reason="invalid_key", detail=why)
    catalog.mark_quarantined(upload, actor, claimer=None, reason="invalid_key", object_key=prefix,
                             detail={"detail": why})
    store.delete_if_unchanged(upload.landing_key, upload.etag)


@dataclass
class BatchResult:
    contract: Contract | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (upload id, key, error)


def ingest_pending(store: ObjectStore, catalog: Catalog, tenant: str, dataset: str, *, claimer: str,
                   pseudonym_key: bytes | None = None, contracts: ContractRegistry | None = None,
                   lease: timedelta | None = None, batch: int = 200, max_uploads: int | None = None) -> BatchResult:
    """Claim and ingest a dataset's pending uploads until none is left.

    An upload that fails (S3 unreachable, a bug) is released with its error and the
    rest go on; the next run retries it, and after MAX_ATTEMPTS it is quarantined.
    """

    store, catalog = tenancy.scoped(store, catalog, tenant)
    lease = lease or timedelta(minutes=30)
    _use_returning_allocators()
    result = BatchResult()
    # Configuration problems (no key on s3://, a broken contract) fail the run before
    # any upload is claimed: they are the operator's to fix, not the uploads' fault.
    if pseudonym_key is None:
        pseudonym_key = load_pseudonym_key(Settings.from_env())
    contracts = contracts or ContractRegistry.from_env(store)
    result.contract = contracts.find(tenant, dataset)
    if result.contract is not None:
        prepare_validation()
    ingestor = Ingestor(store, catalog, claimer=claimer, pseudonym_key=pseudonym_key, contract=result.contract)
    while max_uploads is None or len(result.outcomes) + len(result.failures) < max_uploads:
        claimed = catalog.claim(tenant, dataset, claimer, lease=lease, limit=batch)
        if not claimed:
            break
        for upload in claimed:
            try:
                result.outcomes.append(ingestor.ingest(upload))
            except Exception as err:  # noqa: BLE001 - recorded, released and retried
                log.exception("ingesting %s failed", upload.landing_key)
                result.failures.append((upload.id, upload.landing_key, f"{type(err).__name__}: {err}"))
    # Released only now, so this run does not take them straight back.
    for upload_id, _, error in result.failures:
        catalog.release(upload_id, claimer, error)
    return result

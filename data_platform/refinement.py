"""What happens to each parsed table of an upload before it is written to data/:
exact duplicates dropped within the table, validation against the dataset's contract
(Great Expectations), duplicates of rows other uploads of the dataset already kept
dropped (the catalog's row-hash index), then pseudonymisation of personal data. Plain
Python; the ingestion of one upload drives it.

Duplicates go before validation because a primary-key check fails every copy of a
repeated key, the first one included; the cross-file claim comes after it so that the
index holds only rows that were kept.

Rows that break the contract go to the upload's rejected rows with the failing check
as reason (`not_null:record_id`, `between:priority`, `type:created_at`, ...); the good
rows go on. Personal-data columns come from the contract, plus columns that look like
personal data (decided on the upload's first table and reported).
"""

import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_platform.contracts import Contract
from data_platform.dedup import (RowIndex, column_hashes, combined, first_occurrences_sorted, hashes_as_stored,
                                  kept_order, row_hashes)
from data_platform.neardup import NearDupIndex, detection_text, text_columns
from data_platform.privacy import (
    Pseudonymizer, apply_privacy, detect_pii_columns, sorted_distinct, subject_keys_of,
)
from data_platform.quality import QualityReport, UploadQuality
from data_platform.readers import RAW_ROW_LIMIT, OnRejected, RejectedRow, read_ahead
from data_platform.selection import filter_column, filter_rows
from data_platform.validation import ContractValidator, ExpectationOutcome, PreparedTable, merge_outcomes


# With `near_duplicates: flag` (the default), every table of the upload gains these two
# columns: the upload and row (in its data object) that a row nearly repeats, else null.
NEAR_DUP_UPLOAD = "_near_duplicate_of_upload"
NEAR_DUP_ROW = "_near_duplicate_of_row"
# Rows that only GX can decide wait until this many are gathered (from several tables),
# then go to GX in one call; a table waits only if at most this share of it needs GX.
# Each waiting row holds its raw and cast values: the generator's data has ~0.7% of such
# rows, so at 32k they waited for the end of a 1 GB upload (~13k rows, growing with the
# upload); at 4k a GX call (~25 ms) comes every ~1/3 GB.
GX_BATCH_ROWS = 4_096
GX_DEFER_SHARE = 0.25
# A rejected row as JSON (json.dumps with these options builds a new encoder per call).
_row_json = json.JSONEncoder(default=str, ensure_ascii=False).encode


@dataclass
class _Waiting:
    """A table's rows waiting for GX: their raw and cast values, hashes and record numbers."""

    slot: int  # index of the table's outcomes in UploadRefiner._results
    prepared: PreparedTable
    first_record: int
    raw: pa.Table  # as parsed, for the rejected rows' report
    typed: pa.Table
    hashes: np.ndarray | None


@dataclass(frozen=True)
class _Rows:
    """Rows of a parsed table (`whole`) as `table`: rows `at` of it (ascending; None: all,
    `table` is `whole` or a cast of it). `table` holds stand-ins for the `deferred`
    columns, those validation reads only the names of (see `unread_columns`): their
    values are copied once, when the rows kept are known (`materialised`). Copying the
    long texts for the first occurrences of a table's rows and again for the rows kept
    took two full copies of most of the bytes."""

    whole: pa.Table
    at: np.ndarray | None
    table: pa.Table
    deferred: frozenset[str] = frozenset()

    @classmethod
    def of(cls, whole: pa.Table, first: np.ndarray | None, deferred: frozenset[str]) -> "_Rows":
        """The rows of `whole` where `first` is True (None: all), the `deferred` columns
        as stand-ins."""
        if first is None:
            return cls(whole, None, whole)
        rows, mask = np.flatnonzero(first), pa.array(first)
        n = len(rows)
        columns, stand_ins = [], set()
        for i, f in enumerate(whole.schema):
            if f.name in deferred:
                try:
                    columns.append(pa.nulls(n, f.type))
                    stand_ins.add(f.name)
                    continue
                except (pa.ArrowException, TypeError, ValueError):  # a type without nulls of its own
                    pass
            columns.append(filter_column(whole.column(i), first, rows, mask))
        return cls(whole, rows, pa.Table.from_arrays(columns, schema=whole.schema),
                   frozenset(stand_ins))

    def in_whole(self, rows: np.ndarray) -> np.ndarray:
        """Positions in `whole` of `table`'s rows `rows`."""
        return rows if self.at is None else self.at[rows]

    def raw(self, rows: np.ndarray) -> pa.Table:
        """`table`'s rows `rows` as parsed, every column."""
        return self.whole.take(pa.array(self.in_whole(rows), pa.int64()))

    def materialised(self, keep: np.ndarray | None = None) -> pa.Table:
        """`table`'s rows where `keep` is True (None: all), the deferred columns filled in."""
        if keep is not None and keep.all():
            keep = None
        table = self.table if keep is None else filter_rows(self.table, keep)
        if not self.deferred:
            return table
        in_whole = np.zeros(self.whole.num_rows, dtype=bool)
        rows = self.at if keep is None else self.at[keep]
        in_whole[rows] = True
        mask = pa.array(in_whole)
        return pa.Table.from_arrays([filter_column(self.whole.column(f.name), in_whole, rows, mask)
                                     if f.name in self.deferred else table.column(i)
                                     for i, f in enumerate(table.schema)], schema=table.schema)


@dataclass
class RefinementReport:
    contract: dict | None = None  # version and source of the contract applied, or None
    rows_in: int = 0
    rows_failing: int = 0
    duplicates_in_file: int = 0
    duplicates_of_earlier_uploads: int = 0
    failing_by_check: Counter = field(default_factory=Counter)
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    pii_columns: dict[str, str] = field(default_factory=dict)
    pii_detected: dict[str, str] = field(default_factory=dict)  # not declared, found by their values
    pseudonymised: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # per stage, for the benchmark and the logs
    near_duplicates: dict = field(default_factory=dict)
    quality: dict | None = None  # QualityReport.as_dict(), once the upload is complete
    erased_rows: int = 0  # rows of an erased subject (the tenant's suppression list), dropped

    @property
    def failing_share(self) -> float:
        return self.rows_failing / self.rows_in if self.rows_in else 0.0

    def _checks_without_personal_data(self) -> list[dict]:
        """The checks' outcomes for metadata and the UI: sample values of personal-data
        columns (declared or detected) are withheld. Failing rows are rejected before
        pseudonymisation, so their samples are raw; quarantine keeps them, the UI must not."""
        personal = {**self.pii_detected, **self.pii_columns}
        checks = []
        for outcome in self.outcomes:
            check = outcome.as_dict()
            if check["column"] in personal and check["sample_unexpected"]:
                check["sample_unexpected"] = [f"<{personal[check['column']]} withheld>"] * len(check["sample_unexpected"])
            checks.append(check)
        return checks

    def as_dict(self) -> dict:
        return {
            "contract": self.contract,
            "rows_validated": self.rows_in,
            "rows_failing_validation": self.rows_failing,
            "failing_by_check": dict(self.failing_by_check),
            "duplicate_rows_removed": {"within_file": self.duplicates_in_file,
                                       "of_earlier_uploads": self.duplicates_of_earlier_uploads},
            "checks": self._checks_without_personal_data(),
            "pii_columns": self.pii_columns,
            "pii_detected": self.pii_detected,
            "pseudonymised_values": dict(self.pseudonymised),
            "redacted_in_text": dict(self.redacted),
            "near_duplicates": self.near_duplicates,
            "quality": self.quality,
            "erased_rows": self.erased_rows,
            "stage_seconds": {k: round(v, 3) for k, v in sorted(self.seconds.items())},
        }


class UploadRefiner:
    def __init__(self, contract: Contract | None, pseudonymizer: Pseudonymizer, on_rejected: OnRejected,
                 row_index: RowIndex | None = None, near_dups: NearDupIndex | None = None,
                 upload_id: int | None = None, suppressed: dict[str, dict[str, frozenset[str]]] | None = None):
        self.contract = contract
        # The tenant's erased subjects: kind -> column ('' any) -> pseudonyms (see `_suppress`).
        self.suppressed = suppressed or {}
        self.row_index = row_index
        self.near_dups = near_dups
        self.upload_id = upload_id
        self.near_dup_action = contract.near_duplicates if contract else "flag"
        self._text_columns: list[str] | None = None
        self._rows_out = 0
        self._near_dup_matches: Counter = Counter()
        self.pseudonymizer = pseudonymizer
        self.on_rejected = on_rejected
        self.report = RefinementReport(contract={"version": contract.version, "source": contract.source}
                                       if contract else None)
        # Built at the first table: the first validator of a process imports Great
        # Expectations (~1.5 s), which `prepare_validation` may have started meanwhile.
        self.validator: ContractValidator | None = None
        self.quality = UploadQuality()
        self._results: list[list[ExpectationOutcome]] = []  # per validated table, in order
        self._waiting: list[_Waiting] = []  # tables whose rows GX has still to decide
        self._waiting_rows = 0
        self._pii_decided = False
        # Each table's sorted distinct subject keys, appended to an unlinked local file: they
        # are needed only once the upload is complete, and in memory (merged every few
        # tables) they grew with the upload (~16 MB per GB) and their merges came in spikes.
        self._subject_file = None

    def __call__(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        # Three stages in three threads (each mostly outside the GIL): while one table is
        # compared for near-duplicates and sampled, the next is pseudonymised and the one
        # after it hashed and validated.
        yield from self._scored(read_ahead(self._protected(read_ahead(self._checked(tables)))))
        self.report.outcomes = merge_outcomes(self._results)

    def _checked(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Repeats within the table dropped, the contract applied, rows other uploads kept
        dropped. Rows that only GX can decide wait for a batch (see `_validate`); those
        that pass come out later, as a table of their own."""
        timed = self._stage
        for table in tables:
            hashes = by_column = first = order = None
            if self.row_index is not None:
                with timed("row_hashing"):
                    # Within a table (one schema) rows repeat as read; across files they are
                    # compared as stored (see `_validate`).
                    by_column = column_hashes(table)
                    hashes = combined(by_column) if by_column is not None else row_hashes(table)
                    first, order = first_occurrences_sorted(hashes)  # the order: for the claim
                    self.report.duplicates_in_file += int(len(first) - first.sum())
                    if first.all():
                        first = None
                    else:
                        hashes = hashes[first]
                        if by_column is not None:
                            by_column = {name: h[first] for name, h in by_column.items()}
            with timed("validation"):
                deferred = frozenset()
                if first is not None and self.contract is not None:
                    deferred = frozenset(self._contract_validator().unread_columns(table.schema))
                read = hashes
                rows, keep, hashes = self._validate(_Rows.of(table, first, deferred), hashes, by_column)
                if hashes is not read:  # cast: the order is not theirs, and rows may repeat now
                    order = None
            yield from self._claimed(rows, hashes, keep, order)
            if self._waiting_rows >= GX_BATCH_ROWS:
                with timed("validation"):
                    rows, hashes = self._decide_waiting()
                yield from self._claimed(rows, hashes)
        if self._waiting:
            with timed("validation"):
                rows, hashes = self._decide_waiting()
            yield from self._claimed(rows, hashes)

    def _claimed(self, rows: _Rows, hashes: np.ndarray | None, keep: np.ndarray | None = None,
                 order: np.ndarray | None = None) -> Iterator[pa.Table]:
        """The rows of `keep` (None: all) that no committed upload holds and this upload
        did not keep yet (claimed now: only rows that met the contract enter the row
        index), in one filter. `order`: an argsort of `hashes`, given when they are known
        to be distinct; without it, rows that repeat one kept here are dropped first (the
        same row waiting for GX in two tables, or two texts read that a cast made one value)."""
        if hashes is not None and len(hashes):
            with self._stage("row_index"):
                at = None if keep is None else np.flatnonzero(keep)
                candidates = hashes if at is None else hashes[at]
                if order is not None:
                    if keep is not None:
                        order = kept_order(order, keep)
                else:
                    first, order = first_occurrences_sorted(candidates)
                    if not first.all():
                        self.report.duplicates_in_file += int(len(first) - first.sum())
                        at = np.flatnonzero(first) if at is None else at[first]
                        candidates = candidates[first]
                claimed = self.row_index.claim(candidates, order)
                self.report.duplicates_of_earlier_uploads += int(len(claimed) - claimed.sum())
                if at is None:
                    keep = claimed
                else:
                    keep = np.zeros(len(hashes), dtype=bool)
                    keep[at[claimed]] = True
        table = rows.materialised(keep)
        if table.num_rows:
            yield table

    def _protected(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Personal data pseudonymised (rows of erased subjects dropped)."""
        for table in tables:
            with self._stage("privacy"):
                table = self._protect(table)
            if table.num_rows:  # else every row was an erased subject's
                yield table

    def _scored(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        """Near-duplicates flagged or dropped, quality sampled."""
        timed = self._stage
        for table in tables:
            if self.near_dups is not None:
                with timed("near_duplicates"):
                    table = self._near_duplicates(table)
                if table.num_rows == 0:
                    continue
            self._rows_out += table.num_rows
            with timed("quality"):
                self.quality.add(table.drop_columns([c for c in (NEAR_DUP_UPLOAD, NEAR_DUP_ROW)
                                                     if c in table.column_names]))
            yield table

    def _near_duplicates(self, table: pa.Table) -> pa.Table:
        """Flag (two columns saying which earlier row a row nearly repeats) or drop, as the
        contract says, the rows whose text is a near-duplicate. Runs on the redacted text,
        so the index never holds anything derived from raw personal data."""
        if self._text_columns is None:  # decided once per upload, like personal data
            declared = dict(self.report.pii_columns)
            self._text_columns = text_columns(table, declared)
            self.report.near_duplicates = {"action": self.near_dup_action, "text_columns": self._text_columns,
                                           "flagged": 0, "dropped": 0, "of_earlier_uploads": 0,
                                           "within_upload": 0}
        if not self._text_columns or any(c not in table.column_names for c in self._text_columns):
            return table
        found = self.near_dups.detect(detection_text(table, self._text_columns), self.upload_id, self._rows_out)
        near = found.is_near_dup
        report = self.report.near_duplicates
        if near.any():
            matched = found.matched_upload[near]
            report["within_upload"] += int((matched == self.upload_id).sum())
            report["of_earlier_uploads"] += int((matched != self.upload_id).sum())
            self._near_dup_matches.update(matched[matched != self.upload_id].tolist())
            report["matched_uploads"] = {str(u): n for u, n in self._near_dup_matches.most_common(20)}
        if self.near_dup_action == "drop":
            report["dropped"] += int(near.sum())
            return filter_rows(table, ~near) if near.any() else table
        report["flagged"] += int(near.sum())
        upload = pa.array(np.where(near, found.matched_upload, 0), pa.int64(), mask=~near)
        row = pa.array(np.where(near, found.matched_row, 0), pa.int64(), mask=~near)
        return table.append_column(NEAR_DUP_UPLOAD, upload).append_column(NEAR_DUP_ROW, row)

    @contextmanager
    def _stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.report.seconds[name] += time.perf_counter() - start

    def finish_quality(self, rows_rejected: int) -> QualityReport:
        """Score the upload once every table went through; `rows_rejected` counts the
        rows the reader could not parse as well as those that broke the contract."""
        r = self.report
        unparsed = max(0, rows_rejected - r.rows_failing)
        with self._stage("quality"):
            quality = self.quality.finish(
                rows_in=r.rows_in + r.duplicates_in_file + unparsed, rows_invalid=rows_rejected,
                rows_duplicate=r.duplicates_in_file + r.duplicates_of_earlier_uploads,
                rows_near_duplicate=int(r.near_duplicates.get("flagged", 0) + r.near_duplicates.get("dropped", 0)))
        r.quality = quality.as_dict()
        return quality

    def subject_keys(self) -> np.ndarray:
        """Sorted distinct subject keys of the personal data this upload wrote (its run of
        the erasure index: a subject's pseudonym finds the upload without a scan)."""
        if self._subject_file is None:
            return np.zeros(0, dtype=np.int64)
        self._subject_file.seek(0)
        keys = np.fromfile(self._subject_file, dtype=np.int64)
        # One sorted run per table (~80 per GB): too many to merge (see sorted_distinct).
        return sorted_distinct(keys, in_place=True)

    def _suppress(self, table: pa.Table) -> tuple[pa.Table, int]:
        """Drop the rows of an erased subject: a personal-data column of a kind on the
        tenant's suppression list holding one of its pseudonyms (for that column or any),
        compared in Arrow (`is_in` on the pseudonymised column). Counted in `erased_rows`.
        Runs before near-duplicate detection, so a dropped row is never indexed nor matched."""
        mask = None
        for name, kind in self.report.pii_columns.items():
            columns = self.suppressed.get(kind)
            if not columns or name not in table.column_names:
                continue
            wanted = columns.get("", frozenset()) | columns.get(name, frozenset())
            if not wanted:
                continue
            hit = pc.fill_null(pc.is_in(table.column(name), value_set=pa.array(sorted(wanted), pa.string())), False)
            mask = hit if mask is None else pc.or_(mask, hit)
        dropped = int(pc.sum(mask).as_py() or 0) if mask is not None else 0
        if not dropped:
            return table, 0
        self.report.erased_rows += dropped
        return table.filter(pc.invert(mask)), dropped

    def _contract_validator(self) -> ContractValidator:
        if self.validator is None:
            with self._stage("validation_setup"):
                self.validator = ContractValidator(self.contract)
        return self.validator

    def _validate(self, rows: _Rows, hashes: np.ndarray | None, by_column: dict[str, np.ndarray] | None
                  ) -> tuple[_Rows, np.ndarray | None, np.ndarray | None]:
        """The rows cast to the contract's types, the mask of those that pass (None: all of
        them) and the rows' hashes as stored (cast), which the row index compares across
        files (`hashes_as_stored`). GX costs ~25 ms per call whatever the rows, and Arrow clears almost all
        rows: when only a few rows need GX, they wait, with their outcomes' place kept, and
        are decided with other tables' in one call (`_decide_waiting`; uniqueness still
        holds within each table). Rows failing a cast are rejected at once."""
        table = rows.table
        first_record = self.report.rows_in + 1
        self.report.rows_in += table.num_rows
        if self.contract is None:
            return rows, None, hashes
        prepared, typed = self._contract_validator().prepare(table)
        typed_rows = replace(rows, table=typed)
        if hashes is not None:
            hashes = hashes_as_stored(hashes, by_column, table, typed)
        n = table.num_rows
        if prepared.deferrable and len(prepared.gx_rows) <= GX_DEFER_SHARE * n:
            waiting = prepared.gx_rows
            in_waiting = np.zeros(n, dtype=bool)
            in_waiting[waiting] = True
            self._waiting.append(_Waiting(len(self._results), prepared, first_record,
                                          rows.raw(waiting), typed_rows.materialised(in_waiting),
                                          None if hashes is None else hashes[waiting]))
            self._waiting_rows += len(waiting)
            self._results.append([])  # filled in when decided: outcomes stay in table order
            failing = prepared.first_reasons()
            keep = np.ones(n, dtype=bool)
            keep[waiting] = False
        else:
            result = self._contract_validator().decide([prepared])[0]
            self._results.append(result.outcomes)
            failing = result.failing_rows
            keep = np.ones(n, dtype=bool)
        if failing:
            failed = np.fromiter(failing, dtype=np.int64, count=len(failing))
            failed.sort()
            self._reject(rows.whole, rows.in_whole(failed), first_record + failed,
                         [failing[i] for i in failed.tolist()])
            keep[failed] = False
        return typed_rows, None if keep.all() else keep, hashes

    def _decide_waiting(self) -> tuple[_Rows, np.ndarray | None]:
        """Decide the waiting rows of several tables with one GX call: failing ones
        rejected with their check (and record number) as if decided with their table,
        the others returned as one table, with their hashes."""
        waiting, self._waiting, self._waiting_rows = self._waiting, [], 0
        results = self.validator.decide([w.prepared for w in waiting])
        tables, hashes = [], []
        for w, result in zip(waiting, results):
            self._results[w.slot] = result.outcomes
            checks = {c.name for c in w.prepared.checks}
            # The casts' failures were rejected when the table came; these are GX's.
            failing = {row: check for row, check in result.failing_rows.items() if check in checks}
            keep = np.ones(len(w.prepared.gx_rows), dtype=bool)
            if failing:
                rows = np.fromiter(failing, dtype=np.int64, count=len(failing))
                rows.sort()
                at = np.searchsorted(w.prepared.gx_rows, rows)
                self._reject(w.raw, at, w.first_record + rows, [failing[i] for i in rows.tolist()])
                keep[at] = False
            tables.append(filter_rows(w.typed, keep))
            if w.hashes is not None:
                hashes.append(w.hashes[keep])
        table = pa.concat_tables(tables)
        return _Rows(table, None, table), np.concatenate(hashes) if hashes else None

    def _reject(self, raw: pa.Table, at: np.ndarray, records: np.ndarray, checks: list[str]) -> None:
        """Reject the rows of `raw` at positions `at` (their record numbers, failing checks)."""
        rows = raw.take(pa.array(at, pa.int64())).to_pylist()
        for record, check, row in zip(records.tolist(), checks, rows):
            self.report.failing_by_check[check] += 1
            self.on_rejected(RejectedRow(
                record, check, f"record {record} fails {check}",
                _row_json(row)[:RAW_ROW_LIMIT]))
        self.report.rows_failing += len(rows)

    def _protect(self, table: pa.Table) -> pa.Table:
        if not self._pii_decided:  # once per upload, so every table is treated alike
            declared = self.contract.pii_columns if self.contract else {}
            detected = detect_pii_columns(table, declared)
            self.report.pii_detected = detected
            self.report.pii_columns = {**declared, **detected}
            self._pii_decided = True
        if not self.report.pii_columns:
            return table
        table, privacy = apply_privacy(table, self.pseudonymizer, self.report.pii_columns)
        if self.suppressed:
            table, dropped = self._suppress(table)
            if dropped:  # the keys apply_privacy took from the dropped rows must not be indexed
                privacy["subjects"] = sorted_distinct(np.concatenate(
                    [subject_keys_of(table.column(name)) for name, kind in self.report.pii_columns.items()
                     if kind != "free_text" and name in table.column_names] or [np.zeros(0, dtype=np.int64)]))
        if len(privacy["subjects"]):
            if self._subject_file is None:
                self._subject_file = tempfile.TemporaryFile(prefix="subjects-")
            self._subject_file.write(np.ascontiguousarray(privacy["subjects"], dtype=np.int64).data)
        self.report.pseudonymised.update(privacy["pseudonymised"])
        self.report.redacted.update(privacy["redacted"])
        return table

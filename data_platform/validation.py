"""Validation of Arrow tables against a data contract, with Great Expectations (GX 1.x).

One `ContractValidator` per contract (per upload): it builds one ephemeral GX context,
one pandas data source, one dataframe asset and one whole-dataframe batch definition,
once, and reuses them for every table of the upload. `validate(table)` returns every
expectation's outcome and, for each failing row, the name of the first expectation it
fails: the reason code under which the caller quarantines the row.

What runs where, for a table:

  1. schema (GX, on a zero-row frame with the table's column names, cached per set of
     column names): `column_exists:<col>` for each required column
     (ExpectColumnToExist); `no_extra_columns` when the contract rejects extra columns
     (ExpectTableColumnsToMatchSet, exact match on the contract columns present). A
     missing required column fails every row; extra columns fail no row (the caller
     decides about the whole file).
  2. types (Arrow): a contract column whose type differs from the table's is cast
     (safe cast; a string without an offset cast to a timestamp is taken as UTC, as
     the readers do). Values that cannot be cast fail `type:<col>`. The column is cast
     at once; only if that fails are the failing values looked for, among the values
     whose text does not have a shape that surely casts (ISO dates and timestamps on
     the calendar: a compiled scan; numbers and booleans: a vectorised regex), one
     Arrow cast per suspect value. Rows that do not cast are left out of
     the GX frame (their other checks would be noise); their row numbers are kept.
  3. values (GX, on the cast data): `not_null:<col>` (required and primary-key
     columns), `between:<col>` (min/max), `in_set:<col>` (allowed), `regex:<col>`
     (Python `re.search`), `unique:<col>`, `primary_key` (one column:
     ExpectColumnValuesToBeUnique; several: ExpectCompoundColumnsToBeUnique). GX
     follows its own null rules: nulls never fail between/in_set/regex/unique.
     Uniqueness is GX's: every row holding a duplicated key fails, the first
     occurrence too, and only within the table passed in.

The reason of a failing row follows the order of the outcomes: column_exists, type,
then per contract column not_null, between, in_set, regex, unique, then primary_key.

Exact failing rows, no cap: the frame handed to GX carries a named index `__row` (the
row number in the table) and the result format is COMPLETE with
`unexpected_index_column_names=["__row"]` and `exclude_unexpected_values=True`, so GX
returns every failing row number as one list (its value lists, `unexpected_list` and
`partial_unexpected_list`, stop at 200 and 20; the index list does not). Each
outcome's index count is checked against GX's unexpected_count.

Cost (benchmarks/bench_validation.py): GX spends ~10-20 ms of Python per expectation
per validation whatever the number of rows (metric graph building), and fingerprints
(hashes) the whole frame each time a batch is built. Hence: the context, batch
definition and suites are built once; the suite runs through GX's V1 `Validator` on
the batch definition (what `ValidationDefinition.run` does, minus keeping each result
in the context's store; `batch.validate` would build, and hash, the batch twice); only
the columns with checks are converted to pandas; and with `skip_passing=True`
(default) Arrow first finds, per check, a superset of the rows that can fail it: nulls
(and NaN, which pandas/GX treat as missing) for not_null, values outside the bounds for
between (numbers), values not allowed for in_set (strings, integers, booleans), values
that RE2 does not match for regex (when the pattern means the same to RE2 as to
Python's `re`: no backslash, no POSIX class), every copy of a repeated value for unique
and primary_key. A check with no such row is not sent to GX (its outcome is what GX
would report: success, 0 unexpected); the others run in GX on the union of those rows
only, with their row numbers, so GX decides every failure. On the generator's tickets
this took validation from ~100 ms to ~55 ms per 32k-row table. A test compares
the result with every check run by GX on every row.

GX's fixed cost (~25 ms per call) then dominates, and the rows it must see are few:
`validate` is `prepare` (the Arrow part: schema, casts, candidate rows, a small frame
of the checked columns at those rows) then `decide`, which takes several prepared
tables and runs GX once on all their candidate rows (row numbers offset per table),
splitting the failures back per table. The refinement lets tables' candidate rows wait
and decides them in batches: ~25 ms of Arrow per 32k-row table plus one GX call per
batch. Uniqueness holds within a table: in a batch of several tables the unique and
primary-key checks run on a column of (table, key) tuples, so GX never compares two
tables' rows (every table of the generator's data has primary-key candidates: one GX call
per table, ~125 per GB, before this).

Importing GX takes ~1.5 s and ~85 MB of RSS (with `scipy.stats` and `altair` deferred, see
`import_great_expectations`; ~3 s and ~165 MB without): it is imported when the first
validator is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_platform._native import shape_kernel

if TYPE_CHECKING:
    from data_platform.contracts import ColumnSpec, Contract

ROW_INDEX = "__row"
SAMPLE_SIZE = 20
_LINEAR_BELOW = 16  # cast bisection: slices this short are cast value by value
_LINEAR_SUSPECTS = 1024  # up to this many suspect values are cast one by one

_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [ROW_INDEX],
    # one list of row numbers instead of a dict per failing row with its value
    "exclude_unexpected_values": True,
    # pandas "query" is the whole index list again, as a string
    "return_unexpected_index_query": False,
    "partial_unexpected_count": SAMPLE_SIZE,
}


class ExpectationError(RuntimeError):
    """GX could not evaluate an expectation, or returned an incomplete row list."""


@dataclass
class ExpectationOutcome:
    name: str  # stable check name, e.g. "not_null:record_id", "primary_key"
    expectation_type: str  # the GX expectation (snake case), or "arrow_cast" for type:<col>
    column: str | None
    success: bool
    evaluated: int  # rows evaluated (for no_extra_columns: columns)
    unexpected_count: int  # failing rows (for no_extra_columns: extra columns)
    sample_unexpected: list = field(default_factory=list)  # <= 20 JSON-serialisable examples

    def as_dict(self) -> dict:
        return {"name": self.name, "expectation_type": self.expectation_type, "column": self.column,
                "success": self.success, "evaluated": self.evaluated,
                "unexpected_count": self.unexpected_count, "sample_unexpected": list(self.sample_unexpected)}


@dataclass
class ValidationResult:
    outcomes: list[ExpectationOutcome]
    failing_rows: dict[int, str]  # 0-based row in the table -> name of its first failing expectation
    rows: int = 0  # rows in the table
    # The table with contract columns cast to their declared types (values that would
    # not cast are null there; their rows are in failing_rows). None: unchanged.
    typed_table: pa.Table | None = None

    @property
    def failing_share(self) -> float:
        return len(self.failing_rows) / self.rows if self.rows else 0.0

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    def outcome(self, name: str) -> ExpectationOutcome | None:
        return next((o for o in self.outcomes if o.name == name), None)


def merge_outcomes(results: Iterable[ValidationResult | Sequence[ExpectationOutcome]]) -> list[ExpectationOutcome]:
    """Outcomes of one upload from those of its tables: counts summed per check name
    (in first-seen order), success only if every table succeeded, up to 20 samples."""
    merged: dict[str, ExpectationOutcome] = {}
    for result in results:
        outcomes = result.outcomes if isinstance(result, ValidationResult) else result
        for o in outcomes:
            m = merged.get(o.name)
            if m is None:
                merged[o.name] = ExpectationOutcome(o.name, o.expectation_type, o.column, o.success, o.evaluated,
                                                    o.unexpected_count, list(o.sample_unexpected[:SAMPLE_SIZE]))
                continue
            m.success = m.success and o.success
            m.evaluated += o.evaluated
            m.unexpected_count += o.unexpected_count
            room = SAMPLE_SIZE - len(m.sample_unexpected)
            if room > 0:
                m.sample_unexpected.extend(o.sample_unexpected[:room])
    return list(merged.values())


# -- GX plumbing -------------------------------------------------------------------------

# Modules GX imports when it is imported, only for expectations no contract builds: KL
# divergence and the KS tests (scipy.stats), their charts (altair). They were 62 and 27 MB
# of an ingesting process's RSS, out of a 600 MB budget of which GX's import takes ~170.
_DEFERRED_BY_GX = ("scipy.stats", "altair")
_deferred_lock = threading.Lock()


class _DeferredModule(types.ModuleType):
    """Stands in `sys.modules` for a module imported but maybe never used: the first
    access to an attribute it lacks imports the real module (which replaces it in
    `sys.modules`, so later imports get the real one) and reads the attribute there.
    Not `importlib.util.LazyLoader`: its modules load on any attribute access, and the
    import system reads `__spec__` of a module it finds in `sys.modules`, so GX's own
    `from scipy import stats` loaded them (Python 3.11). Here `__spec__` is a plain
    attribute (None) and only the attributes a module itself defines load it."""

    def __getattr__(self, attr: str):
        return getattr(self._real(), attr)

    def _real(self) -> types.ModuleType:
        name = self.__name__
        with _deferred_lock:
            if sys.modules.get(name) is self:
                del sys.modules[name]
                try:
                    importlib.import_module(name)
                except BaseException:
                    sys.modules[name] = self
                    raise
        return sys.modules[name]


def import_great_expectations() -> types.ModuleType:
    """`great_expectations`, imported with `_DEFERRED_BY_GX` deferred (each only if it is
    installed and not imported yet: then nothing changes for whoever uses it)."""
    with _deferred_lock:
        if "great_expectations" not in sys.modules:
            for name in _DEFERRED_BY_GX:
                if name not in sys.modules and _installed(name):
                    sys.modules[name] = _DeferredModule(name)
    return importlib.import_module("great_expectations")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


class _GX:
    """An ephemeral GX context with one pandas dataframe asset and its whole-dataframe
    batch definition, built once; `run` validates a suite against one DataFrame."""

    def __init__(self) -> None:
        gx = import_great_expectations()
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.validator.v1_validator import Validator

        self.gx = gx
        self.validator_class = Validator
        self.context = gx.get_context(mode="ephemeral")
        # tqdm bars ("Calculating Metrics") are on by default
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = self.context.data_sources.add_pandas(name="tables")
        asset = source.add_dataframe_asset(name="table")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_table")

    def suite(self, name: str, expectations: Iterable) -> Any:
        suite = self.gx.ExpectationSuite(name=name)
        for expectation in expectations:
            suite.add_expectation(expectation)
        return suite

    def run(self, df: pd.DataFrame, suite) -> list:
        # What `ValidationDefinition.run` does, minus keeping every result in the
        # context's (in-memory) results store. `batch_definition.get_batch(...).validate`
        # would build the batch twice, and each build fingerprints the whole frame.
        validator = self.validator_class(batch_definition=self.batch_definition,
                                         batch_parameters={"dataframe": df}, result_format=_RESULT_FORMAT)
        return validator.validate_expectation_suite(suite).results


def _meta_name(result) -> str:
    return result.expectation_config.meta["name"]


def _raise_on_exception(result) -> None:
    info = result.exception_info or {}
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for i in infos:
        if i.get("raised_exception"):
            raise ExpectationError(f"GX could not evaluate {_meta_name(result)}: {i.get('exception_message')}")


def _unexpected_rows(result) -> np.ndarray:
    """Every failing row number of a map expectation result (checked against its count)."""
    res = result.result or {}
    count = int(res.get("unexpected_count") or 0)
    index_list = res.get("unexpected_index_list") or []
    if index_list and isinstance(index_list[0], dict) and isinstance(index_list[0].get(ROW_INDEX), list):
        rows = np.asarray(index_list[0][ROW_INDEX], dtype=np.int64)
    else:  # one dict per row (exclude_unexpected_values ignored)
        rows = np.asarray([d[ROW_INDEX] if isinstance(d, dict) else d for d in index_list], dtype=np.int64)
    if len(rows) != count:
        raise ExpectationError(f"GX returned {len(rows)} failing rows for {_meta_name(result)} "
                               f"but counted {count} unexpected values")
    return rows


# -- samples ---------------------------------------------------------------------------------


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _samples(columns: Sequence[pa.ChunkedArray | pa.Array], rows: np.ndarray) -> list:
    if not columns or len(rows) == 0:
        return []
    head = pa.array(rows[:SAMPLE_SIZE], pa.int64())
    values = [c.take(head).to_pylist() for c in columns]
    if len(values) == 1:
        return [_jsonable(v) for v in values[0]]
    return [[_jsonable(v) for v in row] for row in zip(*values)]


# -- casting ---------------------------------------------------------------------------------


_SURELY_CASTABLE = {  # string shapes Arrow's safe cast accepts (dates and timestamps: `_iso_shapes`)
    "integer": r"^-?\d{1,18}$",
    "float": r"^-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?$",
    "boolean": r"^(?:true|false|True|False|TRUE|FALSE|0|1)$",
}
_OFFSET = r"[T ]\d{2}(?::\d{2}){0,2}(?:\.\d+)?(?:Z|[+-]\d{2}(?::?\d{2})?)$"  # a time with a zone
_CAST_ERRORS = (pa.ArrowInvalid, OverflowError)


def _caster(source: pa.DataType, target: pa.DataType) -> Callable[..., pa.Array]:
    """`cast(values, mode)`: the array of `source` cast to `target` (safe), raising on a
    value that does not fit. Strings without an offset and naive timestamps become UTC
    (or the target's zone), as the readers take them. For strings to a zoned timestamp,
    `mode` says what is tried: "offset" only strings with an offset (a failing naive
    cast of a whole column is slow: ~30 ms per 32k rows), "either" with an offset or
    all without, "mixed" also both kinds in one array (a regex pass more)."""
    if pa.types.is_timestamp(target) and target.tz is not None and (
            pa.types.is_string(source) or pa.types.is_large_string(source)):
        naive = pa.timestamp(target.unit)

        def as_naive(values: pa.Array) -> pa.Array:
            return pc.assume_timezone(pc.cast(values, naive), target.tz).cast(target)

        def cast(values: pa.Array, mode: str = "either") -> pa.Array:
            try:
                return pc.cast(values, target)
            except pa.ArrowInvalid:
                if mode == "offset":
                    raise
                if mode == "either":
                    return as_naive(values)
            try:
                return as_naive(values)
            except pa.ArrowInvalid:
                pass
            offset = pc.match_substring_regex(values, _OFFSET)
            with_offset = pc.cast(pc.if_else(offset, values, None), target)
            without = as_naive(pc.if_else(offset, None, values))
            return pc.if_else(offset, with_offset, without)
        return cast
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(source) and source.tz is None and target.tz:
        return lambda values, mode="either": pc.assume_timezone(values, target.tz).cast(target)
    return lambda values, mode="either": pc.cast(values, target)


def _suspects(values: pa.Array, target_kind: str | None) -> np.ndarray:
    """Rows of the non-null values that might not cast; the others surely do (or the
    final cast finds them). Without a known shape: every non-null value."""
    t = values.type
    sure = None
    if target_kind in ("timestamp", "date") and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return np.flatnonzero(~_iso_shapes(values, timestamp=target_kind == "timestamp"))
    if target_kind in _SURELY_CASTABLE and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        sure = pc.match_substring_regex(values, _SURELY_CASTABLE[target_kind])
    elif target_kind == "integer" and pa.types.is_floating(t):
        sure = pc.and_(pc.equal(values, pc.trunc(values)), pc.less(pc.abs(values), 2.0 ** 63))
    elif target_kind == "float" and pa.types.is_integer(t):
        sure = pc.less_equal(pc.abs(values), 2 ** 53)
    if sure is None:
        return np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
    sure = pc.fill_null(sure, True).to_numpy(zero_copy_only=False)
    return np.flatnonzero(~sure)


def _iso_shapes(values: pa.Array, *, timestamp: bool) -> np.ndarray:
    """Per value of a string column: True where it is an ISO date (or, with `timestamp`,
    an ISO date or timestamp) of a shape Arrow's safe cast surely accepts, on the
    calendar (no 30 February), or null. The grammar is in `_native/shape_kernel.c`; one
    pass there (0.33 ms per 24k-row table of the generator's timestamps) replaced an RE2
    match of the column (1.74 ms) and a numpy pass over the matched values' days (~0.4)."""
    n = len(values)
    flags = np.zeros(n, dtype=np.uint8)
    _, offsets, data = values.buffers()[:3]
    if n and offsets is not None:
        shape_kernel.surely_castable(offsets, data if data is not None else b"", values.offset, n,
                                     pa.types.is_large_string(values.type), timestamp, flags)
    sure = flags.view(bool)
    if values.null_count:
        sure |= ~values.is_valid().to_numpy(zero_copy_only=False)
    return sure


def _bad_positions(values: pa.Array, cast, linear: bool = False) -> list[int]:
    """Positions of the values that do not cast, by bisection: a slice that casts is
    done with in one call; short slices (or all, if `linear`) are tried value by value."""
    bad: list[int] = []
    if linear:
        # Each distinct value cast once: bad values repeat (one wrong format, again and
        # again), and a cast that raises costs ~18 µs (74 suspects of a 22k-row table of
        # the generator's: 1.3 ms, 5 distinct values).
        verdicts: dict = {}
        for i, value in enumerate(values.to_pylist()):
            if isinstance(value, list | dict):  # nested values: not hashable, cast each
                value = object()
            fails = verdicts.get(value)
            if fails is None:
                try:
                    cast(values.slice(i, 1))
                    fails = False
                except _CAST_ERRORS:
                    fails = True
                verdicts[value] = fails
            if fails:
                bad.append(i)
        return bad

    def walk(offset: int, length: int) -> None:
        part = values.slice(offset, length)
        try:
            cast(part)
            return
        except _CAST_ERRORS:
            pass
        if length <= _LINEAR_BELOW:
            for i in range(length):
                try:
                    cast(part.slice(i, 1))
                except _CAST_ERRORS:
                    bad.append(offset + i)
            return
        half = length // 2
        walk(offset, half)
        walk(offset + half, length - half)

    if len(values):
        walk(0, len(values))
    return bad


def _null_at(values: pa.Array, rows: np.ndarray) -> pa.Array:
    if len(rows) == 0:
        return values
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, values.type), values)


def _cast_column(column: pa.ChunkedArray, target: pa.DataType,
                 target_kind: str | None = None) -> tuple[pa.ChunkedArray, np.ndarray]:
    """(column cast to `target`, with nulls for the values that cannot be cast; their rows).

    The whole column is cast at once (safe cast). Only if that fails: the values whose
    text is not of a shape that surely casts (an ISO date/timestamp in the calendar, a
    number...) are tried one by one, then the column with those nulled is cast at
    once again; if that still fails, a bisection over the whole column finds the rest."""
    cast = _caster(column.type, target)
    values = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    try:
        return pa.chunked_array([cast(values, "offset")], target), np.empty(0, np.int64)
    except pa.ArrowNotImplementedError:  # no such cast at all: every non-null value fails
        bad = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
        return pa.chunked_array([pa.nulls(len(values), target)], target), bad
    except _CAST_ERRORS:
        pass
    suspects = _suspects(values, target_kind)
    picked = values.take(pa.array(suspects, pa.int64())) if len(suspects) < len(values) else values
    # suspects are mostly bad: value by value, unless there are many
    linear = len(suspects) <= _LINEAR_SUSPECTS and len(suspects) < len(values)
    bad = suspects[np.asarray(_bad_positions(picked, cast, linear), dtype=np.int64)]
    try:
        cast_values = cast(_null_at(values, bad), "mixed")
    except _CAST_ERRORS:
        masked = _null_at(values, bad)
        more = _bad_positions(masked, lambda v: cast(v, "mixed"))
        bad = np.union1d(bad, np.asarray(more, dtype=np.int64))
        cast_values = cast(_null_at(values, bad), "mixed")
    return pa.chunked_array([cast_values], target), bad.astype(np.int64)


# -- checks ----------------------------------------------------------------------------------


def _pd_value(spec: "ColumnSpec", value):
    """A contract value as pandas holds the column (timestamps as pd.Timestamp)."""
    if spec.type == "timestamp" and value is not None:
        return pd.Timestamp(value)
    return value


@dataclass(frozen=True)
class _Check:
    name: str
    columns: tuple[str, ...]
    build: Callable[[], Any]  # a fresh GX expectation
    # Arrow pre-check: a superset of the rows that can fail (None: any row may), given the
    # check's columns in order. GX then only sees those rows.
    candidates: Callable[..., np.ndarray] | None = None
    samples: bool = True
    within_table: bool = False  # uniqueness: decided over one table's rows at a time
    # For within-table checks: the same check in a batch of several tables, given the name
    # of a column of (table, key...) tuples (see `_batch_keys`), so GX never compares rows
    # of two tables.
    build_batched: Callable[[str], Any] | None = None

    @property
    def column(self) -> str | None:
        return self.columns[0] if len(self.columns) == 1 else None


def _value_checks(contract: "Contract", expectations) -> list[_Check]:
    E = expectations
    checks: list[_Check] = []
    pk = tuple(contract.primary_key)
    for spec in contract.columns:
        col = spec.name
        meta = lambda kind, col=col: {"name": f"{kind}:{col}"}  # noqa: E731
        if spec.required or col in pk:
            checks.append(_Check(
                f"not_null:{col}", (col,),
                lambda col=col, m=meta("not_null"): E.ExpectColumnValuesToNotBeNull(column=col, meta=m),
                candidates=_missing, samples=False))
        if spec.min is not None or spec.max is not None:
            lo, hi = _pd_value(spec, spec.min), _pd_value(spec, spec.max)
            numeric = spec.type in ("integer", "float")

            def outside(c, lo=lo, hi=hi):  # nulls and NaN compare false: GX skips them too
                mask = pc.or_(pc.less(c, lo) if lo is not None else pa.scalar(False),
                              pc.greater(c, hi) if hi is not None else pa.scalar(False))
                return _mask(mask, len(c))
            checks.append(_Check(
                f"between:{col}", (col,),
                lambda col=col, lo=lo, hi=hi, m=meta("between"): E.ExpectColumnValuesToBeBetween(
                    column=col, min_value=lo, max_value=hi, meta=m),
                candidates=outside if numeric else None))
        if spec.allowed is not None:
            allowed = [_pd_value(spec, v) for v in spec.allowed]
            exact = spec.type in ("string", "integer", "boolean")
            allowed_values = list(spec.allowed) if exact else []

            def not_allowed(c, allowed_values=allowed_values):
                return _mask(pc.and_(pc.is_valid(c), pc.invert(pc.is_in(
                    c, value_set=pa.array(allowed_values, c.type)))), len(c))
            checks.append(_Check(
                f"in_set:{col}", (col,),
                lambda col=col, allowed=allowed, m=meta("in_set"): E.ExpectColumnValuesToBeInSet(
                    column=col, value_set=allowed, meta=m),
                candidates=not_allowed if exact else None))
        if spec.regex is not None:
            checks.append(_Check(
                f"regex:{col}", (col,),
                lambda col=col, rx=spec.regex, m=meta("regex"): E.ExpectColumnValuesToMatchRegex(
                    column=col, regex=rx, meta=m),
                candidates=_regex_candidates(spec.regex) if spec.type == "string" else None))
        if spec.unique and pk != (col,):
            checks.append(_Check(
                f"unique:{col}", (col,),
                lambda col=col, m=meta("unique"): E.ExpectColumnValuesToBeUnique(column=col, meta=m),
                candidates=_repeated, within_table=True,
                build_batched=lambda keys, m=meta("unique"): E.ExpectColumnValuesToBeUnique(column=keys, meta=m)))
    batched_pk = lambda keys: E.ExpectColumnValuesToBeUnique(column=keys, meta={"name": "primary_key"})  # noqa: E731
    if len(pk) == 1:
        checks.append(_Check("primary_key", pk, lambda: E.ExpectColumnValuesToBeUnique(
            column=pk[0], meta={"name": "primary_key"}), candidates=_repeated, within_table=True,
            build_batched=batched_pk))
    elif len(pk) > 1:  # ExpectCompoundColumnsToBeUnique refuses fewer than two columns
        checks.append(_Check("primary_key", pk, lambda: E.ExpectCompoundColumnsToBeUnique(
            column_list=list(pk), meta={"name": "primary_key"}), candidates=_repeated_together, within_table=True,
            build_batched=batched_pk))
    return checks


def _batch_key_column(check: _Check) -> str:
    return f"__batch_key:{check.name}"


def _batch_keys(frame: pd.DataFrame, columns: tuple[str, ...], table_of_row: np.ndarray) -> pd.Series:
    """Per row of a batch, the key a within-table uniqueness check compares, with its table
    in front: (table, value) or (table, value, value, ...); None where GX would skip the
    row (one column: its value missing; several: all of them missing). Missing values
    inside a tuple are None, so that two of them compare equal, as GX's compound check
    (pandas' `duplicated`) takes them. GX's column uniqueness over these tuples then fails
    exactly the rows each table's own check fails."""
    missing = [pd.isna(frame[c]).to_numpy() for c in columns]
    values = [np.where(m, None, frame[c].to_numpy(dtype=object)) for c, m in zip(columns, missing)]
    keys = pd.Series(list(zip(table_of_row.tolist(), *values)), index=frame.index, dtype=object)
    keys[np.logical_and.reduce(missing)] = None
    return keys


# -- Arrow pre-checks (supersets of the failing rows) ------------------------------------


def _mask(values, n: int) -> np.ndarray:
    if isinstance(values, pa.Scalar):
        return np.full(n, bool(values.as_py()))
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _missing(c: pa.ChunkedArray) -> np.ndarray:
    """Nulls, and NaN (pandas, hence GX, takes NaN for missing)."""
    mask = pc.is_null(c, nan_is_null=pa.types.is_floating(c.type))
    return _mask(mask, len(c))


def _repeated(c: pa.ChunkedArray) -> np.ndarray:
    """Rows whose (non-null) value occurs more than once: every copy of a duplicate."""
    counts = pc.value_counts(c.drop_null() if c.null_count else c)
    if len(counts) == 0:
        return np.zeros(len(c), dtype=bool)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return np.zeros(len(c), dtype=bool)
    return _mask(pc.is_in(c, value_set=repeated), len(c))


def _repeated_together(*columns: pa.ChunkedArray) -> np.ndarray:
    """Rows whose combination of values occurs more than once (a hash collision only adds
    a row for GX to look at)."""
    from data_platform.dedup import row_hashes

    hashes = row_hashes(pa.table({f"c{i}": c for i, c in enumerate(columns)}))
    values, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


# Patterns RE2 reads as Python's `re` does, closely enough that an RE2 match implies a
# Python match: no backslash (\d and \w are Unicode-aware in Python, ASCII in RE2), no
# POSIX class, no brace quantifier with an empty bound. Others: GX looks at every row.
_RE2_SAFE = re.compile(r"[^\\]*")


def _regex_candidates(pattern: str):
    if not _RE2_SAFE.fullmatch(pattern) or "[:" in pattern or "{," in pattern:
        return None
    try:
        pc.match_substring_regex(pa.array(["probe"]), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # lookaround and the like: not RE2
        return None

    def not_matching(c: pa.ChunkedArray) -> np.ndarray:
        return _mask(pc.and_(pc.is_valid(c), pc.invert(pc.match_substring_regex(c, pattern))), len(c))
    return not_matching


def _type_name(expectation) -> str:
    return expectation.expectation_type


def _row_index(rows: np.ndarray | None, n: int) -> pd.Index:
    return pd.RangeIndex(n, name=ROW_INDEX) if rows is None else pd.Index(rows, name=ROW_INDEX)


# -- validators ------------------------------------------------------------------------------


def prepare_validation() -> threading.Thread:
    """Start importing Great Expectations in the background, so that the import overlaps
    the first download and parse; the first validator waits for it (the import lock)."""
    thread = threading.Thread(target=import_great_expectations, name="import-great-expectations", daemon=True)
    thread.start()
    return thread


class ContractValidator:
    """Validates tables against one contract; build once per upload (the GX context and
    suites are made here and reused), then call `validate` for each table."""

    def __init__(self, contract: "Contract", *, skip_passing: bool = True):
        self.contract = contract
        self.skip_passing = skip_passing
        self._gx = _GX()
        self._checks = _value_checks(contract, self._gx.gx.expectations)
        self._check_types = {c.name: _type_name(c.build()) for c in self._checks}
        self._suites: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}
        self._schema_outcomes: dict[tuple[str, ...], list[tuple[str, str, str | None, bool, list]]] = {}
        self._targets = {c.name: c.arrow_type() for c in contract.columns}
        self.gx_runs = 0  # validations sent to GX (for benchmarks and tests)

    merge = staticmethod(merge_outcomes)

    # schema ------------------------------------------------------------------------------

    def _schema_checks(self, names: tuple[str, ...]):
        """[(name, expectation_type, column, success, sample)] for these column names, by
        GX on a zero-row frame; cached, as every table of an upload has the same names."""
        cached = self._schema_outcomes.get(names)
        if cached is not None:
            return cached
        E = self._gx.gx.expectations
        expectations = [E.ExpectColumnToExist(column=c.name, meta={"name": f"column_exists:{c.name}"})
                        for c in self.contract.columns if c.required]
        if self.contract.extra_columns == "reject":
            present = [c.name for c in self.contract.columns if c.name in names]
            expectations.append(E.ExpectTableColumnsToMatchSet(
                column_set=present, exact_match=True, meta={"name": "no_extra_columns"}))
        out = []
        if expectations:
            frame = pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
            by_name = {_meta_name(r): r for r in self._gx.run(frame, self._gx.suite("schema", expectations))}
            self.gx_runs += 1
            for e in expectations:
                r = by_name[e.meta["name"]]
                _raise_on_exception(r)
                sample = []
                if e.meta["name"] == "no_extra_columns":
                    mismatched = ((r.result or {}).get("details") or {}).get("mismatched") or {}
                    sample = list(mismatched.get("unexpected", []))
                out.append((e.meta["name"], e.expectation_type, getattr(e, "column", None), bool(r.success), sample))
        self._schema_outcomes[names] = out
        return out

    # values --------------------------------------------------------------------------------

    def _suite(self, names: tuple[str, ...], batched: set[str] = frozenset()):
        """The suite of these checks; those in `batched` on their (table, key) column."""
        cache_key = (names, tuple(sorted(batched)))
        suite = self._suites.get(cache_key)
        if suite is None:
            wanted = set(names)
            suite = self._gx.suite("contract", [c.build_batched(_batch_key_column(c)) if c.name in batched
                                                else c.build() for c in self._checks if c.name in wanted])
            self._suites[cache_key] = suite
        return suite

    def validate(self, table: pa.Table) -> ValidationResult:
        prepared, typed = self.prepare(table)
        result = self.decide([prepared])[0]
        result.typed_table = typed
        return result

    def unread_columns(self, schema: pa.Schema) -> set[str]:
        """Columns of a table of this schema whose values `prepare` never reads (only their
        names): not in the contract, or already of the contract's type and in no value
        check (free texts and personal-data columns, usually). A caller may hand `prepare`
        stand-ins for them (of the same type and length) and keep the real ones."""
        checked = {col for c in self._checks for col in c.columns}
        return {f.name for f in schema
                if f.name not in self._targets
                or f.type == self._targets[f.name] and f.name not in checked}

    def prepare(self, table: pa.Table) -> tuple["PreparedTable", pa.Table]:
        """The Arrow part of a table's validation: schema (cached), casts, and per value
        check the rows that may fail it. Returns what GX still has to decide and the
        table cast to the contract's types. Reads the values of the columns that
        `unread_columns` leaves out, and only the names of those it gives."""
        n = table.num_rows
        present = set(table.column_names)
        outcomes: list[ExpectationOutcome] = []
        failing: list[tuple[str, np.ndarray]] = []  # in reason order

        for name, etype, column, success, sample in self._schema_checks(tuple(table.column_names)):
            if name == "no_extra_columns":
                outcomes.append(ExpectationOutcome(name, etype, None, success, table.num_columns,
                                                   len(sample), sample[:SAMPLE_SIZE]))
                continue
            outcomes.append(ExpectationOutcome(name, etype, column, success, n, 0 if success else n, []))
            if not success:
                failing.append((name, np.arange(n, dtype=np.int64)))
        schema_failed = bool(failing)

        # types, in Arrow
        columns: dict[str, pa.ChunkedArray] = {}
        type_bad = np.zeros(n, dtype=bool)
        for spec in self.contract.columns:
            if spec.name not in present:
                continue
            original = table.column(spec.name)
            target = self._targets[spec.name]
            if original.type == target:
                cast, bad = original, np.empty(0, np.int64)
            else:
                cast, bad = _cast_column(original, target, spec.type)
            columns[spec.name] = cast
            name = f"type:{spec.name}"
            outcomes.append(ExpectationOutcome(name, "arrow_cast", spec.name, len(bad) == 0, n, len(bad),
                                               _samples([original], bad)))
            if len(bad):
                failing.append((name, bad))
                type_bad[bad] = True

        # values: which rows GX must look at
        checks = [c for c in self._checks if all(col in columns for col in c.columns)]
        kept_rows = None
        checked = {col for c in checks for col in c.columns}  # not the long texts, usually
        gx_columns = {k: v for k, v in columns.items() if k in checked}
        if type_bad.any():
            kept_rows = np.flatnonzero(~type_bad)
            take = pa.array(kept_rows, pa.int64())
            gx_columns = {k: v.take(take) for k, v in gx_columns.items()}
        evaluated = n if kept_rows is None else len(kept_rows)
        to_run = []
        look_at = np.zeros(evaluated, dtype=bool)  # rows some check may fail
        for c in checks:
            if evaluated == 0:
                continue
            if not self.skip_passing or c.candidates is None:
                to_run.append(c)
                look_at[:] = True
                continue
            candidates = c.candidates(*(gx_columns[col] for col in c.columns))
            if candidates.any():
                to_run.append(c)
                look_at |= candidates
        gx_rows = _row_index(kept_rows, evaluated).to_numpy()
        frame = None
        if to_run:
            frame_columns = gx_columns
            if not look_at.all():  # GX costs per row too: it sees only rows a check may fail
                positions = np.flatnonzero(look_at)
                take = pa.array(positions, pa.int64())
                frame_columns = {col: v.take(take) for col, v in frame_columns.items()}
                gx_rows = gx_rows[positions]
            frame = pa.table(frame_columns)
        else:
            gx_rows = gx_rows[:0]

        typed = table
        for name, column in columns.items():
            if column.type != table.schema.field(name).type:
                i = typed.schema.get_field_index(name)
                typed = typed.set_column(i, pa.field(name, column.type), column)
        return PreparedTable(n, outcomes, failing, checks, to_run, evaluated, gx_rows, frame, schema_failed), typed

    def decide(self, prepared: Sequence["PreparedTable"]) -> list[ValidationResult]:
        """Finish the validation of prepared tables with one GX call for all of them:
        their rows that may fail go to GX in one frame (row numbers made distinct by an
        offset per table), and GX's failing rows are split back per table. A check that
        had no candidate row in a table is not evaluated for it (as if run alone).
        Uniqueness holds within a table: in a batch, GX compares (table, key) tuples
        (`_batch_keys`). Results have no typed table."""
        batch = [p for p in prepared if p.to_run]
        found: list[dict[str, np.ndarray]] = [{} for _ in prepared]  # per table: check -> failing rows
        if batch:
            in_batch = [i for i, p in enumerate(prepared) if p.to_run]
            wanted = {c.name for p in batch for c in p.to_run}
            to_run = [c for c in self._checks if c.name in wanted]
            used = list(dict.fromkeys(col for c in to_run for col in c.columns))
            starts = np.cumsum([0] + [p.rows for p in batch])
            frame = pa.concat_tables([p.frame.select(used) for p in batch]).to_pandas()
            frame.index = pd.Index(np.concatenate([p.gx_rows + start for p, start in zip(batch, starts)]),
                                   name=ROW_INDEX)
            # Uniqueness holds within a table: in a batch of several, GX compares each row's
            # key with its table's number in front (one GX call instead of one per table).
            keyed = {c.name for c in to_run if c.within_table} if len(batch) > 1 else set()
            if keyed:
                table_of_row = np.repeat(np.arange(len(batch)), [len(p.gx_rows) for p in batch])
                for c in to_run:
                    if c.name in keyed:
                        frame[_batch_key_column(c)] = _batch_keys(frame, c.columns, table_of_row)
            results = {_meta_name(r): r for r in self._gx.run(frame, self._suite(tuple(c.name for c in to_run),
                                                                               batched=keyed))}
            self.gx_runs += 1
            del frame
            for c in to_run:
                r = results[c.name]
                _raise_on_exception(r)
                rows = _unexpected_rows(r)
                table_of = np.searchsorted(starts, rows, side="right") - 1
                for k, i in enumerate(in_batch):
                    found[i][c.name] = rows[table_of == k] - starts[k]
        out = []
        for p, failing_rows in zip(prepared, found):
            outcomes = list(p.outcomes)
            failing = list(p.failing)
            run = {c.name for c in p.to_run}
            for c in p.checks:
                etype = self._check_types[c.name]
                rows = failing_rows.get(c.name) if c.name in run else None
                if rows is None:  # no row could fail it: not sent to GX
                    outcomes.append(ExpectationOutcome(c.name, etype, c.column, True, p.evaluated, 0, []))
                    continue
                sample = []
                if c.samples and len(rows):
                    at = np.searchsorted(p.gx_rows, rows)
                    sample = _samples([p.frame.column(col) for col in c.columns], at)
                outcomes.append(ExpectationOutcome(c.name, etype, c.column, len(rows) == 0, p.evaluated, len(rows),
                                                   sample))
                if len(rows):
                    failing.append((c.name, rows))
            out.append(ValidationResult(outcomes, _first_reasons(failing, p.rows), p.rows))
        return out


@dataclass
class PreparedTable:
    """A table after the Arrow part of its validation (`ContractValidator.prepare`), waiting
    for GX to decide the rows that may fail a value check (`gx_rows`, ascending; the other
    rows pass every value check). Small: only the checked columns of those rows are kept."""

    rows: int
    outcomes: list[ExpectationOutcome]  # schema and type checks
    failing: list[tuple[str, np.ndarray]]  # their failing rows, in reason order
    checks: list[_Check]  # the value checks that apply, in order
    to_run: list[_Check]  # those some row may fail: GX runs them
    evaluated: int  # rows the value checks evaluate (those that cast)
    gx_rows: np.ndarray
    frame: pa.Table | None  # the checked columns (cast) at gx_rows
    schema_failed: bool  # a required column is missing: every row fails

    @property
    def deferrable(self) -> bool:
        """Its GX decision can wait for other tables': it has rows GX must decide, none of
        them failing the schema or a cast already."""
        return bool(self.to_run) and not self.schema_failed

    def first_reasons(self) -> dict[int, str]:
        """Rows failing the schema or a cast, with their reason: final before GX runs,
        since those checks come first in the reason order."""
        return _first_reasons(self.failing, self.rows)


def _first_reasons(failing: list[tuple[str, np.ndarray]], n: int) -> dict[int, str]:
    if not failing:
        return {}
    reason = np.full(n, -1, dtype=np.int32)
    for k, (_, rows) in enumerate(failing):
        fresh = rows[reason[rows] < 0]
        reason[fresh] = k
    rows = np.flatnonzero(reason >= 0)
    names = [name for name, _ in failing]
    return {int(r): names[k] for r, k in zip(rows.tolist(), reason[rows].tolist())}


class BasicValidator:
    """For datasets without a contract: table-level GX checks only, at least one column
    (`column_count`) and at least one row (`row_count`). They produce outcomes but never
    fail a row.

    Both read only the table's shape, so GX gets the shape, not the data: the column
    check runs on a zero-row frame with the table's column names (once per set of
    names), the row check on a zero-column frame of the table's length (no conversion
    of the data, no fingerprint of its text columns)."""

    def __init__(self, table_schema: pa.Schema):
        self.schema = table_schema
        self._gx = _GX()
        E = self._gx.gx.expectations
        self._columns_suite = self._gx.suite("basic_columns", [
            E.ExpectTableColumnCountToBeBetween(min_value=1, meta={"name": "column_count"})])
        self._rows_suite = self._gx.suite("basic_rows", [
            E.ExpectTableRowCountToBeBetween(min_value=1, meta={"name": "row_count"})])
        self._column_results: dict[tuple[str, ...], Any] = {}
        self.gx_runs = 0

    merge = staticmethod(merge_outcomes)

    def _run(self, frame: pd.DataFrame, suite):
        (result,) = self._gx.run(frame, suite)
        self.gx_runs += 1
        _raise_on_exception(result)
        return result

    def validate(self, table: pa.Table) -> ValidationResult:
        n = table.num_rows
        names = tuple(table.column_names)
        columns = self._column_results.get(names)
        if columns is None:
            frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in names}, index=pd.RangeIndex(0))
            columns = self._column_results[names] = self._run(frame, self._columns_suite)
        rows = self._run(pd.DataFrame(index=pd.RangeIndex(n, name=ROW_INDEX)), self._rows_suite)
        outcomes = []
        for r, evaluated in ((columns, len(names)), (rows, n)):
            observed = (r.result or {}).get("observed_value")
            outcomes.append(ExpectationOutcome(
                _meta_name(r), r.expectation_config.type, None, bool(r.success), evaluated,
                0 if r.success else 1, [] if r.success else [_jsonable(observed)]))
        return ValidationResult(outcomes, {}, n)


def basic_validator(table_schema: pa.Schema) -> BasicValidator:
    return BasicValidator(table_schema)

"""Validation of Arrow tables against contracts with Great Expectations: every check
kind fails on purpose at known rows, nothing is capped, casts, missing columns, merge."""

import json
import re
import random
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_platform.contracts import ColumnSpec, Contract
from data_platform.validation import (
    ContractValidator,
    ExpectationOutcome,
    ValidationResult,
    basic_validator,
    merge_outcomes,
)

CATEGORIES = ("billing", "outage", "access", "performance", "security", "feature_request", "data_quality",
              "account")


def tickets_contract(**overrides) -> Contract:
    columns = (
        ColumnSpec("record_id", "string", required=True, regex="^rec-"),
        ColumnSpec("user_email", "string", pii="email", unique=True),
        ColumnSpec("category", "string", allowed=CATEGORIES),
        ColumnSpec("priority", "integer", required=True, min=1, max=4),
        ColumnSpec("cost", "float", min=0),
        ColumnSpec("created_at", "timestamp", required=True, min=datetime(2020, 1, 1, tzinfo=UTC)),
    )
    fields = dict(tenant="acme", dataset="tickets", version="1", columns=columns, primary_key=("record_id",))
    fields.update(overrides)
    return Contract(**fields)


def tickets(n: int, **replace) -> pa.Table:
    """n clean rows of the tickets contract; `replace` maps a column to {row: value}
    (or to a whole pa.Array)."""
    cols = {
        "record_id": [f"rec-{i:06d}" for i in range(n)],
        "user_email": [f"user{i}@example.com" for i in range(n)],
        "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(n)],
        "priority": [1 + i % 4 for i in range(n)],
        "cost": [float(i % 100) for i in range(n)],
        "created_at": [datetime(2024, 1, 1, tzinfo=UTC)] * n,
    }
    types = {"record_id": pa.string(), "user_email": pa.string(), "category": pa.string(),
             "priority": pa.int64(), "cost": pa.float64(), "created_at": pa.timestamp("us", tz="UTC")}
    arrays = {}
    for name, values in cols.items():
        change = replace.get(name)
        if isinstance(change, (pa.Array, pa.ChunkedArray)):
            arrays[name] = change
            continue
        for row, value in (change or {}).items():
            values[row] = value
        arrays[name] = pa.array(values, types[name])
    return pa.table(arrays)


@pytest.fixture(scope="module")
def validator() -> ContractValidator:
    return ContractValidator(tickets_contract())


def outcome(result: ValidationResult, name: str) -> ExpectationOutcome:
    found = result.outcome(name)
    assert found is not None, f"no outcome {name}: {[o.name for o in result.outcomes]}"
    return found


def failed(result: ValidationResult) -> set[str]:
    return {o.name for o in result.outcomes if not o.success}


# -- each check kind, failing on purpose ---------------------------------------------------


def test_clean_table_passes_every_check(validator):
    result = validator.validate(tickets(50))
    assert result.failing_rows == {}
    assert result.failing_share == 0.0
    assert failed(result) == set()
    names = [o.name for o in result.outcomes]
    assert names == [
        "column_exists:record_id", "column_exists:priority", "column_exists:created_at",
        "type:record_id", "type:user_email", "type:category", "type:priority", "type:cost", "type:created_at",
        "not_null:record_id", "regex:record_id", "unique:user_email", "in_set:category",
        "not_null:priority", "between:priority", "between:cost", "not_null:created_at", "between:created_at",
        "primary_key"]
    assert all(o.evaluated == 50 and o.unexpected_count == 0 for o in result.outcomes)
    gx_types = {o.name: o.expectation_type for o in result.outcomes}
    assert gx_types["regex:record_id"] == "expect_column_values_to_match_regex"
    assert gx_types["primary_key"] == "expect_column_values_to_be_unique"
    assert gx_types["column_exists:priority"] == "expect_column_to_exist"


def test_gx_is_imported_without_what_only_unused_expectations_need():
    """GX imports scipy.stats and altair for expectations no contract builds (KL
    divergence, KS tests, their charts): in a fresh process they stay unloaded through a
    whole validation, and whoever uses them (GX's own modules included) gets the real
    modules on first use."""
    code = textwrap.dedent("""
        import math, sys
        sys.path.insert(0, "data_platform_tests")
        from test_validation import tickets, tickets_contract
        from data_platform.validation import ContractValidator

        heavy = ("scipy.stats._stats_py", "altair.vegalite")
        result = ContractValidator(tickets_contract()).validate(tickets(20, priority={3: 9}))
        assert result.failing_rows == {3: "between:priority"}, result.failing_rows
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]

        from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
        assert math.isclose(kl.stats.entropy([0.5, 0.5]), math.log(2))  # GX's reference
        import scipy.stats
        assert type(scipy.stats) is type(math) and "scipy.stats._stats_py" in sys.modules
        assert sys.modules["scipy.stats"] is scipy.stats and scipy.stats.norm.cdf(0) == 0.5
        import altair  # still the stand-in: its first attribute brings the real one
        assert altair.Chart.__name__ == "Chart" and type(sys.modules["altair"]) is type(math)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_not_null(validator):
    result = validator.validate(tickets(10, record_id={2: None, 7: None}, priority={5: None}))
    assert result.failing_rows == {2: "not_null:record_id", 7: "not_null:record_id", 5: "not_null:priority"}
    assert outcome(result, "not_null:record_id").unexpected_count == 2
    assert outcome(result, "not_null:priority").unexpected_count == 1
    assert failed(result) == {"not_null:record_id", "not_null:priority"}


def test_between(validator):
    result = validator.validate(tickets(10, priority={0: 0, 3: 9}, cost={4: -0.5}))
    assert result.failing_rows == {0: "between:priority", 3: "between:priority", 4: "between:cost"}
    o = outcome(result, "between:priority")
    assert (o.success, o.unexpected_count, o.sample_unexpected) == (False, 2, [0, 9])
    assert outcome(result, "between:cost").sample_unexpected == [-0.5]


def test_in_set(validator):
    result = validator.validate(tickets(10, category={1: "Billing", 8: "other"}))
    assert result.failing_rows == {1: "in_set:category", 8: "in_set:category"}
    assert outcome(result, "in_set:category").sample_unexpected == ["Billing", "other"]


def test_regex_is_a_search(validator):
    # "^rec-" anchors itself; "xrec-1" contains "rec-" but does not start with it
    result = validator.validate(tickets(10, record_id={3: "REC-3", 6: "xrec-6"}))
    assert result.failing_rows == {3: "regex:record_id", 6: "regex:record_id"}
    assert outcome(result, "regex:record_id").sample_unexpected == ["REC-3", "xrec-6"]


def test_unique_flags_every_occurrence(validator):
    result = validator.validate(tickets(10, user_email={2: "same@x.org", 5: "same@x.org", 9: "same@x.org"}))
    assert result.failing_rows == {2: "unique:user_email", 5: "unique:user_email", 9: "unique:user_email"}
    assert outcome(result, "unique:user_email").unexpected_count == 3


def test_primary_key_one_column(validator):
    result = validator.validate(tickets(10, record_id={4: "rec-000001"}))
    assert result.failing_rows == {1: "primary_key", 4: "primary_key"}
    assert outcome(result, "primary_key").sample_unexpected == ["rec-000001", "rec-000001"]


def test_compound_primary_key():
    contract = tickets_contract(primary_key=("record_id", "category"))
    v = ContractValidator(contract)
    # rows 0 and 8 share record_id and category; rows 1 and 2 share only record_id
    table = tickets(10, record_id={8: "rec-000000", 2: "rec-000001"}, category={8: CATEGORIES[0]})
    result = v.validate(table)
    assert result.failing_rows == {0: "primary_key", 8: "primary_key"}
    o = outcome(result, "primary_key")
    assert o.expectation_type == "expect_compound_columns_to_be_unique"
    assert o.sample_unexpected == [["rec-000000", "billing"], ["rec-000000", "billing"]]
    assert "not_null:category" in {x.name for x in result.outcomes}  # key columns may not be null


def test_reason_is_the_first_failing_check(validator):
    # row 3: regex and primary key; row 5: null priority and negative cost
    table = tickets(10, record_id={3: "bad-1", 6: "bad-1"}, priority={5: None}, cost={5: -1.0})
    result = validator.validate(table)
    assert result.failing_rows == {3: "regex:record_id", 6: "regex:record_id", 5: "not_null:priority"}
    assert outcome(result, "primary_key").unexpected_count == 2
    assert outcome(result, "between:cost").unexpected_count == 1
    assert result.failing_share == pytest.approx(0.3)


# -- no cap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip_passing", [True, False])
def test_thousands_of_failures_are_all_reported(skip_passing):
    n = 6000
    rng = random.Random(7)
    bad_priority = set(rng.sample(range(n), 2500))
    bad_category = set(rng.sample(sorted(set(range(n)) - bad_priority), 1200))
    table = tickets(n, priority={r: 7 for r in bad_priority}, category={r: "nope" for r in bad_category})
    result = ContractValidator(tickets_contract(), skip_passing=skip_passing).validate(table)
    expected = {r: "between:priority" for r in bad_priority} | {r: "in_set:category" for r in bad_category}
    assert result.failing_rows == expected
    assert outcome(result, "between:priority").unexpected_count == 2500
    assert outcome(result, "in_set:category").unexpected_count == 1200
    assert len(outcome(result, "between:priority").sample_unexpected) == 20


# -- types -----------------------------------------------------------------------------------


def test_cast_failures_are_type_failures(validator):
    created = pa.array(["2024-05-01T10:00:00Z", "not a date", "2024-05-01 12:30:00", None, "2024-02-30",
                        "2024-05-01T10:00:00+02:00", "31/12/2024", "2019-01-01T00:00:00Z"])
    table = tickets(8, created_at=created)
    result = validator.validate(table)
    assert result.failing_rows == {1: "type:created_at", 4: "type:created_at", 6: "type:created_at",
                                   3: "not_null:created_at", 7: "between:created_at"}
    o = outcome(result, "type:created_at")
    assert (o.success, o.expectation_type, o.unexpected_count, o.evaluated) == (False, "arrow_cast", 3, 8)
    assert o.sample_unexpected == ["not a date", "2024-02-30", "31/12/2024"]
    # rows that do not cast are left out of the GX checks
    assert outcome(result, "not_null:created_at").evaluated == 5


def test_cast_many_rows_with_scattered_failures(validator):
    n = 5000
    values = [f"2024-03-{1 + i % 28:02d}T{i % 24:02d}:00:00Z" for i in range(n)]
    bad = {17: "2024-13-01T00:00:00Z", 999: "", 1000: "2023-02-29", 4321: "tomorrow", 4999: "2024-06-31"}
    naive = {5: "2024-03-05 06:07:08", 2000: "2024-03-05"}
    for row, v in {**bad, **naive}.items():
        values[row] = v
    result = validator.validate(tickets(n, created_at=pa.array(values)))
    assert result.failing_rows == {r: "type:created_at" for r in bad}
    assert outcome(result, "type:created_at").sample_unexpected == [bad[r] for r in sorted(bad)]


def test_repeated_suspect_values_are_each_decided(validator):
    # Values of a shape that may not cast are tried once per distinct value: every row
    # holding a bad one fails, and one that casts (19 digits: not of the integer shape
    # that surely casts) passes wherever it repeats.
    n = 600
    priority = [str(1 + i % 4) for i in range(n)]
    cycle = ["x", "0000000000000000002", "", "two"]
    suspects = list(range(3, n, 7))
    for k, row in enumerate(suspects):
        priority[row] = cycle[k % len(cycle)]
    result = validator.validate(tickets(n, priority=pa.array(priority)))
    expected = {row: "type:priority" for k, row in enumerate(suspects) if k % len(cycle) != 1}
    assert result.failing_rows == expected and len(expected) == 64


def test_suspects_that_are_nested_values_are_cast_one_by_one():
    # Lists and structs cannot key the per-value verdicts: each is cast on its own.
    from data_platform.validation import _bad_positions

    def cast(values, mode="either"):
        if values.to_pylist() != [[3]]:
            raise pa.ArrowInvalid("does not fit")
        return values

    assert _bad_positions(pa.array([[1, 2], [3], [1, 2], None]), cast, linear=True) == [0, 2, 3]
    assert _bad_positions(pa.array([{"a": 1}, {"a": 1}]), cast, linear=True) == [0, 1]


# The shapes the compiled scan (`_iso_shapes`, `_native/shape_kernel.c`) accepts, as
# RE2 patterns: its specification. The calendar (no 30 February) is checked beside them.
_ISO_DATE = r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
_ISO_SHAPES = {
    "timestamp": rf"^{_ISO_DATE}(?:[T ](?:[01]\d|2[0-3])(?::[0-5]\d(?::[0-5]\d(?:\.\d{{1,6}})?)?)?"
                 r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$",
    "date": rf"^{_ISO_DATE}$",
}


def _on_calendar(value: str) -> bool:
    """The day is in its month. Year 0000 counts, a leap year, as in Arrow's cast (the
    proleptic Gregorian calendar), which `datetime.date` refuses."""
    import calendar

    year, month, day = int(value[:4]), int(value[5:7]), int(value[8:10])
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def _iso_like_values(n: int, seed: int) -> list[str | None]:
    """Dates and timestamps of every shape, near misses of each (a character replaced,
    dropped or added anywhere), days past their month's end, non-ASCII digits."""
    rng = random.Random(seed)
    alphabet = "0123456789-:T Z+.x\u0663\u00e9"
    values: list[str | None] = []
    while len(values) < n:
        y = rng.choice([1900, 2000, 2023, 2024, 2100, 1999, 0, 9999])
        v = f"{y:04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}"
        if rng.random() < 0.8:
            v += rng.choice("T ") + f"{rng.randint(0, 24):02d}"
            for part in (f":{rng.randint(0, 60):02d}", f":{rng.randint(0, 60):02d}",
                         "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 8)))):
                if rng.random() < 0.7:
                    v += part
                else:
                    break
            v += rng.choice(["", "", "Z", "+02", "-05:30", "+0530", "+05:", "+5", "Z0", "-1"])
        for _ in range(rng.choice([0, 0, 0, 1, 2])):  # near misses
            i = rng.randrange(len(v) + 1)
            edit = rng.random()
            if edit < 0.4 and i < len(v):
                v = v[:i] + rng.choice(alphabet) + v[i + 1:]
            elif edit < 0.7 and i < len(v):
                v = v[:i] + v[i + 1:]
            else:
                v = v[:i] + rng.choice(alphabet) + v[i:]
        values.append(v if rng.random() > 0.02 else None)
    return values


@pytest.mark.parametrize("kind", ["timestamp", "date"])
def test_iso_shapes_match_their_patterns_and_the_calendar(kind):
    """The compiled scan says "surely castable" exactly where the pattern matches and
    the day is in its month (leap years by the Gregorian rules), for string, large and
    sliced arrays; nulls count as sure."""
    import re

    from data_platform.validation import _iso_shapes

    values = _iso_like_values(20_000, seed=11 if kind == "timestamp" else 12)
    values += ["2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2024-04-31", "2024-01-01T23:59:59.123456Z",
               "2024-01-01T23:59:59.1234567Z", "2024-01-01Z", "2024-01-01T10+05", "2024-01-01T10:30:45.5-05:30",
               "", "2024-01-01\n", "٢٠٢٤-01-01", "0000-02-29T00:00:00Z", "0000-02-30"]
    pattern = re.compile(_ISO_SHAPES[kind], re.ASCII)
    expected = [v is None or (pattern.fullmatch(v) is not None and _on_calendar(v)) for v in values]
    assert 0.05 < sum(expected) / len(expected) < 0.8  # both answers well represented
    for arr in (pa.array(values), pa.array(values, pa.large_string())):
        for start in (0, 17):
            assert _iso_shapes(arr.slice(start), timestamp=kind == "timestamp").tolist() == expected[start:]
    # RE2, the engine the other shapes use, agrees with Python's on the pattern
    matched = pc.match_substring_regex(pa.array(values), _ISO_SHAPES[kind]).to_pylist()
    assert [m is None or m for m in matched] == [v is None or pattern.fullmatch(v) is not None for v in values]


def test_iso_shape_kernel_refuses_buffers_it_would_read_past():
    from data_platform._native import shape_kernel

    offsets = np.array([0, 10, 30], dtype=np.int32).tobytes()  # the second value leaves the data
    with pytest.raises(ValueError):
        shape_kernel.surely_castable(offsets, b"2024-01-01", 0, 2, False, True, bytearray(2))
    with pytest.raises(ValueError):  # out too short
        shape_kernel.surely_castable(offsets, b"2024-01-01", 0, 1, False, True, bytearray(0))
    out = bytearray(1)
    shape_kernel.surely_castable(offsets, b"2024-01-01", 0, 1, False, False, out)
    assert out == b"\x01"


def test_integer_column_given_as_floats_or_strings(validator):
    as_float = validator.validate(tickets(4, priority=pa.array([1.0, 2.5, None, 4.0])))
    assert as_float.failing_rows == {1: "type:priority", 2: "not_null:priority"}
    as_text = validator.validate(tickets(4, priority=pa.array(["1", "2", "x", "9"])))
    assert as_text.failing_rows == {2: "type:priority", 3: "between:priority"}
    assert outcome(as_text, "between:priority").sample_unexpected == [9]


def test_column_of_an_uncastable_type():
    contract = tickets_contract(columns=(ColumnSpec("record_id", "string", required=True),
                                         ColumnSpec("when", "date")))
    table = pa.table({"record_id": ["rec-1", "rec-2", "rec-3"],
                      "when": pa.array([[1], None, [2]], pa.list_(pa.int64()))})
    result = ContractValidator(contract).validate(table)
    assert result.failing_rows == {0: "type:when", 2: "type:when"}


# -- columns ---------------------------------------------------------------------------------


def test_missing_required_column_fails_every_row(validator):
    table = tickets(6).drop_columns(["created_at", "cost"])  # created_at required, cost not
    result = validator.validate(table)
    assert result.failing_rows == {r: "column_exists:created_at" for r in range(6)}
    o = outcome(result, "column_exists:created_at")
    assert (o.success, o.unexpected_count, o.evaluated) == (False, 6, 6)
    assert failed(result) == {"column_exists:created_at"}
    assert result.outcome("between:cost") is None and result.outcome("type:created_at") is None


def test_extra_columns_rejected_fail_the_check_not_rows():
    v = ContractValidator(tickets_contract(extra_columns="reject"))
    table = tickets(5).append_column("surprise", pa.array([1] * 5))
    result = v.validate(table)
    o = outcome(result, "no_extra_columns")
    assert (o.success, o.unexpected_count, o.sample_unexpected) == (False, 1, ["surprise"])
    assert result.failing_rows == {}
    assert outcome(v.validate(tickets(5)), "no_extra_columns").success
    # extra columns allowed: no such check at all
    assert ContractValidator(tickets_contract()).validate(table).outcome("no_extra_columns") is None


# -- pruning, merge, reuse, output ---------------------------------------------------------------


def messy_table(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    pick = lambda *options: rng.choice(options)  # noqa: E731
    return pa.table({
        "record_id": [pick(f"rec-{rng.randrange(n)}", f"rec-{i}", None, "x") for i in range(n)],
        "user_email": [pick(f"u{rng.randrange(n)}@x", None) for _ in range(n)],
        "category": [pick(*CATEGORIES, None, "zzz") for _ in range(n)],
        "priority": [pick(1, 2, 3, 4, 0, None) for _ in range(n)],
        "cost": [pick(1.5, -2.0, None, float("nan"), float("inf")) for _ in range(n)],
        "created_at": [pick("2024-01-01T00:00:00Z", "2019-05-05T00:00:00Z", None, "bad") for _ in range(n)],
    })


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_skipping_checks_that_cannot_fail_changes_nothing(seed):
    table = messy_table(300, seed)
    # ...and on tables where some checks cannot fail (slices that happen to be clean)
    clean_ish = tickets(40, record_id={3: None}, cost={5: float("nan")})
    for t in (table, table.slice(0, 7), clean_ish):
        fast = ContractValidator(tickets_contract(), skip_passing=True)
        full = ContractValidator(tickets_contract(), skip_passing=False)
        a, b = fast.validate(t), full.validate(t)
        assert a.outcomes == b.outcomes
        assert a.failing_rows == b.failing_rows
    assert a.failing_rows == {3: "not_null:record_id"}
    assert outcome(a, "between:cost").success and not failed(a) - {"not_null:record_id"}
    # a NaN is not null for Arrow, but GX (pandas) counts it as missing: not skipped
    required_cost = tickets_contract(columns=(ColumnSpec("cost", "float", required=True, min=0),), primary_key=())
    nan_cost = pa.table({"cost": [1.0, float("nan"), 2.0]})
    for skip in (True, False):
        assert ContractValidator(required_cost, skip_passing=skip).validate(nan_cost).failing_rows == {
            1: "not_null:cost"}


def test_checks_that_cannot_fail_are_not_sent_to_gx():
    v = ContractValidator(tickets_contract())
    v.validate(tickets(20))
    v.validate(tickets(20, priority={3: 7}))
    # clean: no null, no value out of bounds or not allowed, every id matching the regex
    # for RE2, no repeated key; only the timestamp bound (no Arrow pre-check) runs in GX
    assert [names for names, _ in v._suites] == [("between:created_at",), ("between:priority", "between:created_at")]
    assert v.gx_runs == 3  # schema checks once, then one run per table
    # A repeated key sends the uniqueness checks, with only the rows that repeat it.
    dup = v.validate(tickets(20, record_id={5: "rec-000001"}, user_email={7: "user2@example.com"}))
    assert list(v._suites)[-1][0] == ("unique:user_email", "between:created_at", "primary_key")
    assert dup.failing_rows == {1: "primary_key", 5: "primary_key", 2: "unique:user_email", 7: "unique:user_email"}


@pytest.mark.parametrize("pattern, pre_checked", [
    ("^rec-[0-9a-f]+$", True), ("(ab|cd)+x?", True),
    (r"^\d+$", False),  # \d is Unicode-aware in Python, ASCII in RE2
    ("^(?=a)a", False),  # lookahead: not RE2
    ("[[:alpha:]]", False), ("a{,3}", False)])
def test_regex_pre_check_only_where_re2_agrees_with_python(pattern, pre_checked):
    from data_platform.validation import _regex_candidates

    check = _regex_candidates(pattern)
    assert (check is not None) == pre_checked
    if check is not None:
        values = pa.chunked_array([["rec-1a", "rec-ZZ", None, "abx", "cdcd", "x", "rec-"]])
        expected = [v is not None and re.search(pattern, v) is None for v in values.to_pylist()]
        assert check(values).tolist() == expected


def test_merge_sums_counts_and_keeps_twenty_samples(validator):
    first = validator.validate(tickets(30, priority={r: 9 for r in range(15)}))
    second = validator.validate(tickets(30, priority={r: 0 for r in range(10)}, category={2: "zzz"}))
    third = validator.validate(tickets(30))
    merged = {o.name: o for o in merge_outcomes([first, second, third])}
    between = merged["between:priority"]
    assert (between.success, between.evaluated, between.unexpected_count) == (False, 90, 25)
    assert between.sample_unexpected == [9] * 15 + [0] * 5
    assert (merged["in_set:category"].success, merged["in_set:category"].unexpected_count) == (False, 1)
    assert merged["regex:record_id"].success and merged["regex:record_id"].evaluated == 90
    assert list(merged) == [o.name for o in first.outcomes]
    assert ContractValidator.merge([first, third]) == merge_outcomes([first, third])
    json.dumps([o.as_dict() for o in merged.values()])  # JSON-serialisable


def test_samples_are_json_serialisable():
    contract = tickets_contract(columns=(ColumnSpec("created_at", "timestamp", max=datetime(2021, 1, 1, tzinfo=UTC)),
                                         ColumnSpec("day", "date", min=date(2020, 1, 1)),
                                         ColumnSpec("cost", "float", max=10.0)), primary_key=())
    table = pa.table({"created_at": pa.array([datetime(2022, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
                      "day": pa.array([date(2019, 1, 1)]), "cost": [float("inf")]})
    result = ContractValidator(contract).validate(table)
    samples = {o.name: o.sample_unexpected for o in result.outcomes if not o.success}
    assert samples == {"between:created_at": ["2022-01-01T00:00:00+00:00"], "between:day": ["2019-01-01"],
                       "between:cost": ["inf"]}
    json.dumps(samples, allow_nan=False)


def test_validator_is_reused_and_validators_do_not_mix():
    a = ContractValidator(tickets_contract())
    b = ContractValidator(tickets_contract(columns=(ColumnSpec("record_id", "string", regex="^zz"),),
                                           primary_key=()))
    table = tickets(5)
    for _ in range(2):
        assert a.validate(table).failing_rows == {}
        assert b.validate(table).failing_rows == {r: "regex:record_id" for r in range(5)}
    assert len(a._suites) == 1  # one suite for the same set of checks, built once


def test_empty_table(validator):
    result = validator.validate(tickets(0))
    assert result.failing_rows == {} and result.failing_share == 0.0
    assert all(o.success and o.evaluated == 0 for o in result.outcomes)


def test_gx_prints_nothing(capfd):
    v = ContractValidator(tickets_contract())
    v.validate(tickets(200, priority={1: 9}, record_id={2: None}, created_at=pa.array(["bad"] * 200)))
    basic_validator(tickets(1).schema).validate(tickets(3))
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""  # no progress bars either


# -- datasets without a contract ------------------------------------------------------------------


def test_basic_validator():
    table = tickets(10)
    v = basic_validator(table.schema)
    result = v.validate(table)
    assert [(o.name, o.success, o.evaluated) for o in result.outcomes] == [
        ("column_count", True, 6), ("row_count", True, 10)]
    empty = v.validate(table.slice(0, 0))
    assert [(o.name, o.success) for o in empty.outcomes] == [("column_count", True), ("row_count", False)]
    assert empty.failing_rows == {} and result.failing_rows == {}
    assert v.gx_runs == 3  # the column check ran once for both tables (same names)
    no_columns = v.validate(pa.table({}))
    assert [(o.name, o.success) for o in no_columns.outcomes] == [("column_count", False), ("row_count", False)]


def test_failing_rows_match_a_reference_on_random_data():
    """Row reasons checked against a plain-Python reading of the same contract."""
    table = messy_table(400, seed=11)
    result = ContractValidator(tickets_contract()).validate(table)
    rows = table.to_pylist()
    kept = [r for r in rows if r["created_at"] != "bad"]  # rows that do not cast skip the GX checks
    ids = [r["record_id"] for r in kept]
    emails = [r["user_email"] for r in kept]

    def reason(r):
        ts = r["created_at"]
        if ts == "bad":
            return "type:created_at"
        if r["record_id"] is None:
            return "not_null:record_id"
        if not r["record_id"].startswith("rec-"):
            return "regex:record_id"
        if r["user_email"] is not None and emails.count(r["user_email"]) > 1:
            return "unique:user_email"
        if r["category"] is not None and r["category"] not in CATEGORIES:
            return "in_set:category"
        if r["priority"] is None:
            return "not_null:priority"
        if not 1 <= r["priority"] <= 4:
            return "between:priority"
        c = r["cost"]
        if c is not None and not np.isnan(c) and c < 0:
            return "between:cost"
        if ts is None:
            return "not_null:created_at"
        if ts.startswith("2019"):
            return "between:created_at"
        if ids.count(r["record_id"]) > 1:
            return "primary_key"
        return None

    expected = {i: reason(r) for i, r in enumerate(rows) if reason(r)}
    assert len(expected) > 100
    assert result.failing_rows == expected


def test_tables_decided_together_as_each_alone():
    """The rows that may fail of several tables go to GX in one call; each table gets the
    outcomes and failing rows of its own validation."""
    import dataclasses

    contract = tickets_contract(columns=tuple(dataclasses.replace(c, unique=False)
                                              for c in tickets_contract().columns), primary_key=())
    tables = [messy_table(200, seed=5).slice(0, 60), tickets(30, priority={3: 7}, category={5: "other"}),
              tickets(20), tickets(25, record_id={2: None}, cost={4: -1.0}), messy_table(200, seed=6)]
    together = _decided_together_as_each_alone(contract, tables)
    assert any(r.failing_rows for r in together)


def _decided_together_as_each_alone(contract, tables) -> list:
    """The tables decided in one GX call, checked equal to each table's own validation."""
    alone = ContractValidator(contract)
    batched = ContractValidator(contract)
    expected = [alone.validate(t) for t in tables]
    prepared = [batched.prepare(t)[0] for t in tables]
    assert [p.deferrable for p in prepared] == [bool(p.to_run) for p in prepared]
    runs = batched.gx_runs
    together = batched.decide(prepared)
    assert batched.gx_runs == runs + 1
    for want, got in zip(expected, together):
        assert got.outcomes == want.outcomes
        assert got.failing_rows == want.failing_rows
    return together


@pytest.mark.parametrize("primary_key", [("record_id",), ("record_id", "category")])
def test_uniqueness_in_a_batch_holds_within_each_table(primary_key):
    """Unique and primary-key checks decided for several tables in one GX call fail exactly
    the rows each table's own call fails: a key repeated across two tables is no
    duplicate, one repeated within a table is, missing keys are skipped as GX skips them."""
    contract = tickets_contract(primary_key=primary_key)
    tables = [tickets(30, record_id={4: "rec-000001", 9: "rec-000001", 12: None, 13: None}),
              tickets(30),  # every key of this table repeats one of the first's
              tickets(25, record_id={2: "rec-000003", 7: None}, category={2: None, 3: None}),
              tickets(20, priority={1: 9}),
              tickets(40, record_id={5: "rec-000030", 6: None}, category={5: None, 30: None})]
    together = _decided_together_as_each_alone(contract, tables)
    assert any(reason == "primary_key" for r in together for reason in r.failing_rows.values())
    assert not together[1].failing_rows  # its keys are the first table's: no duplicate within it



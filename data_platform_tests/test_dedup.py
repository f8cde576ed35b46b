"""Exact row deduplication across a tenant's files in a dataset, on both catalogs."""

import threading
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from data_platform.catalog import Catalog, Identity
from data_platform.dedup import RowIndex, first_occurrences, row_hashes


def uploads(catalog: Catalog, n: int, tenant="acme", dataset="tickets"):
    when = datetime(2026, 11, 1, tzinfo=UTC)
    return catalog.register([(Identity(f"landing/{tenant}/{dataset}/{i}.jsonl", "e", 1, when), tenant, dataset)
                             for i in range(n)], actor="test")


def test_hash_values_are_pinned():
    # A DuckDB release that changed hash() would make the persisted index miss
    # duplicates: this must fail first, and the index be rebuilt in a migration.
    table = pa.table({"a": [1, 2, None], "b": ["x", "y", "z"]})
    assert row_hashes(table).tolist() == [-9140053031593240623, 7981209692240527133, -451996073379317041]


def test_hashes_ignore_column_order_but_not_names_or_values():
    t = pa.table({"a": [1, 2], "b": ["x", "y"]})
    assert row_hashes(t).tolist() == row_hashes(t.select(["b", "a"])).tolist()
    assert row_hashes(t).tolist() != row_hashes(t.rename_columns(["c", "b"])).tolist()
    h = row_hashes(pa.table({"a": [1, 1, None, None], "b": ["x", "x", None, ""]}))
    assert h[0] == h[1] and len(set(h.tolist())) == 3  # null is not the empty string


def test_first_occurrences_within_a_table():
    assert first_occurrences(np.array([5, 3, 5, 3, 7], dtype=np.int64)).tolist() == [True, True, False, False, True]


def test_rows_seen_in_an_earlier_file_or_run_are_dropped(catalog):
    a, b = uploads(catalog, 2)
    first = pa.table({"id": [1, 2, 3, 3]})
    assert RowIndex(catalog, "acme", "tickets", a.id).keep_mask(first).tolist() == [True, True, True, False]
    # A new process (another run) for another file of the dataset:
    second = pa.table({"id": [3, 4, 1]})
    assert RowIndex(Catalog(catalog.url), "acme", "tickets", b.id).keep_mask(second).tolist() == [False, True, False]
    # Re-running the first upload (a retry, a new RowIndex) keeps its own rows again.
    assert RowIndex(catalog, "acme", "tickets", a.id).keep_mask(first).tolist() == [True, True, True, False]
    # ... and the second upload, retried after that, still finds 1 and 3 taken.
    assert RowIndex(catalog, "acme", "tickets", b.id).keep_mask(second).tolist() == [False, True, False]


def test_index_is_per_tenant_and_dataset(catalog):
    (a,) = uploads(catalog, 1)
    (b,) = uploads(catalog, 1, dataset="other")
    (c,) = uploads(catalog, 1, tenant="globex")
    rows = pa.table({"id": [1, 2]})
    for upload, tenant, dataset in ((a, "acme", "tickets"), (b, "acme", "other"), (c, "globex", "tickets")):
        assert RowIndex(catalog, tenant, dataset, upload.id).keep_mask(rows).tolist() == [True, True]


def test_release_frees_the_rows_of_an_upload_that_kept_nothing(catalog):
    a, b = uploads(catalog, 2)
    rows = pa.table({"id": [1, 2]})
    index = RowIndex(catalog, "acme", "tickets", a.id)
    index.keep_mask(rows)
    index.release()
    assert RowIndex(catalog, "acme", "tickets", b.id).keep_mask(rows).tolist() == [True, True]


def test_concurrent_runs_keep_each_row_once(postgresql_catalog):
    catalog = postgresql_catalog
    n_runs = 6
    ups = uploads(catalog, n_runs)
    rng = np.random.default_rng(7)
    tables = [pa.table({"id": rng.integers(0, 3000, size=4000)}) for _ in range(n_runs)]
    kept: list[np.ndarray] = [None] * n_runs
    errors = []

    def run(i):
        try:
            index = RowIndex(Catalog(catalog.url), "acme", "tickets", ups[i].id)
            masks = [index.keep_mask(t) for t in (tables[i].slice(0, 2000), tables[i].slice(2000))]
            kept[i] = np.concatenate([tables[i].column("id").to_numpy()[:2000][masks[0]],
                                      tables[i].column("id").to_numpy()[2000:][masks[1]]])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    all_kept = np.concatenate(kept)
    distinct_input = np.unique(np.concatenate([t.column("id").to_numpy() for t in tables]))
    assert len(all_kept) == len(np.unique(all_kept))  # no row content kept twice
    assert sorted(all_kept.tolist()) == sorted(distinct_input.tolist())  # and none lost


def test_a_row_repeated_in_a_later_table_of_the_same_upload_is_dropped(catalog):
    (a,) = uploads(catalog, 1)
    index = RowIndex(catalog, "acme", "tickets", a.id)
    assert index.keep_mask(pa.table({"id": [1, 2]})).tolist() == [True, True]
    assert index.keep_mask(pa.table({"id": [2, 3]})).tolist() == [False, True]

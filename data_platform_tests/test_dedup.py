"""Exact row deduplication across a tenant's files in a dataset, on both catalogs."""

import json
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from data_platform import layout
from data_platform.catalog import Catalog, Identity, IndexChanged
from data_platform import dedup, indexes
from data_platform.dedup import RowIndex, first_occurrences_sorted, kept_order, row_hashes
from data_platform.indexes import RunStore, SortedKeys
from data_platform.ingestion import ingest_pending
from data_platform.intake import scan_landing


def uploads(catalog: Catalog, n: int, tenant="acme", dataset="tickets"):
    """n new uploads of the dataset, claimed by "test"."""
    when = datetime(2026, 11, 1, tzinfo=UTC)
    registered = catalog.register([(Identity(f"landing/{tenant}/{dataset}/{i}.jsonl", "e", 1, when), tenant, dataset)
                                   for i in range(n)], actor="test")
    claimed = catalog.claim(tenant, dataset, "test", lease=timedelta(minutes=5), limit=n)
    assert {u.id for u in claimed} == {u.id for u in registered}
    return sorted(claimed, key=lambda u: u.id)


def test_hash_values_are_pinned():
    # A DuckDB release that changed hash() would make the persisted index miss
    # duplicates: this must fail first, and the index be rebuilt in a migration.
    table = pa.table({"a": [1, 2, None], "b": ["x", "y", "z"]})
    assert row_hashes(table).tolist() == [-9140053031593240623, 7981209692240527133, -451996073379317041]


def _edge_case_table(rng: np.random.Generator, n: int) -> pa.Table:
    """Every type the ingestion hashes itself, with nulls, extremes and odd values."""
    def pick(values, nulls=0.15):
        chosen = [values[i] for i in rng.integers(0, len(values), n)]
        return [None if rng.random() < nulls else v for v in chosen]

    words = ["", "a", "abcdefg", "abcdefgh", "abcdefghi", "twelve bytes", "thirteen byte", "é", "日本語テキスト",
             "x" * 64, "line\nbreak", "tab\tquote\"", "\x00nul", "😀 emoji and more text beyond sixteen"]
    ints = [0, 1, -1, 2**31 - 1, -2**31, 2**63 - 1, -2**63, 1234567890123]
    floats = [0.0, -0.0, 1.5, -2.25, float("nan"), float("inf"), float("-inf"), 1e-310, 3.141592653589793]
    stamps = [datetime(1970, 1, 1, tzinfo=UTC), datetime(2026, 11, 23, 9, 30, 1, 123456, tzinfo=UTC),
              datetime(1900, 2, 28, tzinfo=UTC), datetime(2262, 4, 11, tzinfo=UTC)]
    return pa.table({
        "text": pa.array(pick(words), pa.string()),
        "big_text": pa.array(pick(words), pa.large_string()),
        "blob": pa.array([None if v is None else v.encode() for v in pick(words)], pa.binary()),
        "i64": pa.array(pick(ints), pa.int64()),
        "i32": pa.array(pick([v for v in ints if -2**31 <= v < 2**31]), pa.int32()),
        "i8": pa.array(pick([0, 1, -1, 127, -128]), pa.int8()),
        "u16": pa.array(pick([0, 1, 65535]), pa.uint16()),
        "u64": pa.array(pick([0, 1, 2**64 - 1, 2**63]), pa.uint64()),
        "f64": pa.array(pick(floats), pa.float64()),
        "f32": pa.array(pick(floats), pa.float32()),
        "flag": pa.array(pick([True, False]), pa.bool_()),
        "day": pa.array([None if v is None else v.date() for v in pick(stamps)], pa.date32()),
        "at": pa.array(pick(stamps), pa.timestamp("us", tz="UTC")),
        "naive": pa.array([None if v is None else v.replace(tzinfo=None) for v in pick(stamps)], pa.timestamp("us")),
        "nothing": pa.nulls(n),
        "weird \"name\"\x1f": pa.array(pick(words, nulls=0.5), pa.string()),
    })


def test_hashes_are_duckdbs_on_every_type_hashed_without_it():
    # The row-hash index's runs hold DuckDB's hash(): the ingestion's own computation of
    # it must agree bit for bit, on sliced and multi-chunk columns too.
    rng = np.random.default_rng(7)
    table = _edge_case_table(rng, 3_000)
    chunked = pa.concat_tables([table.slice(0, 1_000), table.slice(1_000, 1_500), table.slice(2_500)])
    for t in (table, chunked, table.slice(17, 1_234), table.select(["text", "nothing"]), table.select(["f32"])):
        names = sorted(t.column_names)
        assert row_hashes(t).tolist() == dedup._duckdb_row_hashes(t, names).tolist()
    # and on the generator's rows as the ingestion parses them
    parsed = pajson.read_json(pa.BufferReader(b"\n".join(
        json.dumps({"id": i, "text": f"Ticket {i} about ü", "score": i / 7, "ok": i % 3 == 0,
                    "email": None if i % 5 else f"u{i}@example.com"}).encode() for i in range(500))))
    assert row_hashes(parsed).tolist() == dedup._duckdb_row_hashes(parsed, sorted(parsed.column_names)).tolist()


def test_types_not_hashed_here_go_to_duckdb(monkeypatch):
    table = pa.table({"tags": pa.array([["a"], ["b", "c"], None]), "n": [1, 2, 3]})
    calls = []
    real = dedup._duckdb_row_hashes
    monkeypatch.setattr(dedup, "_duckdb_row_hashes", lambda t, names: calls.append(names) or real(t, names))
    hashes = row_hashes(table)
    assert calls == [["n", "tags"]] and len(set(hashes.tolist())) == 3


def test_hashes_ignore_column_order_but_not_names_or_values():
    t = pa.table({"a": [1, 2], "b": ["x", "y"]})
    assert row_hashes(t).tolist() == row_hashes(t.select(["b", "a"])).tolist()
    assert row_hashes(t).tolist() != row_hashes(t.rename_columns(["c", "b"])).tolist()
    h = row_hashes(pa.table({"a": [1, 1, None, None], "b": ["x", "x", None, ""]}))
    assert h[0] == h[1] and len(set(h.tolist())) == 3  # null is not the empty string


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    return first_occurrences_sorted(hashes)[0]


def test_first_occurrences_within_a_table():
    assert first_occurrences(np.array([5, 3, 5, 3, 7], dtype=np.int64)).tolist() == [True, True, False, False, True]
    assert first_occurrences(np.zeros(0, dtype=np.int64)).tolist() == []
    assert first_occurrences(np.array([4], dtype=np.int64)).tolist() == [True]
    # many repeats in random order (an unstable sort puts equal hashes in any order)
    rng = np.random.default_rng(3)
    hashes = rng.integers(-40, 40, 20_000).astype(np.int64)
    expected = np.zeros(len(hashes), dtype=bool)
    expected[[hashes.tolist().index(v) for v in set(hashes.tolist())]] = True
    assert (first_occurrences(hashes) == expected).all()


def test_first_occurrences_come_with_the_order_of_their_hashes_and_of_any_subset():
    # The claim reuses the sort that found a table's first occurrences (no second sort).
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 17, 5000):
        hashes = rng.integers(-60, 60, n).astype(np.int64) * (1 << 40)
        mask, order = first_occurrences_sorted(hashes)
        expected = np.zeros(n, dtype=bool)
        expected[np.unique(hashes, return_index=True)[1]] = True
        assert (mask == expected).all()
        distinct = hashes[mask]
        assert (order == np.argsort(distinct)).all()
        keep = rng.random(len(distinct)) < 0.7
        assert (kept_order(order, keep) == np.argsort(distinct[keep])).all()


def row_index(store, catalog, tenant="acme", dataset="tickets") -> RowIndex:
    return RowIndex(RunStore(store, catalog, tenant, dataset, RowIndex.KIND))


def commit(index: RowIndex, catalog: Catalog, upload) -> None:
    """What the ingestion does when the upload becomes fresh: register the run."""
    run = index.stage()
    catalog.mark_fresh(upload, "test", sha256=f"sha-{upload.id}", rows=1, quarantined_rows=0, object_key="k",
                       dataset_id=index.runs.dataset_id, runs=[run] if run else [],
                       seen_runs={RowIndex.KIND: index.seen_run_id})
    index.committed()


def test_rows_seen_in_an_earlier_file_or_run_are_dropped(local_store, catalog):
    a, b = uploads(catalog, 2)
    index = row_index(local_store, catalog)
    index.begin(a.id)
    first = pa.table({"id": [1, 2, 3, 3]})
    assert index.keep_mask(first).tolist() == [True, True, True, False]
    # Until the upload commits, its rows are its own: a retry keeps them again.
    index.begin(a.id)
    assert index.keep_mask(first).tolist() == [True, True, True, False]
    commit(index, catalog, a)
    # A new process (another run) for another file of the dataset loads the runs:
    other = row_index(local_store, Catalog(catalog.url))
    other.begin(b.id)
    assert other.keep_mask(pa.table({"id": [3, 4, 1]})).tolist() == [False, True, False]
    # The same process, next upload: the committed rows stay known.
    index.begin(b.id)
    assert index.keep_mask(pa.table({"id": [3, 4, 1]})).tolist() == [False, True, False]
    assert [r.upload_id for r in catalog.index_runs(index.runs.dataset_id, "rows")] == [a.id]


def column_encodings(store, key: str) -> dict[str, set[str]]:
    meta = pq.ParquetFile(pa.BufferReader(store.get_bytes(key))).metadata
    out: dict[str, set[str]] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            assert chunk.compression == "UNCOMPRESSED", chunk
            out.setdefault(chunk.path_in_schema, set()).update(chunk.encodings)
    return out


def test_runs_are_uncompressed_with_sorted_hashes_as_deltas(local_store, catalog):
    """Hashes neither repeat nor compress: a run's pages are uncompressed, without a
    dictionary attempt (~10x the write, all of it at the end of an upload). Sorted keys,
    row numbers and token counts are stored as deltas (~2/3 of the bytes); random keys
    (LSH bands) plain. Every run reads back as written."""
    (a,) = uploads(catalog, 1)
    index = row_index(local_store, catalog)
    index.begin(a.id)
    index.keep_mask(pa.table({"id": list(range(5000))}))
    run = index.stage()
    assert pq.read_table(pa.BufferReader(local_store.get_bytes(run.object_key))).num_rows == 5000
    assert column_encodings(local_store, run.object_key)["row_hash"] >= {"DELTA_BINARY_PACKED"}
    rng = np.random.default_rng(3)
    keys = np.sort(rng.integers(-2**63, 2**63 - 1, 200_000, dtype=np.int64))
    subjects = RunStore(local_store, catalog, "acme", "tickets", indexes.SUBJECTS)
    staged = subjects.write(a.id, pa.table({"subject": keys}))
    assert "DELTA_BINARY_PACKED" in column_encodings(local_store, staged.object_key)["subject"]  # RLE: its levels
    plain = pa.BufferOutputStream()
    pq.write_table(pa.table({"subject": keys}), plain, compression="none", use_dictionary=False)
    assert local_store.head(staged.object_key).size < 0.8 * plain.getvalue().size  # ~48 of 64 bits at 200k keys
    assert pq.read_table(pa.BufferReader(local_store.get_bytes(staged.object_key)))["subject"].to_numpy().tolist() \
        == keys.tolist()
    near = pa.table({"row": pa.array(np.arange(0, 3000, 3), pa.uint32()),
                     "tokens": pa.array(rng.integers(1, 90, 1000), pa.uint16()),
                     "band_00": pa.array(rng.integers(0, 2**32 - 1, 1000), pa.uint32())})
    staged = RunStore(local_store, catalog, "acme", "tickets", indexes.NEAR_DUP).write(a.id, near)
    encodings = column_encodings(local_store, staged.object_key)
    assert "DELTA_BINARY_PACKED" in encodings["row"] and "DELTA_BINARY_PACKED" in encodings["tokens"]
    assert "DELTA_BINARY_PACKED" not in encodings["band_00"] and not any("DICTIONARY" in e for es in encodings.values() for e in es)
    assert pq.read_table(pa.BufferReader(local_store.get_bytes(staged.object_key))).equals(near)


def test_index_is_per_tenant_and_dataset(local_store, catalog):
    (a,) = uploads(catalog, 1)
    index = row_index(local_store, catalog)
    index.begin(a.id)
    rows = pa.table({"id": [1, 2]})
    index.keep_mask(rows)
    commit(index, catalog, a)
    for tenant, dataset in (("acme", "other"), ("globex", "tickets")):
        (u,) = uploads(catalog, 1, tenant=tenant, dataset=dataset)
        other = row_index(local_store, catalog, tenant, dataset)
        other.begin(u.id)
        assert other.keep_mask(rows).tolist() == [True, True]


def test_an_upload_that_never_commits_leaves_no_trace(local_store, catalog):
    a, b = uploads(catalog, 2)
    rows = pa.table({"id": [1, 2]})
    index = row_index(local_store, catalog)
    index.begin(a.id)
    index.keep_mask(rows)
    index.stage()  # written, then the process dies before the commit: not registered
    fresh = row_index(local_store, catalog)
    fresh.begin(b.id)
    assert fresh.keep_mask(rows).tolist() == [True, True]


def test_a_commit_after_a_concurrent_one_sees_its_rows(local_store, catalog):
    a, b = uploads(catalog, 2)
    one, two = row_index(local_store, catalog), row_index(local_store, Catalog(catalog.url))
    one.begin(a.id)
    two.begin(b.id)
    assert one.keep_mask(pa.table({"id": [1, 2]})).all()
    assert two.keep_mask(pa.table({"id": [2, 3]})).all()  # both loaded the index before either committed
    commit(one, catalog, a)
    with pytest.raises(IndexChanged) as changed:
        commit(two, catalog, b)
    assert two.conflicts(changed.value.runs) == 1  # row 2: the second upload must be redone
    assert catalog.get(b.id).state == "landing"  # the refused commit changed nothing
    two.begin(b.id)
    assert two.keep_mask(pa.table({"id": [2, 3]})).tolist() == [False, True]
    commit(two, catalog, b)


def test_many_rows_already_indexed_stay_fast_to_check(local_store, catalog):
    # 2M rows in 20 runs: loading and checking must not be per-row work.
    ups = uploads(catalog, 21)
    rng = np.random.default_rng(3)
    index = row_index(local_store, catalog)
    for upload in ups[:20]:
        index.begin(upload.id)
        index.claim(np.unique(rng.integers(-2**63, 2**63 - 1, size=100_000, dtype=np.int64)))
        commit(index, catalog, upload)
    fresh = row_index(local_store, catalog)
    assert len(fresh.known) == len(index.known) >= 1_999_000
    probe = np.concatenate([fresh.known.sorted()[:1000], rng.integers(-2**63, 2**63 - 1, 1000, dtype=np.int64)])
    fresh.begin(ups[20].id)
    keep = fresh.claim(probe)
    assert not keep[:1000].any() and keep[1000:].sum() >= 999


def test_sorted_keys_membership_across_merges():
    keys = SortedKeys()
    rng = np.random.default_rng(5)
    batches = [rng.integers(-1000, 1000, 50) for _ in range(12)]  # more batches than parts: merged
    for batch in batches:
        keys.add(np.unique(batch))
    everything = np.unique(np.concatenate(batches))
    probe = np.arange(-1100, 1100)
    assert keys.contains(probe).tolist() == np.isin(probe, everything).tolist()
    shuffled = rng.permutation(np.concatenate([probe, probe[::7]]))  # looked up sorted, answered in order
    assert keys.contains(shuffled).tolist() == np.isin(shuffled, everything).tolist()
    assert keys.contains(np.array([], dtype=np.int64)).tolist() == []
    assert SortedKeys().contains(np.array([1, 2])).tolist() == [False, False]


def test_sorted_lookup_kernel_matches_isin():
    from data_platform._native import rowhash_kernel

    rng = np.random.default_rng(9)
    edges = np.array([-2**63, -2**63 + 1, -1, 0, 1, 2**63 - 2, 2**63 - 1], dtype=np.int64)
    for n, m in ((0, 10), (10, 0), (1, 5), (300_000, 20_000), (5_000, 200_000)):
        keys = np.sort(np.concatenate([rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64), edges[: n % 8]]))
        queries = np.sort(np.concatenate([rng.integers(-2**63, 2**63 - 1, m, dtype=np.int64),
                                          rng.choice(keys, min(m, len(keys))) if len(keys) else edges[:0], edges]))
        found = np.zeros(len(queries), dtype=np.uint8)
        rowhash_kernel.found_in(keys, queries, found)
        assert (found.view(bool) == np.isin(queries, keys)).all(), (n, m)
    with pytest.raises(ValueError):
        rowhash_kernel.found_in(np.zeros(3, np.int64), np.zeros(4, np.int64), np.zeros(2, np.uint8))


def test_concurrent_ingestions_of_one_dataset_keep_each_row_once(s3_store, postgresql_catalog):
    catalog = postgresql_catalog
    rng = np.random.default_rng(11)
    written = []
    for i in range(6):
        ids = rng.integers(0, 3000, 2000)
        written.append(ids)
        body = "\n".join(json.dumps({"id": int(x), "v": f"value-{x}"}) for x in ids) + "\n"
        s3_store.put_bytes(f"landing/acme/tickets/part-{i}.jsonl", body.encode())
    assert scan_landing(s3_store, catalog).registered == 6
    results, errors = [], []

    def run(n: int) -> None:
        try:  # each thread its own catalog connection pool, one upload per claim
            results.append(ingest_pending(s3_store, Catalog(catalog.url), "acme", "tickets", claimer=f"run-{n}",
                                          batch=1))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and all(not r.failures for r in results), [r.failures for r in results]
    states = [u.state for u in catalog.list_uploads(tenant="acme")]
    assert len(states) == 6 and set(states) <= {"fresh", "duplicate"}
    kept = []
    for upload in catalog.list_uploads(tenant="acme"):
        if upload.state == "fresh":
            data = pq.read_table(pa.BufferReader(s3_store.get_bytes(upload.object_key)))
            kept.append(data.column("id").to_numpy())
    kept = np.concatenate(kept)
    assert len(kept) == len(np.unique(kept))  # no row kept twice
    assert sorted(kept.tolist()) == np.unique(np.concatenate(written)).tolist()  # and none lost
    # Every fresh upload registered its run; the runs together hold exactly the kept rows.
    dataset_id = catalog.dataset_id("acme", "tickets")
    runs = catalog.index_runs(dataset_id, "rows")
    assert sum(r.entries for r in runs) == len(kept)


def test_near_duplicate_run_stored_is_the_windows_newest_rows(s3_store, catalog):
    """The run stored for an upload is its newest rows, as many as the index's window
    holds (also when tables come out of row order); a process loading it finds what the
    one that built it finds; nothing is sent for an upload given up."""
    from data_platform.indexes import NEAR_DUP, NearDupRuns
    from data_platform.neardup import NearDupIndex

    texts = [f"ticket {i} about vm-{i} failing with E{i} since monday" for i in range(40)]
    runs = NearDupRuns(RunStore(s3_store, catalog, "acme", "tickets", NEAR_DUP), NearDupIndex(max_rows=25))
    for upload_id, starts in ((1, (0, 10, 20, 30)), (2, (30, 0, 10, 20))):
        runs.begin(upload_id)
        for start in starts:
            runs.index.detect(pa.array(texts[start:start + 10]), upload_id, start)
        expected = runs.index.run_for(upload_id)
        staged = runs.stage(upload_id)
        assert staged.entries == 25
        stored = pq.read_table(pa.BufferReader(s3_store.get_bytes(staged.object_key)))
        assert stored.equals(expected, check_metadata=True)
        assert stored.column("row").to_pylist() == list(range(15, 40))
        loaded = NearDupIndex(max_rows=25)
        loaded.load_run(upload_id, stored)
        probe = pa.array([texts[0] + " today", texts[20] + " today"])  # left the window / in it
        for index in (runs.index, loaded):
            assert index.detect(probe, 9, 0).is_near_dup.tolist() == [False, True]
            index.forget(9)
        runs.forget(upload_id)  # not kept after all: the next upload's texts match nothing
    runs.begin(3)
    runs.index.detect(pa.array([t + " again and again" for t in texts[:10]]), 3, 0)
    runs.forget(3)
    assert not s3_store._client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads")
    assert s3_store.head(layout.index_run_key(NEAR_DUP, "acme", "tickets", 3)) is None


def test_a_run_deleted_with_its_upload_after_listing_is_skipped_not_fatal(store, catalog):
    """Cleanup may delete an upload (its index runs unregistered, then their objects gone)
    between an ingestion listing the runs and reading them: that run holds nothing to
    check against any more. A registered run whose object is missing is still an error."""
    from data_platform.catalog.schema import index_runs

    a, b = uploads(catalog, 2)
    writer = row_index(store, catalog)
    for upload, ids in ((a, [1, 2]), (b, [3, 4])):
        writer.begin(upload.id)
        writer.keep_mask(pa.table({"id": ids}))
        commit(writer, catalog, upload)
    reader = RunStore(store, Catalog(catalog.url), "acme", "tickets", RowIndex.KIND)  # another process
    listed = reader.registered()
    assert [r.upload_id for r in listed] == [a.id, b.id]
    gone = listed[0]
    with catalog.engine.begin() as conn:  # what cleanup's delete transaction does, then the bytes
        conn.execute(index_runs.delete().where(index_runs.c.id == gone.id))
    store.delete(gone.object_key)
    loaded = reader.load_newer(listed)
    assert [(run.upload_id, table.num_rows)
            for run, table in loaded] == [(b.id, 2)]

    store.delete(listed[1].object_key)  # still registered: really missing
    with pytest.raises(FileNotFoundError):
        row_index(store, Catalog(catalog.url))


def test_in_file_repeats_are_validated_once_and_the_output_is_that_of_the_file_without_them(local_store, tmp_path):
    # A table's repeated rows go before validation. The columns validation only names
    # (a long text, a personal-data column, an extra column) are copied once, when the
    # rows kept are known: rows, columns, types and rejects must be those of the same
    # table without its repeats, whichever path a row takes (passes, fails at once,
    # waits for GX, repeats a failing row).
    from data_platform.contracts import ColumnSpec, Contract
    from data_platform.privacy import Pseudonymizer
    from data_platform.refinement import UploadRefiner

    contract = Contract(tenant="acme", dataset="tickets", version="1", primary_key=("record_id",), columns=(
        ColumnSpec("record_id", "string", required=True, regex="^rec-"),
        ColumnSpec("user_email", "string", pii="email"),
        ColumnSpec("text", "string"),
        ColumnSpec("priority", "integer", required=True, min=1, max=4),
        ColumnSpec("cost", "float", min=0)))
    n = 300
    unique = pa.table({
        "record_id": [f"rec-{i}" if i not in (7, 150) else f"bad-{i}" for i in range(n)],
        "user_email": [f"user{i}@example.com" for i in range(n)],
        "text": [f"ticket {i}: " + "the export stalls after the nightly run " * (1 + i % 5) for i in range(n)],
        "priority": [9 if i in (20, 21) else 1 + i % 4 for i in range(n)],
        "cost": pa.array([i % 50 for i in range(n)], pa.int64()),  # cast to float by the contract
        "note": [f"extra {i}" if i % 3 else None for i in range(n)],
    })
    repeats = [3, 7, 20, 100, 100, 299, 150]  # passing, failing (regex, range) and twice-repeated rows
    positions = list(range(n))
    for k, row in enumerate(repeats):
        positions.insert(row + 5 + 11 * k, row)  # each repeat after its first occurrence
    with_repeats = unique.take(pa.array(positions))

    def refine(table, upload_id):
        rejected = []
        catalog = Catalog(f"sqlite:///{tmp_path}/catalog-{upload_id}.db")
        index = row_index(local_store, catalog, dataset=f"tickets{upload_id}")
        index.begin(upload_id)
        refiner = UploadRefiner(contract, Pseudonymizer(b"k" * 32, "acme"), rejected.append, index,
                                upload_id=upload_id)
        tables = list(refiner([table]))
        return pa.concat_tables(tables), [(r.line, r.reason, r.raw) for r in rejected], refiner.report

    expected, expected_rejects, _ = refine(unique, 1)
    got, got_rejects, report = refine(with_repeats, 2)
    assert report.duplicates_in_file == len(repeats)
    assert len(expected_rejects) == 4 and got_rejects == expected_rejects
    assert got.schema == expected.schema and got.column_names == unique.column_names
    assert got.equals(expected)
    assert got.num_rows == n - 4


def test_rows_are_compared_across_files_as_stored_not_as_each_parser_typed_them(local_store, catalog):
    # Parsers infer types per file: a timestamp column holding one bad value is read as
    # text in that file and as timestamps in the next; integer-looking costs as integers.
    # The contract casts both to the stored types, and a row must hash as stored, or an
    # exact copy of a kept row would be kept again from a file read differently.
    from data_platform.contracts import ColumnSpec, Contract
    from data_platform.privacy import Pseudonymizer
    from data_platform.refinement import UploadRefiner

    contract = Contract(tenant="acme", dataset="tickets", version="1", columns=(
        ColumnSpec("record_id", "string", required=True),
        ColumnSpec("created_at", "timestamp", required=True),
        ColumnSpec("cost", "float"),
        ColumnSpec("priority", "integer", min=1, max=4)))
    n = 60
    stamps = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i) for i in range(n)]
    as_text = pa.table({  # the first file: one bad timestamp keeps the column text
        "record_id": [f"rec-{i}" for i in range(n)] + ["rec-bad"],
        "created_at": [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in stamps] + ["not a time"],
        "cost": pa.array([i % 7 for i in range(n)] + [1], pa.int64()),
        "priority": [1 + i % 4 for i in range(n)] + [1],
    })
    as_typed = pa.table({  # the second: the same rows read as timestamps and floats, and 5 new
        "record_id": [f"rec-{i}" for i in range(n + 5)],
        "created_at": pa.array(stamps + [stamps[0] + timedelta(days=9, hours=i) for i in range(5)],
                               pa.timestamp("us", tz="UTC")),
        "cost": pa.array([float(i % 7) for i in range(n + 5)], pa.float64()),
        "priority": [1 + i % 4 for i in range(n + 5)],
    })
    # within one file, two spellings of one instant are one stored row (an offset, a space)
    spellings = pa.table({"record_id": ["rec-x", "rec-x", "rec-y"],
                          "created_at": ["2026-03-01T00:00:00Z", "2026-03-01 01:00:00+01:00", "oops"],
                          "cost": pa.array([1, 1, 1], pa.int64()), "priority": [2, 2, 2]})

    a, b, c = uploads(catalog, 3)
    index = row_index(local_store, catalog)

    def refine(table, upload):
        index.begin(upload.id)
        rejected = []
        refiner = UploadRefiner(contract, Pseudonymizer(b"k" * 32, "acme"), rejected.append, index,
                                upload_id=upload.id)
        kept = pa.concat_tables(list(refiner([table])))
        commit(index, catalog, upload)
        return kept, refiner.report, rejected

    kept, report, rejected = refine(as_text, a)
    assert kept.num_rows == n and [r.reason for r in rejected] == ["type:created_at"]
    assert kept.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    kept, report, _ = refine(as_typed, b)
    assert report.duplicates_of_earlier_uploads == n
    assert kept.column("record_id").to_pylist() == [f"rec-{n + i}" for i in range(5)]
    kept, report, rejected = refine(spellings, c)
    assert kept.column("record_id").to_pylist() == ["rec-x"] and report.duplicates_in_file == 1
    # ... and as read, the hashes differ: this is what the cast changed
    assert not np.isin(row_hashes(as_typed.slice(0, n)), row_hashes(as_text.slice(0, n))).any()

"""Right to erasure: one subject erased from every object of a tenant after a whole
lifecycle (fresh, used, archived, training sets, a feature version, an export,
quarantine), with a receipt; crashes at many points resumed exactly once; the dry run;
the CLI and the Dagster asset."""

import gzip
import io
import json
import os
import re
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from data_platform import cli, erasure, integrity
from data_platform import features as fs
from data_platform import training_sets as tsets
from data_platform.catalog import ARCHIVED, DELETED, FRESH, QUARANTINED, USED, metadata
from data_platform.contracts import ContractRegistry
from data_platform.exports import Week, export_week, verify_export
from data_platform.indexes import uploads_holding_subject
from data_platform.privacy import Pseudonymizer, subject_key
from data_platform.retention import apply_cleanup, plan_cleanup
from data_platform_tests.support import ingest_everything, jsonl

KEY = os.environ.get("DATA_PLATFORM_PSEUDONYM_KEY", "test-pseudonym-key-not-for-production").encode()
ALICE = "alice@example.com"
CONTRACT = b"""
version: 1
columns:
  record_id: {type: string, required: true, regex: "^rec-"}
  user_email: {type: string, pii: email}
  phone: {type: string, pii: phone}
  client_ip: {type: string, pii: ip}
  body: {type: string, pii: free_text}
  n: {type: integer, required: true}
  created_at: {type: timestamp, required: true}
primary_key: [record_id]
validation: {max_failing_share: 0.3, blocking: true}
retention: {archive_after_uses: 1, archive_after_days: null, deprecate_after_days: null, delete_after_days: null}
"""
FEATURES = {"name": "activity", "entities": ["user_email"], "event_timestamp": "created_at",
            "features": {"n": "integer"}, "source": {"dataset": "tickets"}}


def rows(no: int, count: int, alice_at=(), *, tenant_tag: str = "") -> list[dict]:
    out = []
    for i in range(count):
        alice = i in alice_at
        out.append({"record_id": f"rec-{tenant_tag}{no}-{i}", "user_email": "  ALICE@Example.com " if alice and i % 2
                    else ALICE if alice else f"user{no}-{i}@example.org",
                    "phone": f"+33 6 12 34 {no:02d} {i:02d}", "client_ip": f"10.0.{no}.{i}", "n": i,
                    "body": f"ticket {no}-{i}: please write to {ALICE}" if alice else f"ticket {no}-{i} about billing",
                    "created_at": f"2026-11-{10 + no:02d}T10:{i:02d}:00Z"})
    return out


def land(store, tenant: str, name: str, data: list[dict] | bytes) -> None:
    store.put_bytes(f"landing/{tenant}/tickets/{name}", data if isinstance(data, bytes) else jsonl(data))


def lifecycle(store, catalog) -> dict:
    """Uploads 1-4 of acme (Alice in 1, 2 and 4), a training set of 1 (then archived), one of
    2 and 3, a feature version, this week's export, rejected rows and a quarantined file
    holding Alice's raw address; globex holds the same address."""
    for tenant in ("acme", "globex"):
        store.put_bytes(f"_platform/contracts/{tenant}/tickets.yaml", CONTRACT)
    u2 = rows(2, 30, alice_at=(4,))
    u2.append({**rows(2, 31)[30], "n": "many", "user_email": ALICE})  # rejected with Alice's raw address
    u2.append({**rows(2, 32)[31], "n": "lots"})  # rejected, someone else
    land(store, "acme", "a1.jsonl", rows(1, 40, alice_at=(3, 17)))
    ingest_everything(store, catalog)
    land(store, "acme", "a2.jsonl", u2)
    land(store, "globex", "g1.jsonl", rows(1, 10, alice_at=(2,), tenant_tag="g"))
    ingest_everything(store, catalog)
    one, two = catalog.list_uploads(tenant="acme")
    assert one.state == two.state == FRESH and two.quarantined_rows == 2
    first = tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m", max_rows=one.rows),
                                      actor="t")
    assert [f["upload_id"] for f in first.manifest["files"]] == [one.id]
    land(store, "acme", "a3.jsonl", rows(3, 25))
    ingest_everything(store, catalog)
    second = tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m"), actor="t")
    land(store, "acme", "a4.csv.gz", gzip.compress(_csv(rows(4, 20, alice_at=(0, 9, 19)))))
    ingest_everything(store, catalog)
    bad = [{**r, "record_id": f"bad-{i}"} for i, r in enumerate(rows(5, 6, alice_at=(1,)))]
    land(store, "acme", "a5.jsonl", bad)  # every row breaks the contract: quarantined whole
    ingest_everything(store, catalog)
    land(store, "acme", "a6.jsonl", [{**r, "record_id": f"bad-{i}"} for i, r in enumerate(rows(6, 4))])
    ingest_everything(store, catalog)
    ups = catalog.list_uploads(tenant="acme")
    assert [u.state for u in ups] == [USED, USED, USED, FRESH, QUARANTINED, QUARANTINED]
    plan = plan_cleanup(catalog, store, ContractRegistry(None, store), now=datetime.now(UTC), tenant="acme")
    first_only = [t for t in plan.transitions if t.upload_id == one.id]
    assert first_only
    plan.transitions[:] = first_only  # archive upload 1 alone
    assert not apply_cleanup(plan, catalog, store, actor="cleanup").failed
    assert catalog.get(one.id).state == ARCHIVED
    fs.register_feature_table(catalog, "acme", FEATURES, actor="t")
    version = fs.materialise_feature_table(store, catalog, "acme", "activity", actor="t").version
    week = Week.containing(datetime.now(UTC)).key
    export_week(store, catalog, "acme", week)
    return {"uploads": [u.id for u in ups], "sets": [first.training_set, second.training_set], "version": version,
            "week": week}


def _csv(data: list[dict]) -> bytes:
    out = io.StringIO()
    cols = list(data[0])
    out.write(",".join(cols) + "\n")
    for r in data:
        out.write(",".join(f'"{r[c]}"' for c in cols) + "\n")
    return out.getvalue().encode()


def pseudonyms(tenant: str = "acme") -> set[str]:
    p = Pseudonymizer(KEY, tenant)
    return {p.pseudonym(ALICE, kind) for kind in erasure.KINDS}


def listing(store) -> dict[str, str]:
    return {i.key: i.etag for i in store.list("")}


def tenant_objects(store, tenant: str) -> list[str]:
    return sorted(k for k in listing(store) if f"/{tenant}/" in f"/{k}" and "/erasure/" not in k
                  and "/backups/" not in k)


def holds_alice(store, key: str, tenant: str = "acme") -> bool:
    """Whether the object holds Alice: her pseudonym in any cell, her subject key in a run,
    her raw address anywhere in text."""
    body = store.get_bytes(key)
    names = pseudonyms(tenant)
    if key.endswith(".parquet") and not key.startswith("quarantine/"):
        table = pq.read_table(pa.BufferReader(body))
        if "subject" in table.column_names:
            return bool(set(table.column("subject").to_pylist()) & {subject_key(p) for p in names})
        cells = {v for c in table.columns if pa.types.is_string(c.type) for v in c.to_pylist()}
        return bool(cells & names)
    if key.endswith(".gz"):
        body = gzip.decompress(body)
    text = body.decode("utf-8", "replace")
    return ALICE in text.lower() or any(p in text for p in names)


def parquet_rows(store) -> dict[str, int]:
    return {k: pq.read_metadata(pa.BufferReader(store.get_bytes(k))).num_rows for k in listing(store)
            if k.endswith(".parquet") and not k.startswith("_platform/backups/")}


def catalog_snapshot(catalog) -> dict:
    with catalog.engine.connect() as conn:
        return {t.name: sorted(tuple(map(str, r)) for r in conn.execute(sa.select(t))) for t in metadata.sorted_tables}


def subject(tenant="acme", **kw) -> erasure.Subject:
    return erasure.Subject(KEY, tenant, ALICE, **kw)


def without_times(receipt: dict) -> dict:
    """A receipt without its times; parts and manifests by key and rows (manifests hold
    build times, and DuckDB does not promise an export part's row order)."""
    out = {k: v for k, v in receipt.items() if k not in ("requested_at", "completed_at", "already_done")}

    def comparable(e: dict) -> dict:
        if not e["what"].endswith(("_manifest", "_part", "_report")):  # these hold times
            return e
        return {**e, "before": {k: e["before"][k] for k in ("key", "rows")},
                "after": {k: e["after"][k] for k in ("key", "rows")}}
    out["rewritten"] = [comparable(e) for e in out["rewritten"]]
    return json.loads(re.sub(r"\d{8}T\d{6}Z-[0-9a-f]{6}", "EXPORT_ID", json.dumps(out)))  # time + random


# -- end to end ------------------------------------------------------------------------------------


def test_erasure_end_to_end_over_s3_and_postgresql(s3_store, postgresql_catalog):
    store, catalog = s3_store, postgresql_catalog
    life = lifecycle(store, catalog)
    holding = {p: uploads_holding_subject(store, catalog, "acme", p) for p in pseudonyms()}
    assert set().union(*holding.values()) == {life["uploads"][i] for i in (0, 1, 3)}
    before_listing, before_rows = listing(store), parquet_rows(store)
    alice_objects = {k for k in tenant_objects(store, "acme") if holds_alice(store, k)}
    globex_before = {k: store.get_bytes(k) for k in tenant_objects(store, "globex")}
    assert any(holds_alice(store, k, "globex") for k in globex_before)
    rows_before = {u.id: u.rows for u in catalog.list_uploads(tenant="acme")}

    receipt = erasure.forget(store, catalog, subject(), actor="dpo")

    # Nothing of the tenant holds Alice any more, in any form.
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
    # The receipt lists exactly the objects that changed (and nothing holds a raw value).
    after_listing = listing(store)
    receipt_key = erasure.receipt_key("acme", receipt["request_id"])
    changed = ({k for k in before_listing.keys() | after_listing.keys()
                if before_listing.get(k) != after_listing.get(k)} - {receipt_key})
    listed = {e["key"] for e in receipt["rewritten"]} | {e["after"]["key"] for e in receipt["rewritten"]}
    listed |= {k for e in receipt["deleted"] for k in [e["key"], *e["also_deleted"]]}
    assert changed == listed
    # Every object that held Alice was dealt with (rewritten, or deleted with its upload).
    assert alice_objects <= listed
    body = store.get_bytes(receipt_key)
    assert json.loads(body)["request_id"] == receipt["request_id"]
    assert b"alice" not in body.lower() and not any(p.encode() in body for p in pseudonyms())
    whats = Counter(e["what"] for e in receipt["rewritten"])
    assert whats == {"data": 3, "index_run:subjects": 3, "index_run:near_dup": 3, "training_set_part": 2,
                     "training_set_manifest": 2, "feature_part": 1, "feature_manifest": 1, "export_part": 1,
                     "export_manifest": 1, "quarantine_rejected_rows": 1,
                     "quarantine_report": 1}, whats
    assert [e["what"] for e in receipt["deleted"]] == ["quarantine_upload"]
    assert {e["what"] for e in receipt["not_rewritten"]} == {"index_run:rows"}
    # Every other row intact: per object, before - erased == after.
    after_rows = parquet_rows(store)
    for e in receipt["rewritten"]:
        if e["after"]["rows"] is not None and e["before"]["rows"] is not None:
            assert e["before"]["rows"] - (e["rows_erased"] or 0) == e["after"]["rows"] or e["what"].startswith(
                "index_run"), e
        if e["key"].endswith(".parquet") and not e["what"].startswith("index_run"):
            assert before_rows[e["key"]] - e["rows_erased"] == after_rows[e["after"]["key"]], e
    untouched = set(before_rows) - changed
    assert all(before_rows[k] == after_rows[k] for k in untouched)
    data = {e["upload_id"]: e["rows_erased"] for e in receipt["rewritten"] if e["what"] == "data"}
    assert data == {life["uploads"][0]: 2, life["uploads"][1]: 1, life["uploads"][3]: 3}
    for u in catalog.list_uploads(tenant="acme"):
        if u.id in data:
            assert u.rows == rows_before[u.id] - data[u.id]
    # Quarantine: the file holding Alice is gone with a tombstone; the other stays.
    fifth, sixth = catalog.get(life["uploads"][4]), catalog.get(life["uploads"][5])
    assert fifth.state == DELETED and sixth.state == QUARANTINED
    assert [t["reason"] for t in catalog.tombstones("acme")] == [erasure.ERASED_REASON]
    # Manifests and checksums all match, in the catalog too.
    for ts in life["sets"]:
        again = next(s for s in catalog.training_sets(tenant="acme") if s.id == ts.id)
        manifest = tsets.read_manifest(store, again)
        assert tsets.verify_snapshot(store, manifest) == []
        assert again.rows == manifest["rows"] == sum(p["rows"] for p in manifest["parts"])
    version = fs.get_version(catalog, "acme", "activity")
    assert fs.verify_version(store, catalog, version) == [] and version.rows == life["version"].rows - 6
    assert verify_export(store, f"exports/acme/{life['week']}/")["ok"]
    report = integrity.verify(store, catalog, tenant="acme")
    assert report.ok, [f.as_dict() for f in report.findings] + report.errors
    assert all(uploads_holding_subject(store, catalog, "acme", p) == [] for p in pseudonyms())
    # Another tenant's data with the same raw value is untouched.
    assert {k: store.get_bytes(k) for k in tenant_objects(store, "globex")} == globex_before
    # Exactly once: the same request again returns the stored receipt and changes nothing.
    settled = listing(store)
    again = erasure.forget(store, catalog, subject(), actor="dpo")
    assert again["already_done"] is True and without_times(again) == without_times(receipt)
    assert listing(store) == settled


# -- crashes -----------------------------------------------------------------------------------------


class Crash(Exception):
    pass


POINTS = ["after_data:", "after_upload:", "after_part:", "after_manifest:", "after_commit:",
          "after_quarantine:", "after_tombstone:", "before_receipt", "after_receipt"]


def test_a_crash_at_each_point_resumes_exactly_once(local_store, sqlite_catalog, tmp_path):
    store, catalog = local_store, sqlite_catalog
    life = lifecycle(store, catalog)
    puts = Counter()
    for name in ("upload_file", "put_bytes"):
        original = getattr(store, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            puts[args[1] if _name == "upload_file" else args[0]] += 1
            return _original(*args, **kwargs)
        setattr(store, name, counted)
    crashed = []
    for point in POINTS:
        hits = Counter()

        def checkpoint(name, point=point):
            if name.startswith(point):
                hits[point] += 1
                if hits[point] == 2 or point in ("before_receipt", "after_receipt", "after_tombstone:"):
                    raise Crash(name)
        with pytest.raises(Crash, match=point) as err:
            erasure.forget(store, catalog, subject(), checkpoint=checkpoint, client_id="ticket-42")
        crashed.append(str(err.value))
        state = erasure.request_state(catalog, erasure.request_id_for(subject(), "ticket-42"))
        assert state["state"] == erasure.STARTED
    assert len(crashed) == len(POINTS)
    receipt = erasure.forget(store, catalog, subject(), client_id="ticket-42")
    # Nothing rewritten twice: every object was put once (the receipt once more after its crash).
    receipt_key = erasure.receipt_key("acme", receipt["request_id"])
    assert {k: n for k, n in puts.items() if n != 1} == {receipt_key: 2}
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
    assert integrity.verify(store, catalog, tenant="acme").ok
    assert catalog.get(life["uploads"][1]).quarantined_rows == 1  # its rejected row of Alice counted off once
    # The same as a clean run of the same request on the same lifecycle.
    clean_store = type(store)(tmp_path / "clean")
    from data_platform.catalog import Catalog

    clean_catalog = Catalog(f"sqlite:///{tmp_path / 'clean.db'}")
    lifecycle(clean_store, clean_catalog)
    clean = erasure.forget(clean_store, clean_catalog, subject(), client_id="ticket-42")
    ours, theirs = without_times(receipt), without_times(clean)
    for mine, other in zip(ours["rewritten"], theirs["rewritten"], strict=True):
        assert mine == other
    assert ours == theirs
    assert receipt["counts"] == clean["counts"] and receipt["counts"]["objects_rewritten"] > 10


# -- dry run, absent subject, scope ---------------------------------------------------------------------


def test_dry_run_changes_nothing_and_lists_what_the_erasure_does(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    lifecycle(store, catalog)
    before = (catalog_snapshot(catalog), listing(store))
    plan = erasure.forget(store, catalog, subject(), dry_run=True)
    assert (catalog_snapshot(catalog), listing(store)) == before
    assert plan["dry_run"] is True and plan["counts"]["objects_rewritten"] > 10
    done = erasure.forget(store, catalog, subject())
    assert [(e["key"], e["what"]) for e in plan["rewritten"]] == [(e["key"], e["what"]) for e in done["rewritten"]]
    assert [e["key"] for e in plan["deleted"]] == [e["key"] for e in done["deleted"]]


def test_an_absent_subject_gives_an_empty_receipt(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    lifecycle(store, catalog)
    before = listing(store)
    receipt = erasure.Subject(KEY, "acme", "nobody@nowhere.example")
    got = erasure.forget(store, catalog, receipt)
    assert got["rewritten"] == got["deleted"] == got["not_rewritten"] == [] and got["found"]["uploads"] == []
    key = erasure.receipt_key("acme", got["request_id"])
    assert set(listing(store)) - set(before) == {key} and b"nobody" not in store.get_bytes(key)


def test_column_restriction_keeps_other_columns_and_kinds(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    lifecycle(store, catalog)
    got = erasure.forget(store, catalog, subject(kinds=["phone"]))  # Alice's address is no phone number
    assert got["found"]["uploads"] and [e for e in got["rewritten"] if not e["what"].startswith("quarantine")] == []
    got = erasure.forget(store, catalog, subject(column="client_ip"))  # nor an IP address
    assert [e for e in got["rewritten"] if e["what"] == "data"] == []
    with pytest.raises(erasure.ErasureError):
        erasure.Subject(KEY, "acme", "   ")


# -- CLI and Dagster ---------------------------------------------------------------------------------


def test_cli_forget_then_the_same_request_again(local_store, sqlite_catalog, monkeypatch, capsys, tmp_path):
    store, catalog = local_store, sqlite_catalog
    lifecycle(store, catalog)
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", str(store.root))
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", catalog.url)
    assert cli.main(["forget", "--tenant", "acme", "--subject", ALICE, "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True and dry["counts"]["data_rows_erased"] == 6
    secret = tmp_path / "subject.txt"
    secret.write_text(ALICE + "\n")
    assert cli.main(["forget", "--tenant", "acme", "--subject-file", str(secret), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["counts"]["data_rows_erased"] == 6 and "already_done" not in done
    assert cli.main(["forget", "--tenant", "acme", "--subject", ALICE, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] is True and again["request_id"] == done["request_id"]
    assert cli.main(["forget", "--tenant", "../x", "--subject", ALICE, "--json"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("data-platform forget: ") and out.err.count("\n") == 1


def test_the_erasure_asset_reads_the_subject_from_the_environment(local_store, sqlite_catalog, monkeypatch):
    from data_platform.defs.governance.erasure import erasure as erasure_asset
    from data_platform.defs.resources import CatalogResource, ObjectStoreResource

    store, catalog = local_store, sqlite_catalog
    lifecycle(store, catalog)
    monkeypatch.setenv("ERASE_THIS", ALICE)
    config = {"tenant": "acme", "subject_env_var": "ERASE_THIS", "request_id": "dsr-7"}
    result = dg.materialize([erasure_asset], resources={
        "object_store": ObjectStoreResource(storage_url=str(store.root)),
        "catalog": CatalogResource(catalog_url=catalog.url)},
        run_config={"ops": {"erasure": {"config": config}}})
    assert result.success
    (mat,) = result.asset_materializations_for_node("erasure")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["data_rows_erased"] == 6 and meta["request_id"] == erasure.request_id_for(subject(), "dsr-7")
    assert ALICE not in json.dumps({k: str(v) for k, v in meta.items()})
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_exports_are_rewritten_row_by_row(local_store, sqlite_catalog, fmt):
    store, catalog = local_store, sqlite_catalog
    life = lifecycle(store, catalog)
    export_week(store, catalog, "acme", life["week"], fmt=fmt)  # replaces the week's Parquet export
    (part,) = [k for k in listing(store) if k.startswith("exports/acme/") and k.endswith("." + fmt)]
    before = store.get_bytes(part)
    assert holds_alice(store, part)
    receipt = erasure.forget(store, catalog, subject())
    (entry,) = [e for e in receipt["rewritten"] if e["what"] == "export_part"]
    assert entry["key"] == part and entry["rows_erased"] == 4  # upload 2's row and upload 4's three
    after = store.get_bytes(entry["after"]["key"])
    assert not holds_alice(store, entry["after"]["key"]) and not store.exists(part)
    assert entry["after"]["rows"] == entry["before"]["rows"] - 4
    assert verify_export(store, f"exports/acme/{life['week']}/")["ok"]
    if fmt == "jsonl":  # every other line kept byte for byte
        kept = [line for line in before.splitlines() if b"ps_" not in line or not any(
            p.encode() in line for p in pseudonyms())]
        assert after.splitlines() == kept


def test_a_week_exported_again_during_a_crashed_request_is_erased_on_retry(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    life = lifecycle(store, catalog)

    def crash_after_the_export_manifest(name):
        if name.startswith("after_manifest:exports/"):
            raise Crash(name)
    with pytest.raises(Crash):
        erasure.forget(store, catalog, subject(), checkpoint=crash_after_the_export_manifest)
    # The weekly schedule replaces the week meanwhile, from data already rewritten.
    export_week(store, catalog, "acme", life["week"])
    receipt = erasure.forget(store, catalog, subject())
    assert [e for e in receipt["rewritten"] if e["what"].startswith("export")] == []
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
    assert verify_export(store, f"exports/acme/{life['week']}/")["ok"]
    assert integrity.verify(store, catalog, tenant="acme").ok


# -- closing the gaps: suppression, renumbered rows, quarantine counts, invalid keys, names, concurrency ----


NOTES_CONTRACT = b"""
version: 1
columns:
  record_id: {type: string, required: true, regex: "^[a-z]"}
  user_email: {type: string, pii: email}
  author: {type: string, pii: name}
  body: {type: string, pii: free_text}
primary_key: [record_id]
validation: {max_failing_share: 0.5, blocking: true}
"""
TEXTS = ["the storage cluster in the north region charged our team twice for the same backup volume last month "
         "and we would like a refund of the second charge",
         "our mobile application crashes every time a user opens the settings page after the latest release and "
         "the logs show a null pointer in the profile loader",
         "we cannot export the quarterly report to spreadsheet format because the export button stays grey even "
         "for administrators of the workspace"]


def edited(text: str, word: str = "yesterday") -> str:
    """A near-duplicate: one word of the text replaced."""
    words = text.split()
    words[5] = word
    return " ".join(words)


def note(record_id: str, email: str, author: str, body: str) -> dict:
    return {"record_id": record_id, "user_email": email, "author": author, "body": body}


def suppression_rows(catalog) -> list:
    from data_platform.catalog.schema import erasure_suppressions
    with catalog.engine.connect() as conn:
        return conn.execute(sa.select(erasure_suppressions)).all()


def test_uploads_waiting_in_landing_do_not_bring_the_subject_back(local_store, sqlite_catalog, tmp_path, monkeypatch):
    from data_platform import backups
    from data_platform.catalog import Catalog, Suppressions

    store, catalog = local_store, sqlite_catalog
    for tenant in ("acme", "globex"):
        store.put_bytes(f"_platform/contracts/{tenant}/tickets.yaml", CONTRACT)
    land(store, "acme", "a1.jsonl", rows(1, 10, alice_at=(3,)))
    ingest_everything(store, catalog)
    # Waiting in landing when the erasure runs: Alice in kept rows and in a rejected row ...
    waiting = rows(7, 10, alice_at=(2, 5))
    waiting.append({**rows(7, 11)[10], "n": "many", "user_email": ALICE})  # rejected, Alice's raw address
    waiting.append({**rows(7, 12)[11], "n": "lots"})  # rejected, someone else
    land(store, "acme", "w1.jsonl", waiting)
    land(store, "acme", "w2.jsonl", rows(8, 2, alice_at=(0, 1)))  # nothing but Alice
    bad = [{**r, "record_id": f"bad-{i}"} for i, r in enumerate(rows(9, 6, alice_at=(1,)))]
    land(store, "acme", "w3.jsonl", bad)  # every row breaks the contract: quarantined whole
    land(store, "globex", "g1.jsonl", rows(1, 4, alice_at=(0,), tenant_tag="g"))

    before = catalog_snapshot(catalog)
    plan = erasure.forget(store, catalog, subject(), dry_run=True)
    assert plan["suppression"]["recorded"] is False and catalog_snapshot(catalog) == before  # records nothing
    receipt = erasure.forget(store, catalog, subject())
    assert receipt["suppression"]["recorded"] is True and "suppression list" in receipt["notes"]["landing"]
    listed = suppression_rows(catalog)
    assert {(r.tenant, r.kind, r.column_name, r.pseudonym) for r in listed} == {
        ("acme", kind, "", Pseudonymizer(KEY, "acme").pseudonym(ALICE, kind)) for kind in erasure.KINDS}
    assert b"alice" not in json.dumps([tuple(map(str, r)) for r in listed]).encode().lower()  # no raw value

    ingest_everything(store, catalog)
    by_name = {u.landing_key.rsplit("/", 1)[-1]: u for u in catalog.list_uploads()}
    w1, w2, w3 = by_name["w1.jsonl"], by_name["w2.jsonl"], by_name["w3.jsonl"]
    assert w1.state == FRESH and w1.rows == 8 and w1.quarantined_rows == 1
    assert w1.report["erased_rows"] == 2 and w1.report["erased_rejected_rows"] == 1
    assert (w2.state, w2.reason) == (DELETED, erasure.ERASED_REASON) and w2.object_key is None
    assert not store.exists(f"data/acme/tickets/upload-{w2.id:010d}.parquet")
    assert not list(store.list(f"quarantine/acme/tickets/upload-{w2.id:010d}/"))
    assert w3.state == QUARANTINED and w3.quarantined_rows == 5
    w3_keys = [i.key for i in store.list(f"quarantine/acme/tickets/upload-{w3.id:010d}/")]
    assert not [k for k in w3_keys if "/original/" in k]  # the original held Alice: not kept
    report = json.loads(store.get_bytes(f"quarantine/acme/tickets/upload-{w3.id:010d}/report.json"))
    assert report["original_erased"] is True and report["original_key"] is None and report["rejected_rows"] == 5
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
    assert all(uploads_holding_subject(store, catalog, "acme", p) == [] for p in pseudonyms())
    # Another tenant's list is its own: globex keeps its data.
    g1 = by_name["g1.jsonl"]
    assert g1.state == FRESH and g1.rows == 4 and holds_alice(store, g1.object_key, "globex")

    # An ingestion that read the list before an erasure added to it is refused at commit
    # and ingested again with the new list.
    land(store, "acme", "w4.jsonl", rows(10, 5, alice_at=(1,)))
    real = catalog.suppressions
    calls = Counter()

    def stale_once(tenant):
        calls["n"] += 1
        return Suppressions(0, {}) if calls["n"] == 1 else real(tenant)
    monkeypatch.setattr(catalog, "suppressions", stale_once)
    ingest_everything(store, catalog)
    w4 = next(u for u in catalog.list_uploads(tenant="acme") if u.landing_key.endswith("w4.jsonl"))
    assert calls["n"] == 2 and w4.state == FRESH and w4.rows == 4 and w4.report["erased_rows"] == 1
    assert not holds_alice(store, w4.object_key)
    monkeypatch.undo()

    # The list is a catalog table: a backup carries it, and a restored catalog applies it.
    doc = backups.create_backup(store, catalog)
    assert "erasure_suppressions" in {t["name"] for t in doc["tables"]}
    restored_url = f"sqlite:///{tmp_path / 'restored.db'}"
    backups.restore_backup(store, restored_url, doc["backup_id"])
    assert Catalog(restored_url).suppressions("acme") == catalog.suppressions("acme")


def test_near_duplicate_flags_follow_the_rows_an_erasure_renumbers(store, catalog):
    store.put_bytes("_platform/contracts/acme/notes.yaml", NOTES_CONTRACT)
    store.put_bytes("landing/acme/notes/a.jsonl", jsonl([
        note("a0", ALICE, "Alice Martin", TEXTS[0]),  # erased: the rows after it move up
        note("a1", "bob@example.com", "Bob", TEXTS[1]),
        note("a2", "carol@example.com", "Carol", edited(TEXTS[1]))]))  # flagged: near a1 (same upload)
    ingest_everything(store, catalog)
    store.put_bytes("landing/acme/notes/b.jsonl", jsonl([
        note("b0", "dan@example.com", "Dan", TEXTS[2]),
        note("b1", "eve@example.com", "Eve", edited(TEXTS[1], "today")),  # near a1
        note("b2", "fay@example.com", "Fay", edited(TEXTS[0], "today"))]))  # near a0, Alice's row
    ingest_everything(store, catalog)
    a, b = catalog.list_uploads(tenant="acme")

    def flags(u):
        table = pq.read_table(pa.BufferReader(store.get_bytes(catalog.get(u.id).object_key)))
        return {r["record_id"]: (r["_near_duplicate_of_upload"], r["_near_duplicate_of_row"])
                for r in table.to_pylist()}
    assert flags(a)["a2"] == (a.id, 1) and flags(b)["b1"] == (a.id, 1) and flags(b)["b2"] == (a.id, 0)
    assert uploads_holding_subject(store, catalog, "acme", Pseudonymizer(KEY, "acme").pseudonym(ALICE, "email")) \
        == [a.id]  # b is not found through the subject index: it holds no trace of Alice

    receipt = erasure.forget(store, catalog, subject(kinds=["email"]))
    after_a, after_b = flags(a), flags(b)
    assert list(after_a) == ["a1", "a2"] and after_a["a2"] == (a.id, 0)  # a1 is row 0 now
    assert after_b == {"b0": (None, None), "b1": (a.id, 0), "b2": (None, None)}  # b2's row was erased
    data = pq.read_table(pa.BufferReader(store.get_bytes(a.object_key))).to_pylist()
    assert data[after_b["b1"][1]]["record_id"] == "a1"  # the flag names the right row
    entries = {e["upload_id"]: e for e in receipt["rewritten"] if e["what"] == "data"}
    assert entries[b.id]["rows_erased"] == 0 and entries[b.id]["flags_remapped"] == 2
    assert entries[a.id]["rows_erased"] == 1 and entries[a.id]["flags_remapped"] == 1
    assert receipt["counts"]["near_duplicate_flags_moved"] == 3
    report = integrity.verify(store, catalog, tenant="acme")  # b's new checksum is in the catalog
    assert report.ok, [f.as_dict() for f in report.findings] + report.errors


def test_quarantined_rows_follow_the_rejected_rows_an_erasure_removes(local_store, sqlite_catalog, monkeypatch,
                                                                      capsys):
    store, catalog = local_store, sqlite_catalog
    life = lifecycle(store, catalog)
    second = catalog.get(life["uploads"][1])
    prefix = f"quarantine/acme/tickets/upload-{second.id:010d}/"
    assert second.quarantined_rows == 2 and sum(second.report["rejected_by_reason"].values()) == 2
    erasure.forget(store, catalog, subject())
    monkeypatch.setenv("DATA_PLATFORM_STORAGE_URL", str(store.root))
    monkeypatch.setenv("DATA_PLATFORM_CATALOG_URL", catalog.url)
    assert cli.main(["status", "--tenant", "acme", "--json"]) == 0
    status = {e["upload_id"]: e for e in json.loads(capsys.readouterr().out)}
    assert status[second.id]["quarantined_rows"] == 1
    assert sum(status[second.id]["detail"]["rejected_by_reason"].values()) == 1
    assert len(store.get_bytes(prefix + "rejected_rows.jsonl").splitlines()) == 1
    report = json.loads(store.get_bytes(prefix + "report.json"))
    assert report["rejected_rows"] == 1 and sum(report["rejected_by_reason"].values()) == 1


def test_invalid_key_originals_under_the_tenant_prefix_are_searched(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    store.put_bytes("_platform/contracts/acme/tickets.yaml", CONTRACT)
    land(store, "acme", "a1.jsonl", rows(1, 5, alice_at=(1,)))
    store.put_bytes("landing/acme/notes.jsonl", jsonl(rows(2, 3, alice_at=(0,))))  # no dataset: acme's, Alice
    store.put_bytes("landing/acme/Tickets/x.jsonl", jsonl(rows(3, 3)))  # bad dataset name: acme's, no Alice
    store.put_bytes("landing/stray.jsonl", jsonl(rows(4, 3, alice_at=(0,))))  # names no tenant
    store.put_bytes("landing/globex/x.jsonl", jsonl(rows(5, 3, alice_at=(0,))))  # globex's
    ingest_everything(store, catalog)
    invalid = {u.landing_key: u for u in catalog.list_uploads() if u.reason == "invalid_key"}
    assert len(invalid) == 4 and all(u.object_key.startswith("quarantine/_invalid/") for u in invalid.values())
    before = {k: store.get_bytes(k) for k in listing(store) if k.startswith("quarantine/_invalid/")}

    receipt = erasure.forget(store, catalog, subject())
    mine, clean = invalid["landing/acme/notes.jsonl"], invalid["landing/acme/Tickets/x.jsonl"]
    stray, theirs = invalid["landing/stray.jsonl"], invalid["landing/globex/x.jsonl"]
    assert catalog.get(mine.id).state == DELETED and not list(store.list(mine.object_key))
    assert [t["reason"] for t in catalog.tombstones() if t["upload_id"] == mine.id] == [erasure.ERASED_REASON]
    (gone,) = [e for e in receipt["deleted"] if e["upload_id"] == mine.id]
    assert gone["key"].startswith(mine.object_key + "original/")
    for u in (clean, stray, theirs):  # untouched
        assert catalog.get(u.id).state == QUARANTINED
        assert {k: v for k, v in before.items() if k.startswith(u.object_key)} == \
            {i.key: store.get_bytes(i.key) for i in store.list(u.object_key)}
    skipped = [e for e in receipt["not_rewritten"] if e["what"] == "quarantine_invalid_key"]
    assert [(e["key"], e["upload_id"]) for e in skipped] == [(stray.object_key, stray.id)]
    assert "stray" not in json.dumps(receipt)  # not even the other key's name
    assert any(s.startswith("quarantine/_invalid/") and "of 2 upload(s)" in s for s in receipt["found"]["scanned"])


def test_a_name_written_in_free_text_is_found_and_redacted(local_store, sqlite_catalog):
    store, catalog = local_store, sqlite_catalog
    store.put_bytes("_platform/contracts/acme/notes.yaml", NOTES_CONTRACT)
    store.put_bytes("landing/acme/notes/a.jsonl", jsonl([
        note("a0", "alice@example.com", "Alice Martin", TEXTS[0]),  # her row: erased
        note("a1", "bob@example.com", "Bob", "Alice Martin asked Bob to look at the invoice again, twice"),
        note("a2", "carol@example.com", "Carol", TEXTS[1])]))
    store.put_bytes("landing/acme/notes/b.jsonl", jsonl([  # only in free text: no index names this upload
        note("b0", "dan@example.com", "Dan", "please ping ALICE   MARTIN about the refund before friday"),
        note("b1", "eve@example.com", "Eve", "Malice Martinez wrote this one, not alice martinez either"),
        note("b2", "fay@example.com", "Fay", TEXTS[2])]))
    ingest_everything(store, catalog)
    by_key = {u.landing_key: u for u in catalog.list_uploads(tenant="acme")}
    a, b = by_key["landing/acme/notes/a.jsonl"], by_key["landing/acme/notes/b.jsonl"]
    built = tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="m"), actor="t")
    near_dup_key = f"_platform/indexes/near_dup/acme/notes/upload-{b.id:010d}.parquet"
    entries = pq.read_metadata(pa.BufferReader(store.get_bytes(near_dup_key))).num_rows
    name = erasure.Subject(KEY, "acme", "Alice Martin", kinds=["name"])

    def holds_name(key: str) -> bool:
        body = store.get_bytes(key)
        if key.endswith(".parquet"):
            table = pq.read_table(pa.BufferReader(body))
            body = json.dumps(table.to_pylist(), default=str, ensure_ascii=False).encode()
        return re.search(rb"alice\s+martin\b", body.lower()) is not None

    holding = [k for k in tenant_objects(store, "acme") if not k.startswith("_platform/") and holds_name(k)]
    assert holding  # the data of both uploads and the training-set part
    receipt = erasure.forget(store, catalog, name)
    assert [k for k in tenant_objects(store, "acme") if not k.startswith("_platform/") and holds_name(k)] == []
    assert receipt["found"]["uploads"] == [a.id] and receipt["found"]["free_text_uploads"] == sorted([a.id, b.id])
    assert any("free-text columns of 2 upload(s) of tenant acme" in s for s in receipt["found"]["scanned"])
    data = {e["upload_id"]: e for e in receipt["rewritten"] if e["what"] == "data"}
    assert (data[a.id]["rows_erased"], data[a.id]["values_redacted"]) == (1, 1)
    assert (data[b.id]["rows_erased"], data[b.id]["values_redacted"]) == (0, 1)
    bodies = {r["record_id"]: r["body"] for r in pq.read_table(
        pa.BufferReader(store.get_bytes(b.object_key))).to_pylist()}
    assert bodies["b0"] == "please ping [redacted] about the refund before friday"
    assert bodies["b1"].startswith("Malice Martinez wrote this one, not alice martinez")  # other words kept
    (part,) = [e for e in receipt["rewritten"] if e["what"] == "training_set_part"]
    assert part["rows_erased"] == 1 and part["values_redacted"] == 2
    # The near-duplicate run no longer holds the sketch of the redacted text.
    assert pq.read_metadata(pa.BufferReader(store.get_bytes(near_dup_key))).num_rows == entries - 1
    manifest = tsets.read_manifest(store, next(s for s in catalog.training_sets(tenant="acme")
                                               if s.id == built.training_set.id))
    assert tsets.verify_snapshot(store, manifest) == []
    report = integrity.verify(store, catalog, tenant="acme")
    assert report.ok, [f.as_dict() for f in report.findings] + report.errors


def notes_lifecycle(store, catalog) -> dict:
    """Alice Martin as an author (upload a), in free text only (b), rows of a that other
    uploads' near-duplicates name (b, c), and a training set of all three."""
    store.put_bytes("_platform/contracts/acme/notes.yaml", NOTES_CONTRACT)
    store.put_bytes("landing/acme/notes/a.jsonl", jsonl([
        note("a0", "alice@example.com", "Alice Martin", TEXTS[0]),
        note("a1", "bob@example.com", "Bob", TEXTS[1]),
        note("a2", "carol@example.com", "Carol", edited(TEXTS[1]))]))
    ingest_everything(store, catalog)
    store.put_bytes("landing/acme/notes/b.jsonl", jsonl([
        note("b0", "dan@example.com", "Dan", "please ping alice martin about the refund before friday"),
        note("b1", "eve@example.com", "Eve", edited(TEXTS[1], "today"))]))
    ingest_everything(store, catalog)
    store.put_bytes("landing/acme/notes/c.jsonl", jsonl([
        note("c0", "gus@example.com", "Gus", edited(TEXTS[0], "today")),
        note("c1", "hal@example.com", "Hal", TEXTS[2])]))
    ingest_everything(store, catalog)
    tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", name="n"), actor="t")
    return {u.landing_key.rsplit("/", 1)[-1]: u.id for u in catalog.list_uploads(tenant="acme")}


def test_a_crash_at_each_point_of_a_name_erasure_resumes_exactly_once(local_store, sqlite_catalog, tmp_path):
    from data_platform.catalog import Catalog

    store, catalog = local_store, sqlite_catalog
    ids = notes_lifecycle(store, catalog)
    name = erasure.Subject(KEY, "acme", "Alice Martin")  # no kind: the value may be a name
    puts, _ = _count_puts(store)
    # Each attempt resumes the last one: a (erased and redacted), b (redacted, flags), c (flags
    # only), then the training set's part, manifest and catalog, then the receipt.
    points = ["after_data:", "after_upload:"] * 3 + ["after_part:", "after_manifest:", "after_commit:",
                                                      "before_receipt", "after_receipt"]
    crashed = []
    for point in points:
        def checkpoint(at, point=point):
            if at.startswith(point):
                raise Crash(at)
        with pytest.raises(Crash, match=point) as err:
            erasure.forget(store, catalog, name, checkpoint=checkpoint, client_id="n-1")
        crashed.append(str(err.value))
    assert len(set(crashed)) == len(points)  # each attempt got one step further
    receipt = erasure.forget(store, catalog, name, client_id="n-1")
    receipt_key = erasure.receipt_key("acme", receipt["request_id"])
    assert {k: n for k, n in puts.items() if n != 1 and k != receipt_key} == {}
    whats = Counter(e["what"] for e in receipt["rewritten"])
    assert whats["data"] == 3 and whats["training_set_part"] == 1, whats  # a, b (name), c (flags)
    data = {e["upload_id"]: e for e in receipt["rewritten"] if e["what"] == "data"}
    assert data[ids["a.jsonl"]]["rows_erased"] == 1 and data[ids["b.jsonl"]]["values_redacted"] == 1
    assert data[ids["c.jsonl"]]["flags_remapped"] == 1 and data[ids["b.jsonl"]]["flags_remapped"] == 1
    assert integrity.verify(store, catalog, tenant="acme").ok
    clean_store = type(store)(tmp_path / "clean")
    clean_catalog = Catalog(f"sqlite:///{tmp_path / 'clean.db'}")
    notes_lifecycle(clean_store, clean_catalog)
    clean = erasure.forget(clean_store, clean_catalog, name, client_id="n-1")
    assert without_times(receipt) == without_times(clean)


# -- two runs of one request ------------------------------------------------------------------------


def _count_puts(store) -> tuple[Counter, object]:
    import threading

    puts, lock = Counter(), threading.Lock()
    for name in ("upload_file", "put_bytes"):
        original = getattr(store, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            with lock:
                puts[args[1] if _name == "upload_file" else args[0]] += 1
            return _original(*args, **kwargs)
        setattr(store, name, counted)
    return puts, lock


def test_two_concurrent_runs_of_one_request_erase_each_object_once(local_store, postgresql_catalog):
    import threading
    import time

    store, catalog = local_store, postgresql_catalog
    lifecycle(store, catalog)
    puts, _ = _count_puts(store)
    results, errors = [], []
    started = threading.Barrier(2)

    def slow(point):  # every step takes a little while: the two runs surely overlap
        time.sleep(0.02)

    def run():
        started.wait()
        try:
            results.append(erasure.forget(store, catalog, subject(), client_id="dsr-9", checkpoint=slow, wait=300))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(bool(r.get("already_done")) for r in results) == [False, True]
    first, second = sorted(results, key=lambda r: bool(r.get("already_done")))
    assert without_times(first) == without_times(second)
    assert {k: n for k, n in puts.items() if n != 1} == {}  # every object (and the receipt) written once
    receipts = [k for k in listing(store) if k.startswith("_platform/erasure/acme/")]
    assert receipts == [erasure.receipt_key("acme", first["request_id"])]
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
    state = erasure.request_state(catalog, first["request_id"])
    assert state["state"] == erasure.DONE and state["claimed_by"] is None


def test_a_crashed_runs_lease_is_taken_over_once_it_runs_out(local_store, postgresql_catalog):
    from data_platform.catalog.schema import erasure_requests as er

    store, catalog = local_store, postgresql_catalog
    lifecycle(store, catalog)
    request_id = erasure.request_id_for(subject(), "dsr-10")

    def crash(point):
        if point.startswith("after_upload:"):
            raise Crash(point)
    with pytest.raises(Crash):
        erasure.forget(store, catalog, subject(), client_id="dsr-10", checkpoint=crash)

    def hold(until):  # what a run killed without a chance to let go leaves behind
        with catalog.engine.begin() as conn:
            conn.execute(er.update().where(er.c.request_id == request_id).values(
                claimed_by="erasure@dead-host:4242:0000", claimed_until=until))
    hold(datetime.now(UTC).replace(tzinfo=None) + erasure.LEASE)
    with pytest.raises(erasure.ErasureBusy, match="being run by erasure@dead-host:4242"):
        erasure.forget(store, catalog, subject(), client_id="dsr-10", wait=0.5)
    assert erasure.request_state(catalog, request_id)["state"] == erasure.STARTED

    # A run that finds its lease taken by another stops before it records anything more.
    def steal(point):
        if point.startswith("after_data:"):
            hold(datetime.now(UTC).replace(tzinfo=None) + erasure.LEASE)
    hold(datetime.now(UTC).replace(tzinfo=None) - erasure.LEASE)  # the dead run's lease ran out
    with pytest.raises(erasure.ErasureError, match="lost its lease"):
        erasure.forget(store, catalog, subject(), client_id="dsr-10", checkpoint=steal)

    hold(datetime.now(UTC).replace(tzinfo=None) - erasure.LEASE)
    receipt = erasure.forget(store, catalog, subject(), client_id="dsr-10")
    assert receipt["request_id"] == request_id and "already_done" not in receipt
    assert [k for k in tenant_objects(store, "acme") if holds_alice(store, k)] == []
    assert integrity.verify(store, catalog, tenant="acme").ok

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
    lifecycle(store, catalog)
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

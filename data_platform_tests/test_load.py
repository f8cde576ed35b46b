"""Load: 50 uploads landing while ingestion, training-set builds and cleanup passes run at
once, on PostgreSQL and the S3 endpoint. Afterwards every upload is in exactly one state
that agrees with everything else: each used or archived file in exactly one complete
training set, no fresh file in any, every data object where the catalog says, every row
accounted for, and `verify` clean."""

import threading
import time

import sqlalchemy as sa

from data_platform import integrity
from data_platform import training_sets as tsets
from data_platform.catalog import ARCHIVED, COMPLETE, FRESH, INGESTED, LANDING, USED, Catalog, NoFreshData, utcnow
from data_platform.catalog.schema import training_set_files
from data_platform.contracts import ContractRegistry
from data_platform.retention import RetentionDefaults, apply_cleanup, plan_cleanup
from data_platform.storage import S3ObjectStore
from data_platform_tests.support import ingest_everything, jsonl

UPLOADS, ROWS = 50, 20
ARCHIVE_AT_ONCE = RetentionDefaults(archive_after_uses=1)  # used files archived by the next pass


def test_fifty_uploads_while_ingestion_training_sets_and_cleanup_run_at_once(s3_store, pg_catalog_url):
    landed = threading.Event()
    errors: list[BaseException] = []

    def worker(fn):
        def run():
            # Each worker is its own process in production: its own clients and pool.
            store, catalog = S3ObjectStore(s3_store.bucket, "root"), Catalog(pg_catalog_url)
            try:
                while True:
                    done = landed.is_set() and not catalog.list_uploads(state=LANDING)
                    fn(store, catalog)
                    if done:
                        return
                    time.sleep(0.05)
            except BaseException as err:  # noqa: BLE001 - asserted below
                errors.append(err)
        return threading.Thread(target=run)

    def ingest(store, catalog):
        _, _, failures = ingest_everything(store, catalog, claimer=f"ingest-{threading.get_ident()}")
        assert not failures, failures

    def build(store, catalog):
        try:
            tsets.create_training_set(store, catalog, tsets.TrainingSetRequest("acme", max_rows=5 * ROWS),
                                      actor="trainer")
        except NoFreshData:
            pass

    def clean(store, catalog):
        plan = plan_cleanup(catalog, store, ContractRegistry(None, store), now=utcnow(),
                            defaults=ARCHIVE_AT_ONCE)
        apply_cleanup(plan, catalog, store, actor="cleanup")

    threads = [worker(ingest), worker(ingest), worker(build), worker(clean)]
    for t in threads:
        t.start()
    for i in range(UPLOADS):
        rows = [{"id": f"{i}-{j}", "n": j, "text": f"upload {i} row {j}"} for j in range(ROWS)]
        s3_store.put_bytes(f"landing/acme/events/u{i:02d}.jsonl", jsonl(rows))
        time.sleep(0.02)
    landed.set()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]

    catalog = Catalog(pg_catalog_url)
    # The three really ran at once: sets were built and files archived while uploads landed.
    assert len(catalog.training_sets(tenant="acme")) >= 3
    assert any(u.state == ARCHIVED for u in catalog.list_uploads(tenant="acme"))
    build(s3_store, catalog)  # whatever was still fresh
    uploads = catalog.list_uploads(tenant="acme")
    assert len(uploads) == UPLOADS and {u.state for u in uploads} <= {FRESH, USED, ARCHIVED}
    assert sum(u.rows for u in uploads) == UPLOADS * ROWS  # every row, once
    with catalog.engine.connect() as conn:
        held = conn.execute(sa.select(training_set_files.c.upload_id)).scalars().all()
    assert len(held) == len(set(held))  # no file in two training sets
    assert set(held) == {u.id for u in uploads if u.state in (USED, ARCHIVED)}
    assert all(ts.state == COMPLETE for ts in catalog.training_sets(tenant="acme"))
    assert sum(ts.rows for ts in catalog.training_sets(tenant="acme")) == sum(
        u.rows for u in uploads if u.state in (USED, ARCHIVED))
    for u in uploads:
        assert u.state in INGESTED and s3_store.exists(u.object_key)
    report = integrity.verify(s3_store, catalog, tenant="acme")
    assert report.ok, report.as_dict()

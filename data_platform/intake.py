"""Reconcile the landing inbox with the upload ledger (what the sensor runs each tick).

The ledger, not a listing cursor, records what has been seen: every object version in
landing (key + ETag + LastModified) gets exactly one ledger row, whatever order keys
arrive in, however many there are, and however often a tick is retried. A full,
paginated listing of `landing/` stays cheap because landing empties as uploads are
ingested.
"""

import logging
from dataclasses import dataclass, field

from data_platform import layout
from data_platform.catalog import LANDING, SETTLED, Catalog, Identity
from data_platform.ingestion import quarantine_invalid_key
from data_platform.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class ScanResult:
    listed: int = 0
    registered: int = 0
    invalid_keys: int = 0
    leftovers_removed: int = 0
    # (tenant, dataset) -> (newest pending upload id, attempts so far)
    pending: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # objects to retry next tick


def scan_landing(store: ObjectStore, catalog: Catalog, *, actor: str = "sensor") -> ScanResult:
    result = ScanResult()
    objects = [o for o in store.list(layout.landing_prefix()) if not o.is_folder_marker]
    result.listed = len(objects)
    identities = {Identity(o.key, o.etag, o.size, o.last_modified): o for o in objects}
    known = catalog.known_uploads(list(identities))

    new, leftovers = [], []
    for ident in identities:
        upload = known.get(ident.db_key)
        if upload is None:
            new.append(ident)
        elif upload.state in SETTLED:
            # Ingested (or quarantined) but the landing delete did not happen: a crash
            # between the catalog commit and the delete. Finish the job.
            leftovers.append(upload)

    to_register = []
    for ident in new:
        try:
            parsed = layout.LandingKey.parse(ident.landing_key)
            to_register.append((ident, parsed.tenant, parsed.dataset))
        except layout.InvalidKey:
            to_register.append((ident, None, None))
    registered = catalog.register(to_register, actor=actor)
    result.registered = len(new)

    # Invalid keys (new ones, and any a crashed tick left in landing) go to quarantine.
    for upload in registered + [u for u in known.values() if u.state == LANDING and u.tenant is None]:
        if upload.tenant is None and upload.state == LANDING:
            try:
                layout.LandingKey.parse(upload.landing_key)
                why = "key does not fit landing/{tenant}/{dataset}/{name}"
            except layout.InvalidKey as err:
                why = str(err)
            try:
                quarantine_invalid_key(store, catalog, upload, why, actor)
                result.invalid_keys += 1
            except Exception as err:  # noqa: BLE001 - one bad object must not stop every tick
                log.warning("could not quarantine %r yet (%s); retrying next tick", upload.landing_key, err)
                result.errors.append(f"{upload.landing_key!r}: {type(err).__name__}: {err}")

    for upload in leftovers:
        if store.delete_if_unchanged(upload.landing_key, upload.etag):
            result.leftovers_removed += 1

    result.pending = catalog.pending_partitions()
    return result

"""Erasure (GDPR art. 17) from the UI: the `erasure` asset runs one request
(data_platform.erasure) and shows its receipt's figures.

The raw value must never land in run config, the event log or the UI, so the config
names where to read it at run time: an environment variable of the run's process
(`subject_env_var`, by default DATA_PLATFORM_ERASURE_SUBJECT) or a file
(`subject_file`, e.g. a mounted secret). Only the request id, counts and object keys
appear in the metadata; the receipt holds no raw value nor pseudonym.
"""

import os
from pathlib import Path

import dagster as dg

from data_platform import erasure as core
from data_platform.config import Settings
from data_platform.defs.resources import CatalogResource, ObjectStoreResource
from data_platform.privacy import load_pseudonym_key

DEFAULT_SUBJECT_ENV = "DATA_PLATFORM_ERASURE_SUBJECT"
KEYS_SHOWN = 50


class ErasureConfig(dg.Config):
    tenant: str
    subject_env_var: str = DEFAULT_SUBJECT_ENV  # the NAME of the variable holding the value, never the value
    subject_file: str | None = None  # or a file holding it (wins over the variable)
    kind: str | None = None  # email | phone | ip | name; default every kind
    column: str | None = None
    request_id: str | None = None  # the client's id: the same id again returns the same receipt
    dry_run: bool = False


def _subject_value(config: ErasureConfig) -> str:
    if config.subject_file:
        return Path(config.subject_file).read_text(encoding="utf-8")
    value = os.environ.get(config.subject_env_var)
    if not value:
        raise dg.Failure(f"no subject: set {config.subject_env_var} in the run's environment or give subject_file")
    return value


@dg.asset(
    group_name="governance", kinds={"s3", "python"}, owners=["team:data-platform"],
    description="Right to erasure: one data subject erased from every object of a tenant (data, archive, "
    "training sets, feature versions, exports, quarantine, index runs), with a receipt under _platform/erasure/.",
)
def erasure(context: dg.AssetExecutionContext, config: ErasureConfig, object_store: ObjectStoreResource,
            catalog: CatalogResource) -> dg.MaterializeResult:
    try:
        subject = core.Subject(load_pseudonym_key(Settings.from_env()), config.tenant, _subject_value(config),
                               kinds=[config.kind] if config.kind else None, column=config.column)
        receipt = core.forget(object_store.get_store(), catalog.get_catalog(), subject, client_id=config.request_id,
                              dry_run=config.dry_run, actor=f"dagster:{context.run_id}")
    except core.ErasureError as err:
        raise dg.Failure(str(err)) from None
    counts = receipt["counts"]
    changed = [e["key"] for e in receipt["rewritten"] + receipt["deleted"]]
    return dg.MaterializeResult(metadata={
        "request_id": receipt["request_id"], "tenant": receipt["tenant"], "dry_run": receipt["dry_run"],
        "already_done": bool(receipt.get("already_done")),
        "receipt_key": None if receipt["dry_run"] else core.receipt_key(receipt["tenant"], receipt["request_id"]),
        **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
        "objects": dg.MetadataValue.json(changed[:KEYS_SHOWN]),
        "not_rewritten": dg.MetadataValue.json(receipt["not_rewritten"][:KEYS_SHOWN]),
    })


erasure_job = dg.define_asset_job("erasure_job", selection=dg.AssetSelection.assets(erasure),
                                  description="Erase one data subject of a tenant (config names where the value is).")

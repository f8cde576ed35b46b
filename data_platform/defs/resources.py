"""One resource per external system. Each reads its configuration when a run or tick
starts (never at import), with the embedded defaults of `data_platform.config`, so the
same definitions run on a laptop and against MinIO/S3 + PostgreSQL."""

import functools

import dagster as dg

from data_platform.catalog import Catalog
from data_platform.config import Settings
from data_platform.storage import ObjectStore, open_store


class ObjectStoreResource(dg.ConfigurableResource):
    """The object store: a local directory or an S3-compatible bucket.

    Left empty, `storage_url` comes from DATA_PLATFORM_STORAGE_URL (or the embedded
    default); endpoint and credentials always come from boto3's standard variables.
    """

    storage_url: str | None = None

    def get_store(self) -> ObjectStore:
        return _store(self.storage_url or Settings.from_env().storage_url)


class CatalogResource(dg.ConfigurableResource):
    """The catalog database. Left empty, the URL comes from DATA_PLATFORM_CATALOG_URL
    (it may hold a password, so it is not shown as config in the UI)."""

    catalog_url: str | None = None

    def get_catalog(self) -> Catalog:
        return _catalog(self.catalog_url or Settings.from_env().catalog_url)


# One client and one connection pool per process, whatever number of assets ask.
@functools.cache
def _store(url: str) -> ObjectStore:
    return open_store(url)


@functools.cache
def _catalog(url: str) -> Catalog:
    return Catalog(url)

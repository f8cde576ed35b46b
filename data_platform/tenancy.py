"""Tenant isolation, in one place.

A run for one tenant sees the platform through a scope: a store that refuses any key
outside the tenant's part of the layout, and a catalog that refuses any call it cannot
attribute to the tenant and any answer that holds another tenant's row. Every core
entry point that works for a tenant (ingestion, training sets, exports, features,
erasure) scopes the store and catalog it is given before doing anything, so neither a
caller nor a bug further down (a key built from the wrong name, a query missing its
filter) can reach another tenant's objects or rows. Platform jobs (cleanup, backups,
integrity, the sensor) work across tenants with the unscoped objects. Erasure needs one
thing outside its scope, the originals of the tenant's uploads rejected as `invalid_key`
(under `quarantine/_invalid/`, which belongs to no tenant): it gets them through
`InvalidKeyOriginals`, a view that reads, lists and deletes those and nothing else.
"""

import inspect
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs
import sqlalchemy as sa

from data_platform import layout
from data_platform.catalog import QUARANTINED, Catalog, Identity, RetentionMove, Upload
from data_platform.catalog import schema as tables
from data_platform.storage import IncompleteWrite, ObjectInfo, ObjectStore, ObjectWriter, check_store_key

# Areas whose second segment is the tenant: `{area}/{tenant}/...`.
_TENANT_AREAS = (layout.LANDING, layout.QUARANTINE, layout.DATA, layout.ARCHIVE, layout.TRAINING_SETS,
                 layout.FEATURES, layout.EXPORTS)
# Under `_platform/`: where the tenant segment is, for the platform's per-tenant objects.
_PLATFORM_TENANT_SEGMENT = {"contracts": 2, "erasure": 2, "indexes": 3}


class TenantViolation(PermissionError):
    """A tenant-scoped run asked for something outside its tenant."""


def tenant_of_key(key: str) -> str | None:
    """The tenant owning `key` in the object layout; None for platform-owned keys
    (backups, `quarantine/_invalid/`, Dagster's asset outputs) and keys outside it.

    A key only belongs to a tenant when the tenant segment is complete (followed by
    `/`), so the prefix `data/ac` belongs to nobody rather than to `acme`.
    """
    parts = key.split("/")
    if parts[0] in _TENANT_AREAS:
        at = 1
    elif parts[0] == layout.PLATFORM and len(parts) > 1 and parts[1] in _PLATFORM_TENANT_SEGMENT:
        at = _PLATFORM_TENANT_SEGMENT[parts[1]]
    else:
        return None
    if len(parts) <= at + 1 or not layout.is_valid_name(parts[at]):
        return None
    return parts[at]


def scoped(store: ObjectStore, catalog: Catalog, tenant: str) -> tuple["TenantStore", "TenantCatalog"]:
    return scope_store(store, tenant), scope_catalog(catalog, tenant)


def scope_store(store: ObjectStore, tenant: str) -> "TenantStore":
    """`store` as `tenant` sees it. Scoping again to the same tenant is a no-op; to
    another tenant, a violation (a scoped run never widens or switches its scope)."""
    if isinstance(store, TenantStore):
        store.check_tenant(tenant)
        return store
    return TenantStore(store, tenant)


def scope_catalog(catalog: Catalog, tenant: str) -> "TenantCatalog":
    if isinstance(catalog, TenantCatalog):
        catalog.check_tenant(tenant)
        return catalog
    return TenantCatalog(catalog, tenant)


class _Scoped:
    tenant: str

    def check_tenant(self, tenant: str | None) -> None:
        if tenant != self.tenant:
            raise TenantViolation(f"a run for tenant {self.tenant!r} cannot act for {tenant!r}")


# -- objects -------------------------------------------------------------------------------------------


class TenantStore(_Scoped, ObjectStore):
    """An object store limited to one tenant's keys (see `tenant_of_key`)."""

    def __init__(self, inner: ObjectStore, tenant: str):
        self.inner = inner
        self.tenant = layout.check_name("tenant", tenant)
        self.url = inner.url
        self._fs: pafs.FileSystem | None = None

    def own(self, key: str) -> str:
        """`key` if it is the tenant's; a key that is not in normal form (`..`, `//`)
        is refused before its owner is read, since a store may resolve it elsewhere."""
        try:
            layout.check_relative_path(check_store_key(key))
        except ValueError as err:
            raise TenantViolation(f"key {key!r}: {err}") from None
        if tenant_of_key(key) != self.tenant:
            raise TenantViolation(f"key {key!r} is outside tenant {self.tenant!r}")
        return key

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.own(prefix + "x" if prefix.endswith("/") else prefix + "/x")
        # The listing is filtered as well: a store whose own prefix rules differ (an
        # S3 prefix, a symlink) must not hand back a neighbour's object.
        return (info for info in self.inner.list(prefix) if tenant_of_key(info.key) == self.tenant)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(self.own(key))

    @contextmanager
    def open_read(self, key: str, *, if_etag: str | None = None):
        with self.inner.open_read(self.own(key), if_etag=if_etag) as opened:
            yield opened

    def download(self, key: str, dst, *, if_etag: str | None = None) -> tuple[ObjectInfo, str]:
        return self.inner.download(self.own(key), dst, if_etag=if_etag)

    def upload_file(self, path: str | Path, key: str, progress: Callable[[int], None] | None = None) -> None:
        self.inner.upload_file(path, self.own(key), progress)

    def open_write(self, key: str) -> ObjectWriter:
        return self.inner.open_write(self.own(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(self.own(key), data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(self.own(key))

    def copy(self, src: str, dst: str) -> None:
        self.inner.copy(self.own(src), self.own(dst))

    def delete(self, key: str) -> None:
        self.inner.delete(self.own(key))

    def delete_if_unchanged(self, key: str, etag: str) -> bool:
        return self.inner.delete_if_unchanged(self.own(key), etag)

    def delete_many(self, keys: Iterable[str]) -> None:
        self.inner.delete_many([self.own(key) for key in keys])

    def incomplete_writes(self) -> Iterator[IncompleteWrite]:
        return (w for w in self.inner.incomplete_writes() if tenant_of_key(w.key) == self.tenant)

    def abort_write(self, write: IncompleteWrite) -> None:
        self.own(write.key)
        self.inner.abort_write(write)

    def fs_path(self, key: str) -> str:
        return self.inner.fs_path(self.own(key))

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The inner pyarrow filesystem behind a handler that checks every path it is
        given, so a reader handed this filesystem cannot open a neighbour's file."""
        if self._fs is None:
            self._fs = pafs.PyFileSystem(_ReadOnlyTenantPaths(self))
        return self._fs


class _ReadOnlyTenantPaths(pafs.FileSystemHandler):
    """pyarrow's view of a TenantStore: reads of the tenant's objects only (the
    platform writes through `open_write`, never through pyarrow's filesystem)."""

    def __init__(self, store: TenantStore):
        self.store, self.inner = store, store.inner.filesystem
        probe = "p"
        self.base = store.inner.fs_path(probe)[:-len(probe)]

    def _own(self, path: str) -> str:
        if not path.startswith(self.base):
            raise TenantViolation(f"path {path!r} is outside the store")
        self.store.own(path[len(self.base):])
        return path

    def get_type_name(self) -> str:
        return f"tenant-{self.store.tenant}"

    def equals(self, other) -> bool:
        return isinstance(other, _ReadOnlyTenantPaths) and other.store is self.store

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self.inner.get_file_info([self._own(p) for p in paths])

    def get_file_info_selector(self, selector):
        self._own(selector.base_dir.rstrip("/") + "/x")
        return self.inner.get_file_info(selector)

    def open_input_file(self, path):
        return self.inner.open_input_file(self._own(path))

    def open_input_stream(self, path):
        return self.inner.open_input_stream(self._own(path))

    def _refuse(self, *_, **__):
        raise TenantViolation("writes go through the object store, not pyarrow's filesystem")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _refuse
    move = copy_file = open_output_stream = open_append_stream = _refuse


# -- catalog rows ---------------------------------------------------------------------------------------

# Id parameters the scope resolves to their tenant before the call.
_OWNER_OF_ID = {
    "upload_id": (tables.uploads.c.id, tables.uploads.c.tenant),
    "upload_ids": (tables.uploads.c.id, tables.uploads.c.tenant),
    "set_id": (tables.training_sets.c.id, tables.training_sets.c.tenant),
    "dataset_id": (tables.datasets.c.id, tables.datasets.c.tenant),
}
_KEY_PARAMETERS = ("key", "keys", "object_key")


class TenantCatalog(_Scoped):
    """The catalog as one tenant sees it.

    Each call is attributed to the tenant through its arguments: a `tenant` argument
    (left out, it is filled in; another tenant is refused), records that carry a
    tenant (uploads, training sets, feature versions...), ids resolved to their owner,
    and object keys. A call with nothing to attribute (a platform-wide statistic, raw
    SQL) is refused. Whatever it returns is checked too: a row of another tenant in an
    answer raises rather than leaks.
    """

    def __init__(self, catalog: Catalog, tenant: str):
        self.catalog = catalog
        self.tenant = layout.check_name("tenant", tenant)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.catalog, name)
        if name == "engine" or name.startswith("_") or not callable(attr):
            raise TenantViolation(f"catalog.{name} is not open to tenant-scoped runs")
        signature = inspect.signature(attr)

        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            if not self._attribute(name, bound):
                raise TenantViolation(f"catalog.{name} cannot be scoped to a tenant")
            result = attr(*bound.args, **bound.kwargs)
            self._check_answer(name, result)
            return result

        call.__name__ = name
        return call

    def _attribute(self, name: str, bound: inspect.BoundArguments) -> bool:
        """Check every argument that names a tenant; whether any did."""
        attributed = False
        if "tenant" in bound.signature.parameters:
            if bound.arguments.get("tenant") is None:
                bound.arguments["tenant"] = self.tenant
            self.check_tenant(bound.arguments["tenant"])
            attributed = True
        for param, value in bound.arguments.items():
            if param in _OWNER_OF_ID:
                if value is None:
                    raise TenantViolation(f"catalog.{name} without {param} would span tenants")
                ids = list(value) if isinstance(value, Iterable) else [value]
                self._check_owners(param, ids)
                attributed = True
            elif param in _KEY_PARAMETERS and value is not None:
                for key in [value] if isinstance(value, str) else value:
                    self._check_key(key)
                attributed = True
            elif param != "tenant":
                attributed |= self._check_records(value)
        return attributed

    def _check_owners(self, param: str, ids: list) -> None:
        id_column, tenant_column = _OWNER_OF_ID[param]
        if not ids:
            return
        with self.catalog.engine.connect() as conn:
            owners = {row[0] for row in conn.execute(sa.select(tenant_column).where(id_column.in_(ids)).distinct())}
        for owner in owners:
            self.check_tenant(owner)

    def _check_key(self, key: str) -> None:
        if tenant_of_key(key) != self.tenant:
            raise TenantViolation(f"key {key!r} is outside tenant {self.tenant!r}")

    def _check_records(self, value: Any) -> bool:
        """Check records passed as arguments (alone, or in lists and tuples)."""
        if isinstance(value, Identity):
            self._check_key(value.landing_key)
            return True
        if is_dataclass(value) and hasattr(value, "tenant"):
            self.check_tenant(value.tenant)
            return True
        if isinstance(value, (list, tuple)) and not isinstance(value, str):
            found = False
            for item in value:
                if isinstance(item, (list, tuple)) or is_dataclass(item):
                    found |= self._check_records(item)
            return found
        if is_dataclass(value) and hasattr(value, "upload_id"):  # RetentionMove and the like
            self._check_owners("upload_id", [value.upload_id])
            return True
        return False

    def _check_answer(self, name: str, value: Any) -> None:
        tenant = _tenant_of_record(value)
        if tenant is not _NO_TENANT:
            if tenant != self.tenant:
                raise TenantViolation(f"catalog.{name} answered with a row of another tenant")
            return
        if isinstance(value, Mapping):
            for item in value.values():
                self._check_answer(name, item)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                self._check_answer(name, item)


_NO_TENANT = object()


def _tenant_of_record(value: Any) -> Any:
    """The tenant a returned record carries, or _NO_TENANT for anything else."""
    if isinstance(value, sa.Row):
        return value._mapping.get("tenant", _NO_TENANT)
    if (is_dataclass(value) or isinstance(value, tuple) and hasattr(value, "_fields")) and hasattr(value, "tenant"):
        return value.tenant
    return _NO_TENANT


# -- erasure's one view outside the scope ----------------------------------------------------------------


class InvalidKeyOriginals:
    """What an erasure for `tenant` may reach of `quarantine/_invalid/`, and no more.

    An upload rejected as `invalid_key` has no tenant: its key may name none, so its bytes
    go under `quarantine/_invalid/upload-{id}/`, which belongs to nobody and which the
    tenant's scope refuses. Yet one uploaded under `landing/{tenant}/` was put there by
    someone allowed to write for the tenant: its raw bytes are the tenant's, and an erasure
    of one of the tenant's subjects must search them. So the view holds exactly those:

    - an upload is the tenant's when the catalog says it has no tenant and its landing key
      lies under `landing/{tenant}/` (neither changes once registered);
    - only keys under such an upload's own prefix (derived from its id, in normal form) can
      be listed, read and deleted; nothing can be written, copied or moved;
    - only such an upload's row can be read and taken from `quarantined` to `deleted` (the
      erasure's tombstone);
    - uploads whose landing key names no tenant are named (id and prefix, for the receipt
      and an operator), never read: their bytes may be anyone's. Those naming another
      tenant are that tenant's erasure's business.

    It is built from the platform's own (unscoped) store and catalog, never from a scope:
    a tenant-scoped run cannot widen itself into it.
    """

    def __init__(self, store: ObjectStore, catalog: Catalog, tenant: str):
        if isinstance(store, TenantStore) or isinstance(catalog, TenantCatalog):
            raise TenantViolation("a tenant-scoped run cannot open the originals of invalid keys")
        self._store, self._catalog = store, catalog
        self.tenant = layout.check_name("tenant", tenant)
        self.landing = f"{layout.LANDING}/{self.tenant}/"
        self._theirs: set[int] = set()  # upload ids found to be the tenant's (that never changes)

    def uploads(self) -> list[Upload]:
        """The tenant's quarantined invalid-key uploads, by id."""
        found = [u for u in self._catalog.invalid_key_uploads() if self._is_tenants(u)]
        self._theirs.update(u.id for u in found)
        return found

    def unattributed(self) -> list[tuple[int, str]]:
        """(id, prefix) of the quarantined invalid-key uploads whose landing key names no tenant."""
        return [(u.id, u.object_key) for u in self._catalog.invalid_key_uploads()
                if _named_tenant(u.landing_key) is None]

    def get(self, upload_id: int) -> Upload | None:
        u = self._catalog.get(upload_id)
        if u is not None and not self._is_tenants(u):
            raise TenantViolation(f"upload {upload_id} is not an invalid-key upload from {self.landing}")
        return u

    def delete_uploads(self, moves: Iterable[RetentionMove], *, actor: str):
        moves = list(moves)
        for move in moves:
            if move.from_state != QUARANTINED or self.get(move.upload_id) is None:
                raise TenantViolation(f"upload {move.upload_id}: only a quarantined invalid-key upload of "
                                      f"{self.tenant!r} can be deleted here")
        return self._catalog.delete_uploads(moves, actor=actor)

    def own(self, key: str) -> str:
        """`key` if it lies under the prefix of one of the tenant's invalid-key uploads."""
        try:
            layout.check_relative_path(check_store_key(key))
        except ValueError as err:
            raise TenantViolation(f"key {key!r}: {err}") from None
        upload_id = layout.upload_id_in_key(key)
        if upload_id is None or not key.startswith(layout.quarantine_prefix(None, None, upload_id)):
            raise TenantViolation(f"key {key!r} is not under an invalid-key upload's prefix")
        if upload_id not in self._theirs:
            if self.get(upload_id) is None:
                raise TenantViolation(f"key {key!r} belongs to no upload")
            self._theirs.add(upload_id)
        return key

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.own(prefix + "x" if prefix.endswith("/") else prefix + "/x")
        return (info for info in self._store.list(prefix) if self._owns(info.key))

    def download(self, key: str, dst, *, if_etag: str | None = None) -> tuple[ObjectInfo, str]:
        return self._store.download(self.own(key), dst, if_etag=if_etag)

    def delete_many(self, keys: Iterable[str]) -> None:
        self._store.delete_many([self.own(key) for key in keys])

    def _is_tenants(self, u: Upload) -> bool:
        return u.tenant is None and u.landing_key.startswith(self.landing)

    def _owns(self, key: str) -> bool:
        try:
            self.own(key)
        except TenantViolation:
            return False
        return True


def _named_tenant(landing_key: str) -> str | None:
    """The tenant a landing key names (`landing/{tenant}/...`), if its segment is a valid name."""
    parts = landing_key.split("/")
    if len(parts) >= 3 and parts[0] == layout.LANDING and layout.is_valid_name(parts[1]):
        return parts[1]
    return None

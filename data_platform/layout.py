"""The object layout under the storage root (PRODUCT.md, "Object layout").

Every key the platform reads or writes is built or parsed here, so that no key can
escape its prefix: names are checked against one pattern and paths against a list
of forbidden forms before anything touches the store.
"""

import hashlib
import re
from dataclasses import dataclass
from datetime import date

LANDING = "landing"
QUARANTINE = "quarantine"
DATA = "data"
ARCHIVE = "archive"
PLATFORM = "_platform"

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Control characters (C0, DEL, C1) and the backslash have no place in a key.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
MAX_KEY_BYTES = 1024  # S3's own limit


class InvalidKey(ValueError):
    """A key that does not fit the layout; `str(err)` says why, for the report."""


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(name))


def check_name(kind: str, name: str) -> str:
    if not is_valid_name(name):
        raise InvalidKey(f"{kind} {name!r} does not match {NAME_PATTERN.pattern}")
    return name


def check_relative_path(path: str) -> str:
    """A relative object path below some prefix: no traversal, no absolute, no junk."""
    if not path:
        raise InvalidKey("empty path")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey("key longer than 1024 bytes")
    if _FORBIDDEN_CHARS.search(path):
        raise InvalidKey("control character or backslash in key")
    if path.startswith("/"):
        raise InvalidKey("absolute path")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidKey("empty, '.' or '..' path segment")
    return path


@dataclass(frozen=True)
class LandingKey:
    """`landing/{tenant}/{dataset}/{path}` parsed and checked."""

    tenant: str
    dataset: str
    path: str

    @property
    def key(self) -> str:
        return f"{LANDING}/{self.tenant}/{self.dataset}/{self.path}"

    @property
    def partition(self) -> str:
        return partition_key(self.tenant, self.dataset)

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, key: str) -> "LandingKey":
        check_relative_path(key)
        parts = key.split("/", 3)
        if len(parts) < 4 or parts[0] != LANDING:
            raise InvalidKey("expected landing/{tenant}/{dataset}/{name}")
        _, tenant, dataset, path = parts
        check_name("tenant", tenant)
        check_name("dataset", dataset)
        return cls(tenant, dataset, path)


def partition_key(tenant: str, dataset: str) -> str:
    """Dagster partition of a tenant's dataset. '/' cannot occur in either name."""
    return f"{tenant}/{dataset}"


def split_partition_key(partition: str) -> tuple[str, str]:
    tenant, _, dataset = partition.partition("/")
    return check_name("tenant", tenant), check_name("dataset", dataset)


def landing_prefix(tenant: str | None = None, dataset: str | None = None) -> str:
    parts = [LANDING] + [check_name("name", p) for p in (tenant, dataset) if p]
    return "/".join(parts) + "/"


def data_key(tenant: str, dataset: str, upload_id: int) -> str:
    """Deterministic per upload, so a re-run overwrites rather than duplicates."""
    return f"{DATA}/{check_name('tenant', tenant)}/{check_name('dataset', dataset)}/upload-{upload_id:010d}.parquet"


def archive_key(tenant: str, dataset: str, upload_id: int) -> str:
    """Where retention moves an upload's data when it is archived (same name as under data/)."""
    return f"{ARCHIVE}/{check_name('tenant', tenant)}/{check_name('dataset', dataset)}/upload-{upload_id:010d}.parquet"


# The upload id in a key under data/, archive/, _platform/indexes/ or quarantine/.
UPLOAD_ID_IN_KEY = re.compile(r"/upload-(\d{10})(?:\.parquet$|/)")


def upload_id_in_key(key: str) -> int | None:
    found = UPLOAD_ID_IN_KEY.search(key)
    return int(found.group(1)) if found else None


TRAINING_SETS = "training_sets"


def training_set_prefix(tenant: str, name: str, version: int) -> str:
    """One immutable snapshot; versions are zero-padded so they list in order."""
    return f"{TRAINING_SETS}/{check_name('tenant', tenant)}/{check_name('training set', name)}/v{version:04d}/"


EXPORTS = "exports"
WEEK_PATTERN = re.compile(r"(\d{4})-W(\d{2})")


def check_week(week: str) -> str:
    """An ISO week key, `2026-W47`: the week must exist (W53 only in long years)."""
    found = WEEK_PATTERN.fullmatch(week) if isinstance(week, str) else None
    if found:
        try:
            date.fromisocalendar(int(found.group(1)), int(found.group(2)), 1)
            return week
        except ValueError:
            pass
    raise InvalidKey(f"week {week!r} is not an ISO week such as 2026-W47")


def export_prefix(tenant: str, week: str) -> str:
    """One tenant's export of one ISO week; `manifest.json` there names the current parts."""
    return f"{EXPORTS}/{check_name('tenant', tenant)}/{check_week(week)}/"


FEATURES = "features"


def feature_version_prefix(tenant: str, name: str, version: int) -> str:
    """One immutable feature-table version; zero-padded so versions list in order."""
    return f"{FEATURES}/{check_name('tenant', tenant)}/{check_name('feature table', name)}/v{version:04d}/"


INDEX_KINDS = ("rows", "near_dup", "subjects")


def index_run_key(kind: str, tenant: str, dataset: str, upload_id: int) -> str:
    """One upload's run of a dataset's persistent index (see data_platform.indexes)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    return (f"{PLATFORM}/indexes/{kind}/{check_name('tenant', tenant)}/{check_name('dataset', dataset)}/"
            f"upload-{upload_id:010d}.parquet")


def quarantine_prefix(tenant: str | None, dataset: str | None, upload_id: int) -> str:
    """Where an upload's rejected bytes and report go.

    Keys rejected as `invalid_key` may have no valid tenant: they go under
    `quarantine/_invalid/`, which no tenant name can collide with.
    """
    if tenant and dataset and is_valid_name(tenant) and is_valid_name(dataset):
        return f"{QUARANTINE}/{tenant}/{dataset}/upload-{upload_id:010d}/"
    return f"{QUARANTINE}/_invalid/upload-{upload_id:010d}/"


def safe_original_name(landing_key: str) -> str:
    """A file name under which an upload's original bytes can be kept in quarantine.

    Valid keys keep their path below the dataset; any other key is reduced to a digest
    plus its last readable characters, so it cannot escape the quarantine prefix.
    """
    try:
        return "original/" + LandingKey.parse(landing_key).path
    except InvalidKey:
        digest = hashlib.sha256(landing_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        tail = re.sub(r"[^A-Za-z0-9._-]", "_", landing_key.rsplit("/", 1)[-1])[-64:].lstrip(".")
        return f"original/{digest}-{tail or 'object'}"

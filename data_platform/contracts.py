"""Per-dataset data contracts, written in YAML by the tenant or the platform team.

A contract says what a dataset's rows must look like and how the platform treats
them. It lives in one of two places (the first that exists wins):

  {contracts_dir}/{tenant}/{dataset}.yaml         (or .yml; the directory is
                                                   DATA_PLATFORM_CONTRACTS_DIR,
                                                   default $DATA_PLATFORM_HOME/contracts)
  _platform/contracts/{tenant}/{dataset}.yaml     (or .yml) in the object store

A dataset without a contract still ingests; a contract that exists but is invalid
is an error (`ContractError`), never silently ignored.

File format (a public interface; every key not listed here is rejected):

    version: 3                     # required, int or string; recorded with every ingested file
    description: Support tickets   # optional
    columns:                       # required, non-empty mapping: name -> spec
      record_id: {type: string, required: true, regex: "^rec-"}
      user_email: {type: string, pii: email}
      category: {type: string, allowed: [billing, outage]}
      priority: {type: integer, min: 1, max: 4, required: true}
      cost: {type: float, min: 0}
      created_at: {type: timestamp, required: true, min: "2020-01-01T00:00:00Z"}
    primary_key: [record_id]       # optional list of declared column names
    extra_columns: allow           # allow | reject: columns not in the contract; default allow
    validation:
      max_failing_share: 0.2       # 0..1: above it the whole file is quarantined; default 0.5
      blocking: true               # failing asset checks block downstream; default true
    near_duplicates: flag          # flag | drop; default flag
    retention:                     # each an int >= 0; absent = the platform default
      archive_after_uses: 3        #   (DATA_PLATFORM_ARCHIVE_AFTER_USES, ...); null or
      archive_after_days: 90       #   `never` = never (see data_platform.retention)
      deprecate_after_days: 180
      delete_after_days: 30        # grace period after deprecation

Column keys:
  type         required: string | integer | float | boolean | timestamp | date
  required     bool (default false): the value may not be null or missing
  min, max     only for integer, float (numbers), timestamp, date (ISO strings or
               YAML dates); a timestamp without an offset is taken as UTC
  allowed      non-empty list of values of the column's type
  regex        only for string; must compile (Python `re`, matched with `search`)
  pii          only for string: email | phone | ip | name | free_text
  unique       bool (default false)
  description  string

Duplicate keys anywhere in the file are rejected: YAML would otherwise keep the
last one silently, e.g. a column declared twice.
"""

import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import yaml

from data_platform import layout
from data_platform.config import Settings
from data_platform.storage import ObjectStore

PII_KINDS = ("email", "phone", "ip", "name", "free_text")
TYPES = ("string", "integer", "float", "boolean", "timestamp", "date")
EXTRA_COLUMNS = ("allow", "reject")
NEAR_DUPLICATES = ("flag", "drop")
CONTRACTS_PREFIX = f"{layout.PLATFORM}/contracts"
SUFFIXES = (".yaml", ".yml")

_TOP_KEYS = ("version", "description", "columns", "primary_key", "extra_columns",
             "validation", "near_duplicates", "retention")
_COLUMN_KEYS = ("type", "required", "min", "max", "allowed", "regex", "pii", "unique", "description")
_VALIDATION_KEYS = ("max_failing_share", "blocking")
_RETENTION_KEYS = ("archive_after_uses", "archive_after_days", "deprecate_after_days", "delete_after_days")
_RANGED_TYPES = ("integer", "float", "timestamp", "date")

_ARROW_TYPES = {
    "string": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


class ContractError(ValueError):
    """An invalid contract. The message reads "{source}: {field}: {problem}"."""

    def __init__(self, message: str, *, source: str = "", field: str = ""):
        super().__init__(message)
        self.source = source
        self.field = field


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    required: bool = False
    min: float | int | datetime | date | None = None
    max: float | int | datetime | date | None = None
    allowed: tuple | None = None
    regex: str | None = None
    pii: str | None = None
    unique: bool = False
    description: str | None = None

    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.type]

    def to_dict(self) -> dict:
        """The column's rules as they would be written in a contract (defaults left out)."""
        out: dict = {"type": self.type, "required": self.required}
        for key in ("min", "max", "regex", "pii", "description"):
            value = getattr(self, key)
            if value is not None:
                out[key] = _jsonable(value)
        if self.allowed is not None:
            out["allowed"] = [_jsonable(v) for v in self.allowed]
        if self.unique:
            out["unique"] = True
        return out


# A retention limit written as `null` or `never`: the step never happens.
NEVER = "never"


@dataclass(frozen=True)
class RetentionPolicy:
    """A contract's `retention` block: None where a key is absent (the platform default
    applies), NEVER where it is null or `never`, else the limit."""
    archive_after_uses: int | str | None = None
    archive_after_days: int | str | None = None
    deprecate_after_days: int | str | None = None
    delete_after_days: int | str | None = None


@dataclass(frozen=True)
class Contract:
    tenant: str
    dataset: str
    version: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...] = ()
    extra_columns: str = "allow"
    max_failing_share: float = 0.5
    blocking: bool = True
    near_duplicates: str = "flag"
    retention: RetentionPolicy = RetentionPolicy()
    description: str | None = None
    source: str = ""

    @cached_property
    def _by_name(self) -> dict[str, ColumnSpec]:
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> ColumnSpec | None:
        return self._by_name.get(name)

    @property
    def pii_columns(self) -> dict[str, str]:
        return {c.name: c.pii for c in self.columns if c.pii}

    def arrow_schema(self) -> pa.Schema:
        # Every field stays nullable: `required` is checked row by row, and a
        # non-nullable schema would fail a whole cast over one bad row.
        return pa.schema([pa.field(c.name, c.arrow_type(), nullable=True) for c in self.columns])

    def to_dict(self) -> dict:
        """A JSON-serialisable summary for metadata; apart from tenant, dataset and
        source it has the shape of the contract file and parses back to the same contract."""
        return {
            "tenant": self.tenant,
            "dataset": self.dataset,
            "source": self.source,
            "version": self.version,
            "description": self.description,
            "columns": {c.name: c.to_dict() for c in self.columns},
            "primary_key": list(self.primary_key),
            "extra_columns": self.extra_columns,
            "validation": {"max_failing_share": self.max_failing_share, "blocking": self.blocking},
            "near_duplicates": self.near_duplicates,
            # Absent keys stay absent, so the summary parses back to the same contract.
            "retention": {k: getattr(self.retention, k) for k in _RETENTION_KEYS
                          if getattr(self.retention, k) is not None},
        }


def _jsonable(value):
    return value.isoformat() if isinstance(value, date) else value


# --- YAML loading ---------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<` merges may legitimately be overridden by explicit keys
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        except TypeError:
            pass  # unhashable key: SafeLoader reports it below
    return loader.construct_mapping(node, deep=deep)


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode):
    # PyYAML raises a bare ValueError on `2024-13-01`; keep the text so the field
    # check reports it with its field path.
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _load_yaml(text: str | bytes, source: str):
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}"
        elif isinstance(err, yaml.reader.ReaderError):
            where, problem = f"byte {err.position}", f"cannot decode: {err.reason}"
        else:
            where = "(yaml)"
        msg = f"{source}: {where}: invalid YAML: {problem}"
        raise ContractError(msg, source=source, field=where) from None


# --- validation -----------------------------------------------------------------

class _Parser:
    """Checks one parsed document; every error names the source and the field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str):
        raise ContractError(f"{self.source}: {field}: {problem}", source=self.source, field=field)

    def mapping(self, value, field: str, keys: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"expected a mapping, got {_show(value)}")
        for key in value:
            if key not in keys:
                self.fail(f"{field}.{key}" if field != "(top level)" else str(key),
                          f"unknown key {key!r} (expected one of {', '.join(keys)})")
        return value

    def boolean(self, value, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"expected true or false, got {_show(value)}")
        return value

    def text(self, value, field: str) -> str | None:
        if value is not None and not isinstance(value, str):
            self.fail(field, f"expected a string, got {_show(value)}")
        return value

    def choice(self, value, field: str, choices: tuple[str, ...]) -> str:
        if value not in choices or not isinstance(value, str):
            self.fail(field, f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value

    def number(self, value, field: str) -> int | float:
        # bool is an int in Python; `min: true` is a mistake, not 1.
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            self.fail(field, f"expected a number, got {_show(value)}")
        return value

    def limit(self, value, field: str) -> int | str:
        """A retention limit: an int >= 0, or null / `never` (NEVER)."""
        if value is None or value == NEVER:
            return NEVER
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(field, f"expected an integer >= 0, null or never, got {_show(value)}")
        if value < 0:
            self.fail(field, f"must be >= 0, got {value}")
        return value

    def value_of(self, type_: str, value, field: str, *, bound: bool):
        """A bound or allowed value checked against (and normalised to) the column type.
        A bound of an integer column may be any number; an allowed value must be an int."""
        if type_ == "integer" and not bound and (not isinstance(value, int) or isinstance(value, bool)):
            self.fail(field, f"expected an integer, got {_show(value)}")
        if type_ in ("integer", "float"):
            return self.number(value, field)
        if type_ == "string":
            if not isinstance(value, str):
                self.fail(field, f"expected a string, got {_show(value)}")
            return value
        if type_ == "boolean":
            return self.boolean(value, field)
        if type_ == "timestamp":
            return self.timestamp(value, field)
        return self.date(value, field)

    def timestamp(self, value, field: str) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                self.fail(field, f"expected an ISO timestamp, got {_show(value)}")
        elif isinstance(value, date) and not isinstance(value, datetime):
            value = datetime.combine(value, time(), UTC)
        elif not isinstance(value, datetime):
            self.fail(field, f"expected an ISO timestamp, got {_show(value)}")
        # Data timestamps are UTC; a bound without an offset means UTC too.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def date(self, value, field: str) -> date:
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                self.fail(field, f"expected an ISO date (YYYY-MM-DD), got {_show(value)}")
        if isinstance(value, datetime) or not isinstance(value, date):
            self.fail(field, f"expected an ISO date (YYYY-MM-DD), got {_show(value)}")
        return value

    def column(self, name, spec, field: str) -> ColumnSpec:
        if not isinstance(name, str) or not name:
            self.fail(field, f"column name must be a non-empty string, got {_show(name)}")
        if spec is None:
            self.fail(field, "missing column spec (at least {type: ...})")
        spec = self.mapping(spec, field, _COLUMN_KEYS)
        if "type" not in spec:
            self.fail(f"{field}.type", "missing (one of " + ", ".join(TYPES) + ")")
        type_ = self.choice(spec["type"], f"{field}.type", TYPES)

        bounds = {}
        for key in ("min", "max"):
            if spec.get(key) is None:
                bounds[key] = None
                continue
            if type_ not in _RANGED_TYPES:
                self.fail(f"{field}.{key}", f"only for {', '.join(_RANGED_TYPES)} columns, not {type_}")
            bounds[key] = self.value_of(type_, spec[key], f"{field}.{key}", bound=True)
        if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
            self.fail(f"{field}.min", f"min {_show(spec['min'])} is greater than max {_show(spec['max'])}")

        allowed = spec.get("allowed")
        if allowed is not None:
            if not isinstance(allowed, list) or not allowed:
                self.fail(f"{field}.allowed", f"expected a non-empty list, got {_show(allowed)}")
            allowed = tuple(self.value_of(type_, v, f"{field}.allowed[{i}]", bound=False)
                            for i, v in enumerate(allowed))

        regex = self.text(spec.get("regex"), f"{field}.regex")
        if regex is not None:
            if type_ != "string":
                self.fail(f"{field}.regex", f"only for string columns, not {type_}")
            try:
                re.compile(regex)
            except re.error as err:
                self.fail(f"{field}.regex", f"does not compile: {err}")

        pii = spec.get("pii")
        if pii is not None:
            pii = self.choice(pii, f"{field}.pii", PII_KINDS)
            if type_ != "string":
                self.fail(f"{field}.pii", f"only for string columns, not {type_}")

        return ColumnSpec(
            name=name,
            type=type_,
            required=self.boolean(spec.get("required", False), f"{field}.required"),
            min=bounds["min"],
            max=bounds["max"],
            allowed=allowed,
            regex=regex,
            pii=pii,
            unique=self.boolean(spec.get("unique", False), f"{field}.unique"),
            description=self.text(spec.get("description"), f"{field}.description"),
        )

    def contract(self, doc, tenant: str, dataset: str) -> Contract:
        doc = self.mapping(doc, "(top level)", _TOP_KEYS)

        version = doc.get("version")
        if version is None:
            self.fail("version", "missing (an int or a string)")
        if isinstance(version, bool) or not isinstance(version, (int, str)) or not str(version).strip():
            self.fail("version", f"expected an int or a non-empty string, got {_show(version)}")

        columns = doc.get("columns")
        if columns is None:
            self.fail("columns", "missing (a mapping of column name to spec)")
        if not isinstance(columns, dict) or not columns:
            self.fail("columns", f"expected a non-empty mapping, got {_show(columns)}")
        specs = tuple(self.column(name, spec, f"columns.{name}") for name, spec in columns.items())

        primary_key = doc.get("primary_key")
        primary_key = [] if primary_key is None else primary_key
        if not isinstance(primary_key, list):
            self.fail("primary_key", f"expected a list of column names, got {_show(primary_key)}")
        for i, name in enumerate(primary_key):
            if not isinstance(name, str) or name not in columns:
                self.fail(f"primary_key[{i}]", f"{_show(name)} is not a declared column")
            if name in primary_key[:i]:
                self.fail(f"primary_key[{i}]", f"{name!r} is listed twice")

        validation = self.mapping(_or_empty(doc.get("validation")), "validation", _VALIDATION_KEYS)
        share = self.number(validation.get("max_failing_share", 0.5), "validation.max_failing_share")
        if not 0 <= share <= 1:
            self.fail("validation.max_failing_share", f"must be between 0 and 1, got {share}")

        retention = self.mapping(_or_empty(doc.get("retention")), "retention", _RETENTION_KEYS)

        return Contract(
            tenant=tenant,
            dataset=dataset,
            version=str(version),
            columns=specs,
            primary_key=tuple(primary_key),
            extra_columns=self.choice(doc.get("extra_columns", "allow"), "extra_columns", EXTRA_COLUMNS),
            max_failing_share=float(share),
            blocking=self.boolean(validation.get("blocking", True), "validation.blocking"),
            near_duplicates=self.choice(doc.get("near_duplicates", "flag"), "near_duplicates", NEAR_DUPLICATES),
            retention=RetentionPolicy(**{k: self.limit(retention[k], f"retention.{k}")
                                         for k in _RETENTION_KEYS if k in retention}),
            description=self.text(doc.get("description"), "description"),
            source=self.source,
        )


def _or_empty(value):
    # `validation:` with nothing under it is YAML null: the same as leaving it out.
    return {} if value is None else value


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return repr(value)


# --- public entry points ----------------------------------------------------------

def parse_contract(text: str | bytes, *, tenant: str, dataset: str, source: str) -> Contract:
    """Parse and check one contract document; `source` names it in error messages."""
    return _Parser(source).contract(_load_yaml(text, source), tenant, dataset)


def load_contract_file(path: Path, *, tenant: str, dataset: str) -> Contract:
    path = Path(path)
    return parse_contract(path.read_bytes(), tenant=tenant, dataset=dataset, source=str(path))


def contract_key(tenant: str, dataset: str, suffix: str = ".yaml") -> str:
    """Object key of a contract kept in the store."""
    return f"{CONTRACTS_PREFIX}/{layout.check_name('tenant', tenant)}/{layout.check_name('dataset', dataset)}{suffix}"


class ContractRegistry:
    """Finds a dataset's contract in a directory, then in the object store.

    Nothing is cached: a contract edited between two uploads applies to the second.
    """

    def __init__(self, contracts_dir: Path | None, store: ObjectStore | None):
        self.contracts_dir = Path(contracts_dir) if contracts_dir is not None else None
        self.store = store

    @classmethod
    def from_env(cls, store: ObjectStore | None) -> "ContractRegistry":
        configured = os.environ.get("DATA_PLATFORM_CONTRACTS_DIR")
        contracts_dir = Path(configured) if configured else Settings.from_env().home / "contracts"
        return cls(contracts_dir, store)

    def find(self, tenant: str, dataset: str) -> Contract | None:
        # Names first: they become path segments and object keys.
        layout.check_name("tenant", tenant)
        layout.check_name("dataset", dataset)
        found = self._document(tenant, dataset)
        return parse_contract(found[1], tenant=tenant, dataset=dataset, source=found[0]) if found else None

    def tenant_settings(self, tenant: str) -> "TenantSettings":
        """The tenant's `_tenant.yaml` beside its contracts; the defaults when there is none."""
        layout.check_name("tenant", tenant)
        found = self._document(tenant, TENANT_SETTINGS)
        return parse_tenant_settings(found[1], source=found[0]) if found else TenantSettings()

    def _document(self, tenant: str, stem: str) -> tuple[str, bytes] | None:
        """(source, bytes) of `{stem}.yaml|.yml` in the directory, else in the store."""
        if self.contracts_dir is not None:
            for suffix in SUFFIXES:
                path = self.contracts_dir / tenant / f"{stem}{suffix}"
                if path.is_file():
                    return str(path), path.read_bytes()
        if self.store is not None:
            for suffix in SUFFIXES:
                key = f"{CONTRACTS_PREFIX}/{tenant}/{stem}{suffix}"
                if self.store.exists(key):
                    return key, self.store.get_bytes(key)
        return None

    def datasets(self) -> set[tuple[str, str]]:
        """(tenant, dataset) of every contract file, from one directory walk and one
        listing: a pass over many datasets (cleanup) calls `find` only for these."""
        found: set[tuple[str, str]] = set()
        if self.contracts_dir is not None and self.contracts_dir.is_dir():
            for suffix in SUFFIXES:
                found.update((p.parent.name, p.stem) for p in self.contracts_dir.glob(f"*/*{suffix}"))
        if self.store is not None:
            for info in self.store.list(CONTRACTS_PREFIX + "/"):
                tenant, _, name = info.key[len(CONTRACTS_PREFIX) + 1:].partition("/")
                if name.endswith(SUFFIXES):
                    found.add((tenant, name.rsplit(".", 1)[0]))
        # Only contracts: not the tenant settings file (`_tenant.yaml`) or anything misnamed.
        return {(t, d) for t, d in found if layout.is_valid_name(t) and layout.is_valid_name(d)}


# --- tenant settings ----------------------------------------------------------------
# `_tenant.yaml` (or .yml) sits beside a tenant's contracts, in the directory or in the
# store, found the same way; a dataset name cannot start with `_`, so it never collides:
#
#     export:
#       format: parquet            # parquet | csv | jsonl: the weekly export's format
#       enabled: true              # false: the weekly schedule skips the tenant

TENANT_SETTINGS = "_tenant"
EXPORT_FORMATS = ("parquet", "csv", "jsonl")


@dataclass(frozen=True)
class TenantSettings:
    export_format: str = "parquet"
    export_enabled: bool = True
    source: str | None = None  # the file they came from; None = defaults


def parse_tenant_settings(text: str | bytes, *, source: str) -> TenantSettings:
    """Parse and check a `_tenant.yaml`; errors read `file: field: problem` like contracts'."""
    parser = _Parser(source)
    doc = parser.mapping(_or_empty(_load_yaml(text, source)), "(top level)", ("export",))
    export = parser.mapping(_or_empty(doc.get("export")), "export", ("format", "enabled"))
    return TenantSettings(
        export_format=parser.choice(export.get("format", "parquet"), "export.format", EXPORT_FORMATS),
        export_enabled=parser.boolean(export.get("enabled", True), "export.enabled"),
        source=source,
    )

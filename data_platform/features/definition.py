"""A feature table's definition: parsed from YAML or JSON, checked, made canonical.

The canonical form (sorted JSON of `FeatureDefinition.to_dict()`) is what the catalog
stores and hashes: `ttl: 7d` and `ttl: 604800` register the same definition, a renamed
or re-typed feature registers a new revision.
"""

import hashlib
import importlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import pyarrow as pa
import yaml

from data_platform import layout


class FeatureError(ValueError):
    """A definition, a request or data that the feature store cannot work with."""


class FeatureNotFound(LookupError):
    """No such feature table (or version) for this tenant. The message is the same
    whether or not another tenant has one by that name."""


# The contracts' type names, plus the narrower numeric types models often want.
TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "int32": pa.int32(),
    "float": pa.float64(),
    "float32": pa.float32(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}
# Column names: no ':' (it separates table and feature in "name:feature"), nothing exotic.
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TRANSFORM = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*")
_TTL = re.compile(r"(\d+)\s*([smhdw])")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TOP_KEYS = ("name", "tenant", "description", "owner", "entities", "event_timestamp", "created_timestamp",
             "features", "source", "ttl")


def feature_transformation(fn: Callable[[pa.Table], pa.Table]) -> Callable[[pa.Table], pa.Table]:
    """Mark a function as usable as a definition's `source.transform`. Only marked
    functions are accepted: a definition file cannot name just any callable."""
    fn.__feature_transformation__ = True
    return fn


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None  # None for an entity key whose type is taken from the source
    description: str | None = None

    @property
    def arrow_type(self) -> pa.DataType | None:
        return TYPES[self.type] if self.type else None


@dataclass(frozen=True)
class FeatureDefinition:
    name: str
    entities: tuple[Column, ...]
    event_timestamp: str
    features: tuple[Column, ...]
    dataset: str
    transform: str | None = None
    created_timestamp: str | None = None  # optional tie-breaker between rows of equal event time
    ttl_seconds: int | None = None  # None: values never expire
    owner: str | None = None
    description: str | None = None

    # -- parsing ---------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: dict, *, source: str = "definition") -> "FeatureDefinition":
        def fail(field: str, problem: str):
            raise FeatureError(f"{source}: {field}: {problem}")

        if not isinstance(spec, dict):
            fail("(top)", "expected a mapping")
        for key in spec:
            if key not in _TOP_KEYS:
                fail(key, f"unknown key (expected some of {', '.join(_TOP_KEYS)})")
        name = spec.get("name")
        if not isinstance(name, str) or not layout.is_valid_name(name):
            fail("name", f"must match {layout.NAME_PATTERN.pattern}")
        entities = _columns(spec.get("entities"), "entities", fail, types_required=False)
        if not entities:
            fail("entities", "at least one entity key column")
        features = _columns(spec.get("features"), "features", fail, types_required=True)
        if not features:
            fail("features", "at least one feature column")
        event_ts = spec.get("event_timestamp")
        if not isinstance(event_ts, str) or not COLUMN.fullmatch(event_ts):
            fail("event_timestamp", f"the event-time column's name, matching {COLUMN.pattern}")
        created_ts = spec.get("created_timestamp")
        if created_ts is not None and (not isinstance(created_ts, str) or not COLUMN.fullmatch(created_ts)):
            fail("created_timestamp", f"a column name matching {COLUMN.pattern}, or absent")
        seen: set[str] = set()
        for col in [c.name for c in entities] + [event_ts] + ([created_ts] if created_ts else []) + [
                c.name for c in features]:
            if col in seen:
                fail("features", f"column {col!r} appears twice (entities, timestamps and features are distinct)")
            seen.add(col)
        src = spec.get("source")
        if isinstance(src, str):
            src = {"dataset": src}
        if not isinstance(src, dict) or set(src) - {"dataset", "transform"}:
            fail("source", "a mapping with `dataset` and optionally `transform: module:function`")
        dataset = src.get("dataset")
        if not isinstance(dataset, str) or not layout.is_valid_name(dataset):
            fail("source.dataset", f"the tenant's dataset to read, matching {layout.NAME_PATTERN.pattern}")
        transform = src.get("transform")
        if transform is not None and (not isinstance(transform, str) or not _TRANSFORM.fullmatch(transform)):
            fail("source.transform", "`package.module:function`")
        for key in ("owner", "description"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                fail(key, "text")
        if spec.get("owner") and len(spec["owner"]) > 128:
            fail("owner", "at most 128 characters")
        return cls(name=name, entities=entities, event_timestamp=event_ts, features=features, dataset=dataset,
                   transform=transform, created_timestamp=created_ts,
                   ttl_seconds=parse_ttl(spec.get("ttl"), lambda p: fail("ttl", p)),
                   owner=spec.get("owner"), description=spec.get("description"))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureDefinition":
        """From a `.yaml`/`.yml`/`.json` file."""
        return cls.parse(load_spec(path), source=str(path))


    @classmethod
    def from_dict(cls, canonical: dict) -> "FeatureDefinition":
        """Back from `to_dict()` (what the catalog stores)."""
        spec = {k: v for k, v in canonical.items() if k != "ttl_seconds"}
        spec["ttl"] = canonical.get("ttl_seconds")
        for key in ("entities", "features"):
            spec[key] = {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in canonical[key]}
        return cls.parse(spec, source="catalog")

    # -- canonical form --------------------------------------------------------------

    def to_dict(self) -> dict:
        def cols(columns):
            return [{"name": c.name, "type": c.type, **({"description": c.description} if c.description else {})}
                    for c in columns]

        return {"name": self.name, "entities": cols(self.entities), "event_timestamp": self.event_timestamp,
                "created_timestamp": self.created_timestamp, "features": cols(self.features),
                "source": {"dataset": self.dataset, "transform": self.transform}, "ttl_seconds": self.ttl_seconds,
                "owner": self.owner, "description": self.description}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def entity_names(self) -> list[str]:
        return [c.name for c in self.entities]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    # -- the transformation and the code version -------------------------------------

    def load_transform(self) -> Callable[[pa.Table], pa.Table] | None:
        if self.transform is None:
            return None
        module_name, _, attr = self.transform.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise FeatureError(f"transform {self.transform!r} cannot be loaded: {err}") from err
        if not getattr(fn, "__feature_transformation__", False):
            raise FeatureError(f"transform {self.transform!r} is not marked with "
                               "@data_platform.features.feature_transformation")
        return fn

    def code_version(self) -> str:
        """What produced a version: the package's version, the definition's hash and, with
        a transformation, the hash of its source code (a changed function shows)."""
        try:
            package = importlib_metadata.version("data_platform")
        except importlib_metadata.PackageNotFoundError:
            package = "unknown"
        out = f"data_platform=={package};definition={self.sha256[:16]}"
        fn = self.load_transform()
        if fn is not None:
            try:
                code = inspect.getsource(fn)
            except (OSError, TypeError):
                code = repr(fn)
            out += f";transform={hashlib.sha256(code.encode()).hexdigest()[:16]}"
        return out


def load_spec(path: str | Path) -> dict:
    """A definition file's content, unchecked (see `FeatureDefinition.parse`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise FeatureError(f"{path}: cannot be read: {err}") from err
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise FeatureError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                           f"{str(err).splitlines()[0]}") from err


def parse_ttl(value, fail: Callable[[str], None] | None = None) -> int | None:
    """Seconds from `7d`, `12h`, `30m`, `45s`, `2w`, a number of seconds, or None (no limit)."""
    def bad(problem: str):
        if fail:
            fail(problem)
        raise FeatureError(f"ttl: {problem}")

    if value is None:
        return None
    if isinstance(value, bool):
        bad("a duration such as 7d, 12h, 30m or a number of seconds")
    if isinstance(value, int | float):
        seconds = int(value)
    elif isinstance(value, str) and (found := _TTL.fullmatch(value.strip())):
        seconds = int(found.group(1)) * _TTL_UNITS[found.group(2)]
    else:
        bad(f"{value!r} is not a duration such as 7d, 12h, 30m, 45s or a number of seconds")
    if seconds <= 0:
        bad("must be positive (leave it out for no limit)")
    return seconds


def _columns(value, field: str, fail, *, types_required: bool) -> tuple[Column, ...]:
    """A list of names (entities only), a mapping name -> type, or name -> {type, description}."""
    if value is None:
        return ()
    if isinstance(value, list):
        if types_required:
            fail(field, "a mapping of column name to type")
        value = {name: None for name in value} if all(isinstance(n, str) for n in value) else fail(
            field, "a list of column names")
    if not isinstance(value, dict):
        fail(field, "a mapping of column name to type")
    out = []
    for name, spec in value.items():
        if not isinstance(name, str) or not COLUMN.fullmatch(name):
            fail(f"{field}.{name}", f"column names match {COLUMN.pattern}")
        description = None
        if isinstance(spec, dict):
            if set(spec) - {"type", "description"}:
                fail(f"{field}.{name}", "only `type` and `description`")
            description = spec.get("description")
            spec = spec.get("type")
        if spec is None and not types_required:
            out.append(Column(name, None, description))
            continue
        if spec not in TYPES:
            fail(f"{field}.{name}", f"type {spec!r} is not one of {', '.join(TYPES)}")
        out.append(Column(name, spec, description))
    return tuple(out)

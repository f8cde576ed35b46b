"""The feature store: versioned feature tables per tenant, retrieval as of a point in time.

- `definition`: the definition file (YAML/JSON), its checks and canonical form,
  transformations (`@feature_transformation`) and the code version.
- `store`: register, materialise an immutable version, get / list / verify versions.
- `retrieval`: `get_historical_features`, point-in-time correct, TTL-aware.

Every function takes the tenant: a name is only ever resolved within it, and a name
another tenant uses reads as "not found".
"""

from data_platform.features.definition import (
    TYPES, FeatureDefinition, FeatureError, FeatureNotFound, feature_transformation, load_spec, parse_ttl,
)
from data_platform.features.retrieval import get_historical_features
from data_platform.features.store import (
    ABANDONED_AFTER, SOURCE_STATES, abandon_stale_builds, BuildResult, Registration, get_definition, get_version, list_versions, materialise_feature_table,
    read_manifest, read_version, register_feature_table, verify_version,
)

__all__ = [
    "TYPES", "FeatureDefinition", "FeatureError", "FeatureNotFound", "feature_transformation", "load_spec", "parse_ttl",
    "get_historical_features", "ABANDONED_AFTER", "abandon_stale_builds", "SOURCE_STATES", "BuildResult", "Registration", "get_definition", "get_version",
    "list_versions", "materialise_feature_table", "read_manifest", "read_version", "register_feature_table",
    "verify_version",
]

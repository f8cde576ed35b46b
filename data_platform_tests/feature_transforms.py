"""Transformations the feature-store tests name in definitions (`module:function`)."""

import pyarrow as pa
import pyarrow.compute as pc

from data_platform.features import feature_transformation


@feature_transformation
def with_amount_cents(table: pa.Table) -> pa.Table:
    """A derived feature: the amount in cents, as an integer."""
    cents = pc.cast(pc.round(pc.multiply(table.column("amount"), 100)), pa.int64())
    return table.append_column("amount_cents", cents)


def not_marked(table: pa.Table) -> pa.Table:
    return table


@feature_transformation
def returns_a_list(table: pa.Table):
    return table.to_pylist()

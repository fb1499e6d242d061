"""Entities: the keys features are joined on."""

from feast import Entity, ValueType

# A payment card; card features are keyed by it.
card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.INT64,
    description="A payment card (synthetic).",
)

# A merchant accepting card payments; merchant features are keyed by it.
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="A merchant accepting card payments (synthetic).",
)

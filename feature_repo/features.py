"""Feature views and the feature service of the fraud model."""

from datetime import timedelta

from entities import card, merchant
from feast import FeatureService, FeatureView, Field
from feast.types import Float64, Int64
from sources import card_stats_source, merchant_stats_source

# Velocity and spend of a card; beyond 7 days without a transaction every window is empty.
card_stats_fv = FeatureView(
    name="card_features",
    entities=[card],
    ttl=timedelta(days=7),
    schema=[
        Field(name="card_txn_count_1h", dtype=Int64, description="transactions in the hour before"),
        Field(name="card_txn_count_24h", dtype=Int64, description="transactions in the 24h before"),
        Field(name="card_amount_mean_7d", dtype=Float64, description="mean amount, 7 days before"),
        Field(name="card_amount_max_7d", dtype=Float64, description="max amount, 7 days before"),
        Field(
            name="card_distinct_merchants_24h",
            dtype=Int64,
            description="distinct merchants in the 24h before",
        ),
    ],
    source=card_stats_source,
    online=True,
    tags={"team": "fraud", "owner": "driftline"},
)

# Daily merchant snapshot; stale after two days without a new snapshot.
merchant_stats_fv = FeatureView(
    name="merchant_features",
    entities=[merchant],
    ttl=timedelta(days=2),
    schema=[
        Field(name="merchant_txn_count_7d", dtype=Int64, description="transactions, 7 days"),
        Field(name="merchant_amount_mean_7d", dtype=Float64, description="mean amount, 7 days"),
        Field(
            name="merchant_fraud_rate_30d",
            dtype=Float64,
            description="fraud rate of matured labels, 30 days",
        ),
        Field(
            name="merchant_labeled_txn_30d",
            dtype=Int64,
            description="matured labels behind the fraud rate",
        ),
    ],
    source=merchant_stats_source,
    online=True,
    tags={"team": "fraud", "owner": "driftline"},
)

# Everything the fraud_detection model reads from Feast.
fraud_detection_v1 = FeatureService(
    name="fraud_detection_v1",
    features=[card_stats_fv, merchant_stats_fv],
    description="Card and merchant aggregates for the fraud_detection model.",
)

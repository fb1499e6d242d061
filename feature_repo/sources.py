"""Data sources: the offline store's parquet day partitions, located through driftline.settings."""

from feast import FileSource
from feast.data_format import ParquetFormat

from driftline.offline import table_glob
from driftline.settings import get_settings

_offline_dir = get_settings().offline_dir

# Card state just before each transaction, one row per transaction.
card_stats_source = FileSource(
    name="card_stats_source",
    path=table_glob(_offline_dir, "card_features"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Rolling card aggregates, point-in-time correct (windows end before the row).",
)

# Merchant snapshot at 00:00 UTC of every day.
merchant_stats_source = FileSource(
    name="merchant_stats_source",
    path=table_glob(_offline_dir, "merchant_features"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Daily merchant aggregates; fraud rate from matured labels only.",
)

# The label source: raw transactions with their fraud label and when it matured.
transactions_source = FileSource(
    name="transactions_source",
    path=table_glob(_offline_dir, "transactions"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Card transactions; is_fraud is known from label_available_at on.",
)

"""Feature values computed from raw transactions, point-in-time correct.

* Card features: one row per transaction, stamped with the transaction's time, holding the
  card's state *just before* it (windows are ``[t - w, t)``). A point-in-time join at a
  transaction's own timestamp therefore sees exactly the history a scorer would have seen.
* Merchant features: a snapshot per merchant at 00:00 UTC of each day, from the days before.
  The fraud rate counts only labels that had matured by the snapshot time, so no label from
  the future leaks into a feature.
"""

from __future__ import annotations

import duckdb
import pandas as pd

_CARD_SQL = """
SELECT card_id, event_timestamp, card_txn_count_1h, card_txn_count_24h,
       card_amount_mean_7d, card_amount_max_7d, card_distinct_merchants_24h
FROM (
    SELECT card_id, event_timestamp,
        count(*) OVER w1h AS card_txn_count_1h,
        count(*) OVER w24h AS card_txn_count_24h,
        avg(amount) OVER w7d AS card_amount_mean_7d,
        max(amount) OVER w7d AS card_amount_max_7d,
        count(DISTINCT merchant_id) OVER w24h AS card_distinct_merchants_24h
    FROM tx
    WINDOW
        w1h AS (PARTITION BY card_id ORDER BY event_timestamp
                RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW),
        w24h AS (PARTITION BY card_id ORDER BY event_timestamp
                 RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW),
        w7d AS (PARTITION BY card_id ORDER BY event_timestamp
                RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW)
)
WHERE event_timestamp >= $since
ORDER BY event_timestamp, card_id
"""

_MERCHANT_SQL = """
WITH merchants AS (SELECT range AS merchant_id FROM range($n_merchants)),
recent AS (
    SELECT merchant_id,
        count(*) FILTER (WHERE event_timestamp >= $at - INTERVAL 7 DAY) AS merchant_txn_count_7d,
        avg(amount) FILTER (WHERE event_timestamp >= $at - INTERVAL 7 DAY)
            AS merchant_amount_mean_7d,
        count(*) FILTER (WHERE label_available_at <= $at) AS merchant_labeled_txn_30d,
        sum(is_fraud) FILTER (WHERE label_available_at <= $at) AS frauds
    FROM tx
    WHERE event_timestamp >= $at - INTERVAL 30 DAY AND event_timestamp < $at
    GROUP BY merchant_id
)
SELECT m.merchant_id, $at AS event_timestamp,
    coalesce(r.merchant_txn_count_7d, 0) AS merchant_txn_count_7d,
    r.merchant_amount_mean_7d,
    CASE WHEN coalesce(r.merchant_labeled_txn_30d, 0) > 0
         THEN r.frauds / r.merchant_labeled_txn_30d END AS merchant_fraud_rate_30d,
    coalesce(r.merchant_labeled_txn_30d, 0) AS merchant_labeled_txn_30d
FROM merchants m LEFT JOIN recent r USING (merchant_id)
ORDER BY m.merchant_id
"""


def _query(sql: str, transactions: pd.DataFrame, **params: object) -> pd.DataFrame:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("tx", transactions)
        frame = con.execute(sql, params).df()
    for column in frame.select_dtypes(include=["datetimetz", "datetime"]).columns:
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    return frame


def card_features(transactions: pd.DataFrame, *, since: pd.Timestamp) -> pd.DataFrame:
    """Card state just before each transaction at or after ``since``.

    ``transactions`` must include the 7 days before ``since`` for the windows to be complete.
    """
    frame = _query(_CARD_SQL, transactions, since=since.to_pydatetime())
    for column in ("card_txn_count_1h", "card_txn_count_24h", "card_distinct_merchants_24h"):
        frame[column] = frame[column].astype("int64")
    return frame


def merchant_snapshot(
    transactions: pd.DataFrame, *, at: pd.Timestamp, n_merchants: int
) -> pd.DataFrame:
    """Every merchant's state at ``at`` from the 30 days before it, matured labels only."""
    frame = _query(_MERCHANT_SQL, transactions, at=at.to_pydatetime(), n_merchants=n_merchants)
    for column in ("merchant_id", "merchant_txn_count_7d", "merchant_labeled_txn_30d"):
        frame[column] = frame[column].astype("int64")
    frame["merchant_fraud_rate_30d"] = frame["merchant_fraud_rate_30d"].astype("float64")
    return frame

"""Training frames for unit tests, joined with pandas from a generated offline store.

Equivalent to what Feast returns for the same entity rows (card state at the transaction's
own timestamp, merchant snapshot of the transaction's day), without a feature store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from driftline.specs import ModelSpec
from driftline.training_set import Window


def joined(offline_dir: Path) -> pd.DataFrame:
    tx = pd.read_parquet(offline_dir / "transactions").drop(columns=["date"])
    cards = pd.read_parquet(offline_dir / "card_features").drop(columns=["date"])
    merchants = pd.read_parquet(offline_dir / "merchant_features").drop(columns=["date"])
    frame = tx.merge(cards, on=["card_id", "event_timestamp"], how="left")
    frame["_day"] = frame["event_timestamp"].dt.floor("D")
    merchants = merchants.rename(columns={"event_timestamp": "_day"})
    frame = frame.merge(merchants, on=["merchant_id", "_day"], how="left").drop(columns=["_day"])
    return frame.sort_values("event_timestamp", ignore_index=True)


def window_of(spec: ModelSpec, frame: pd.DataFrame) -> Window:
    """A window whose labeled span is exactly the frame's days."""
    start = frame["event_timestamp"].min().floor("D").to_pydatetime()
    end = frame["event_timestamp"].max().floor("D").to_pydatetime() + timedelta(days=1)
    return Window(start=start, end=end, as_of=end + timedelta(days=spec.label_delay_days))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)

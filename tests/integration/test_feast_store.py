"""A real Feast store in a temp directory: apply, materialize, and no training-serving skew."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from driftline.errors import DriftlineError
from driftline.feature_store import (
    apply_repo,
    get_store,
    materialization_intervals,
    materialize_window,
)
from tests.conftest import SMALL, applied_feast_home

END = datetime(2026, 1, 22, tzinfo=UTC)  # the baseline data covers 2026-01-01 .. 2026-01-21
CARD_FEATURES = [
    "card_txn_count_1h",
    "card_txn_count_24h",
    "card_amount_mean_7d",
    "card_amount_max_7d",
    "card_distinct_merchants_24h",
]
MERCHANT_FEATURES = [
    "merchant_txn_count_7d",
    "merchant_amount_mean_7d",
    "merchant_fraud_rate_30d",
    "merchant_labeled_txn_30d",
]


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory, baseline_offline: Path) -> Iterator[Path]:
    """State directory with the baseline data and the registry applied, once per module."""
    with applied_feast_home(tmp_path_factory, baseline_offline) as home:
        yield home


def _clean(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _online(ids: list[int], key: str, features: list[str], view: str) -> pd.DataFrame:
    store = get_store()
    response = store.get_online_features(
        features=[f"{view}:{name}" for name in features],
        entity_rows=[{key: int(i)} for i in ids],
    ).to_df()
    return response.set_index(key)[features]


def _offline(
    ids: list[int], key: str, features: list[str], view: str, at: datetime
) -> pd.DataFrame:
    store = get_store()
    entity_df = pd.DataFrame({key: ids, "event_timestamp": [at] * len(ids)})
    frame = store.get_historical_features(
        entity_df=entity_df, features=[f"{view}:{name}" for name in features]
    ).to_df()
    return frame.set_index(key)[features]


def test_online_equals_offline_point_in_time(store_home: Path) -> None:
    # Materialize exactly the card TTL (7 days) before END, so both sides see the same rows.
    materialize_window(END - timedelta(days=7), END, overlap=timedelta(0))
    cards = list(range(SMALL["n_cards"]))
    merchants = list(range(SMALL["n_merchants"]))

    for ids, key, features, view in (
        (cards, "card_id", CARD_FEATURES, "card_features"),
        (merchants, "merchant_id", MERCHANT_FEATURES, "merchant_features"),
    ):
        online = _online(ids, key, features, view)
        offline = _offline(ids, key, features, view, END)
        served = online.notna().any(axis=1).sum()
        assert served > 0.5 * len(ids), f"online store serves too few {view} rows: {served}"
        mismatches = [
            (entity, name, online.loc[entity, name], offline.loc[entity, name])
            for entity in ids
            for name in features
            if _clean(online.loc[entity, name]) != pytest.approx(_clean(offline.loc[entity, name]))
        ]
        assert not mismatches, f"training-serving skew in {view}: {mismatches[:5]}"


def test_rerunning_a_window_changes_nothing(store_home: Path) -> None:
    window = (END - timedelta(days=1), END)
    materialize_window(*window)
    cards = list(range(SMALL["n_cards"]))
    before = _online(cards, "card_id", CARD_FEATURES, "card_features")
    results = materialize_window(*window)
    after = _online(cards, "card_id", CARD_FEATURES, "card_features")
    pd.testing.assert_frame_equal(before, after)
    assert {r.feature_view for r in results} == {"card_features", "merchant_features"}
    assert all(r.rows > 0 for r in results)

    # an older window never rolls the online store back in time
    results = materialize_window(END - timedelta(days=5), END - timedelta(days=4))
    assert all("extended to the newest materialized end" in r.note for r in results)
    pd.testing.assert_frame_equal(before, _online(cards, "card_id", CARD_FEATURES, "card_features"))


def test_empty_window_says_zero_rows(store_home: Path) -> None:
    later = END + timedelta(days=30)
    results = materialize_window(later, later + timedelta(days=1))
    assert [r.rows for r in results] == [0, 0]
    assert all("0 rows" in r.describe() for r in results)


def test_apply_keeps_materialization_windows(store_home: Path) -> None:
    materialize_window(END - timedelta(days=1), END)
    before = materialization_intervals()
    assert all(before.values())
    apply_repo()
    assert materialization_intervals() == before


def test_missing_partition_inside_the_window_is_named(store_home: Path) -> None:
    path = store_home / "offline" / "merchant_features" / "date=2026-01-20" / "part-0.parquet"
    moved = path.with_suffix(".bak")
    path.rename(moved)
    try:
        with pytest.raises(DriftlineError, match=f"{path.parent}"):
            materialize_window(END - timedelta(days=2), END)
    finally:
        moved.rename(path)

"""The synthetic data: deterministic, realistic, point-in-time correct, drifting on demand."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from driftline import offline
from driftline.datagen import LABEL_DELAY, SCENARIO_MOVES, WATCHED_COLUMNS, generate
from driftline.errors import DriftlineError
from tests.conftest import SMALL, START


def _digest(offline_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(offline_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(offline_dir.rglob("*.parquet"))
    }


def _joined(offline_dir: Path) -> pd.DataFrame:
    tx = pd.read_parquet(offline_dir / "transactions")
    cards = pd.read_parquet(offline_dir / "card_features")
    return tx.merge(cards, on=["card_id", "event_timestamp"], validate="one_to_one")


def test_same_seed_same_bytes_and_appending_equals_one_shot(tmp_path: Path) -> None:
    one_shot, appended, other_seed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(offline_dir=one_shot, days=4, start=START, **SMALL)
    generate(offline_dir=appended, days=2, start=START, **SMALL)
    generate(offline_dir=appended, days=2, **SMALL)
    generate(offline_dir=other_seed, days=4, start=START, **{**SMALL, "seed": 12})

    assert _digest(one_shot) == _digest(appended)
    assert len(_digest(one_shot)) == 12  # 4 days x 3 tables
    assert _digest(one_shot) != _digest(other_seed)


def test_base_rate_and_label_maturity(baseline_offline: Path) -> None:
    tx = pd.read_parquet(baseline_offline / "transactions")
    assert 0.01 <= tx["is_fraud"].mean() <= 0.03
    assert (tx["label_available_at"] - tx["event_timestamp"] == pd.Timedelta(LABEL_DELAY)).all()
    assert tx["transaction_id"].is_unique


def test_label_is_learnable_but_noisy(baseline_offline: Path) -> None:
    tx = _joined(baseline_offline)
    online_rate = tx.loc[tx["channel"] == "online", "is_fraud"].mean()
    in_person_rate = tx.loc[tx["channel"] != "online", "is_fraud"].mean()
    burst = tx.loc[tx["card_txn_count_1h"] >= 2, "is_fraud"].mean()
    assert online_rate > 2.5 * in_person_rate
    assert burst > 5 * tx["is_fraud"].mean()
    # noisy: no single signal separates the classes
    assert burst < 0.9
    assert tx.loc[tx["channel"] == "online", "is_fraud"].mean() < 0.2


def test_card_features_use_only_earlier_transactions(baseline_offline: Path) -> None:
    tx = pd.read_parquet(baseline_offline / "transactions").sort_values("event_timestamp")
    cards = pd.read_parquet(baseline_offline / "card_features")
    rng = np.random.default_rng(0)
    sample = cards.iloc[rng.choice(len(cards), size=150, replace=False)]
    for row in sample.itertuples():
        history = tx[(tx["card_id"] == row.card_id) & (tx["event_timestamp"] < row.event_timestamp)]
        t = row.event_timestamp
        last_1h = history[history["event_timestamp"] >= t - pd.Timedelta(hours=1)]
        last_24h = history[history["event_timestamp"] >= t - pd.Timedelta(hours=24)]
        last_7d = history[history["event_timestamp"] >= t - pd.Timedelta(days=7)]
        assert row.card_txn_count_1h == len(last_1h)
        assert row.card_txn_count_24h == len(last_24h)
        assert row.card_distinct_merchants_24h == last_24h["merchant_id"].nunique()
        if len(last_7d):
            assert row.card_amount_mean_7d == pytest.approx(last_7d["amount"].mean())
            assert row.card_amount_max_7d == pytest.approx(last_7d["amount"].max())
        else:
            assert np.isnan(row.card_amount_mean_7d)


def test_merchant_fraud_rate_uses_only_matured_labels(baseline_offline: Path) -> None:
    tx = pd.read_parquet(baseline_offline / "transactions")
    merchants = pd.read_parquet(baseline_offline / "merchant_features")
    snapshot_time = merchants["event_timestamp"].max()
    snap = merchants[merchants["event_timestamp"] == snapshot_time].set_index("merchant_id")
    window = tx[
        (tx["event_timestamp"] >= snapshot_time - pd.Timedelta(days=30))
        & (tx["event_timestamp"] < snapshot_time)
    ]
    matured = window[window["label_available_at"] <= snapshot_time]
    expected = matured.groupby("merchant_id")["is_fraud"].mean()
    assert len(expected) > 20
    for merchant_id, rate in expected.items():
        assert snap.loc[merchant_id, "merchant_fraud_rate_30d"] == pytest.approx(rate)
        assert (
            snap.loc[merchant_id, "merchant_labeled_txn_30d"]
            == (matured["merchant_id"] == merchant_id).sum()
        )
    # the newest week's labels are not matured yet, so they cannot be in the rate
    assert matured["event_timestamp"].max() <= snapshot_time - pd.Timedelta(LABEL_DELAY)


def test_appending_continues_the_calendar(offline_copy: Path) -> None:
    before = offline.list_days(offline_copy)
    result = generate(offline_dir=offline_copy, days=3, scenario="covariate_shift", **SMALL)
    after = offline.list_days(offline_copy)

    assert result.days == [before[-1] + timedelta(days=i) for i in (1, 2, 3)]
    assert after == before + result.days
    assert all((b - a).days == 1 for a, b in itertools.pairwise(after))
    for table in offline.SCHEMAS:
        assert offline.list_days(offline_copy, table) == after
    for day in result.days:
        part = pd.read_parquet(offline.partition_path(offline_copy, "transactions", day))
        assert (part["event_timestamp"].dt.date == day).all()
    manifest = offline.read_manifest(offline_copy)
    assert [manifest["days"][d.isoformat()] for d in result.days] == ["covariate_shift"] * 3


def _shift(reference: pd.DataFrame, current: pd.DataFrame, column: str) -> float:
    """KS statistic for numbers, total variation distance for categories."""
    if reference[column].dtype == object:
        p = reference[column].value_counts(normalize=True)
        q = current[column].value_counts(normalize=True)
        return 0.5 * float(p.sub(q, fill_value=0).abs().sum())
    return float(ks_2samp(reference[column].dropna(), current[column].dropna()).statistic)


@pytest.mark.parametrize("scenario", ["baseline", "covariate_shift", "concept_drift"])
def test_scenario_moves_exactly_what_it_claims(offline_copy: Path, scenario: str) -> None:
    generate(offline_dir=offline_copy, days=4, scenario=scenario, **SMALL)
    data = _joined(offline_copy)
    split = pd.Timestamp(date(2026, 1, 22), tz="UTC")
    reference = data[
        (data["event_timestamp"] < split)
        & (data["event_timestamp"] >= split - pd.Timedelta(days=10))
    ]
    current = data[data["event_timestamp"] >= split]

    moved = SCENARIO_MOVES[scenario]
    for column in moved:
        assert _shift(reference, current, column) > 0.1, f"{scenario} should move {column}"
    for column in WATCHED_COLUMNS:
        if column not in moved:
            assert _shift(reference, current, column) < 0.08, f"{scenario} moved {column}"

    online_share_of_fraud = current.loc[current["is_fraud"] == 1, "channel"].eq("online").mean()
    if scenario == "concept_drift":
        # the fraud pattern itself changes: fraud leaves the online channel
        assert online_share_of_fraud < 0.2
    else:
        assert online_share_of_fraud > 0.4


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["--scenario", "holiday"],
            "--scenario 'holiday' is unknown; allowed: baseline, covariate_shift, concept_drift",
        ),
        (["--days", "0"], "--days 0 must be an integer from 1"),
        (["--days", "-3"], "--days -3 must be an integer from 1"),
        (["--start", "2026-13-45"], "--start '2026-13-45' is not a date"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(
    driftline_home: Path, args: list[str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "generate", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert not any(driftline_home.rglob("*")), "nothing may be written on bad input"


def test_start_must_continue_a_non_empty_store(offline_copy: Path) -> None:
    with pytest.raises(DriftlineError, match=r"--start 2026-01-01 does not continue"):
        generate(offline_dir=offline_copy, days=1, start="2026-01-01", **SMALL)
    with pytest.raises(DriftlineError, match=r"--seed 99 differs from the 11"):
        generate(offline_dir=offline_copy, days=1, **{**SMALL, "seed": 99})


def test_no_transaction_is_farther_from_home_than_the_far_side_of_the_earth() -> None:
    """The far tail is lognormal: unclipped, 2M far draws pass 20,000 km about 26 times."""
    from driftline.datagen import MAX_DISTANCE_KM, _distance

    distances = _distance(np.random.default_rng(3), 2_000_000, far_share=1.0)
    assert distances.max() == MAX_DISTANCE_KM
    assert MAX_DISTANCE_KM <= 20_100  # inside the shipped spec's validation range

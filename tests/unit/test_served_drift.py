"""Prediction drift on served traffic: scores written to the real prediction log, judged
against a reference whose answer is known (same distribution: no drift; shifted: drift)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from driftline import predlog
from driftline.drift import DriftResult, served_prediction_drift
from driftline.events import AssetEventExtra
from driftline.specs import load_spec
from driftline.training import PREDICTION
from driftline.training_set import Window

SPEC = load_spec("fraud_detection")
MODEL = SPEC.registered_model
KEYS = {"card_id": pa.int64(), "merchant_id": pa.int64()}
START = datetime(2026, 3, 1, tzinfo=UTC)
WINDOW = Window(start=START, end=START + timedelta(days=1), as_of=START + timedelta(days=1))
CHAMPION = "3"


def _scores(n: int, seed: int, *, a: float = 1.2, b: float = 30.0) -> np.ndarray:
    """Fraud-like scores: most near 0, a long tail (Beta(a, b))."""
    return np.random.default_rng(seed).beta(a, b, size=n)


REFERENCE = pd.DataFrame({PREDICTION: _scores(5000, seed=1)})


def _log(
    offline: Path,
    scores: np.ndarray,
    *,
    at: datetime = START + timedelta(hours=1),
    scored_at: datetime | None = None,
    version: str = CHAMPION,
    arm: str = "champion",
    status: str = "ok",
) -> None:
    rows = [
        {
            "request_id": f"{version}-{arm}-{at.isoformat()}-{i}",
            "scored_at": scored_at or at + timedelta(seconds=i % 3600),
            "event_timestamp": at + timedelta(seconds=i % 3600),
            "transaction_id": None,
            "model": MODEL,
            "version": version,
            "arm": arm,
            "score": float(score) if status == "ok" else None,
            "latency_ms": 2.0,
            "status": status,
            "error": None if status == "ok" else "boom",
            "card_id": i,
            "merchant_id": i % 50,
        }
        for i, score in enumerate(scores)
    ]
    predlog.write_rows(offline, MODEL, rows, KEYS)


def _judge(offline: Path) -> dict:
    return served_prediction_drift(SPEC, REFERENCE, WINDOW, CHAMPION, offline, seed=7)


def test_served_scores_from_the_reference_distribution_do_not_drift(tmp_path: Path) -> None:
    _log(tmp_path, _scores(2000, seed=2))
    served = _judge(tmp_path)
    assert served["drifted"] is False
    assert served["score"] < SPEC.drift.prediction_threshold / 4, served
    assert (served["rows"], served["compared_rows"]) == (2000, 2000)
    assert served["versions"] == {CHAMPION: 2000} and served["arms"] == {"champion": 2000}
    assert (served["method"], served["compared_version"]) == ("psi", CHAMPION)
    assert "note" not in served


def test_shifted_served_scores_drift(tmp_path: Path) -> None:
    _log(tmp_path, _scores(2000, seed=2, a=3.0, b=12.0))  # mean 0.2 instead of 0.04
    served = _judge(tmp_path)
    assert served["drifted"] is True
    assert served["score"] > SPEC.drift.prediction_threshold * 2, served


def test_only_the_champions_ok_rows_of_the_window_are_compared(tmp_path: Path) -> None:
    shifted = _scores(1000, seed=3, a=3.0, b=12.0)
    _log(tmp_path, _scores(1500, seed=2))
    # shifted, but not the champion's answers for the window's transactions:
    _log(tmp_path, shifted, at=START - timedelta(hours=2))  # transactions before the window
    _log(tmp_path, shifted, at=WINDOW.end + timedelta(hours=1))  # after it
    _log(tmp_path, shifted, arm="candidate", version="4")  # the canary's arm
    _log(tmp_path, shifted, version="2")  # the champion before the alias moved
    _log(tmp_path, shifted[:100], status="error")
    # a transaction of the window scored days later (a replayed calendar) still counts
    _log(tmp_path, _scores(500, seed=4), scored_at=START + timedelta(days=5))
    served = _judge(tmp_path)
    assert served["drifted"] is False, served
    assert served["compared_rows"] == 2000
    assert served["versions"] == {CHAMPION: 2000, "4": 1000, "2": 1000}
    assert served["arms"] == {"champion": 3000, "candidate": 1000}
    assert served["rows"] == 4000


def test_no_served_traffic_is_said_not_an_error(tmp_path: Path) -> None:
    _log(tmp_path, _scores(300, seed=2), at=START - timedelta(days=2))
    served = _judge(tmp_path)
    assert (served["rows"], served["compared_rows"], served["drifted"]) == (0, 0, False)
    assert served["score"] is None and served["versions"] == {}
    assert served["note"].startswith("no served traffic in the window [2026-03-01T00:00:00+00:00")


@pytest.mark.parametrize("champion_rows", [0, SPEC.drift.min_served_rows - 1])
def test_too_few_champion_rows_are_reported_not_judged(tmp_path: Path, champion_rows: int) -> None:
    _log(tmp_path, _scores(champion_rows, seed=2, a=3.0, b=12.0))
    _log(tmp_path, _scores(400, seed=5), arm="candidate", version="4")
    served = _judge(tmp_path)
    assert served["drifted"] is False and served["score"] is None
    assert served["compared_rows"] == champion_rows
    assert f"{champion_rows} rows served by the champion v3" in served["note"]
    assert f"drift.min_served_rows = {SPEC.drift.min_served_rows}" in served["note"]


def test_the_monitors_event_extra_is_accepted_by_the_retrains_intake() -> None:
    """Every key the monitor puts on its drift asset event is one the retrain's intake
    knows: an unknown key rejects the event, and the drift never starts a retrain."""
    result = DriftResult(
        model="fraud_detection",
        champion_version="1",
        window_start="2026-01-01T00:00:00+00:00",
        window_end="2026-01-02T00:00:00+00:00",
        current_rows=10,
        reference_rows=10,
        columns={"amount": {"drifted": True, "score": 0.5, "threshold": 0.1}},
        share_drifted=1.0,
        prediction={"drifted": True, "served": {"drifted": True}},
        performance={"decayed": True},
        verdict="drift",
        reasons=["amount drifted"],
        report_uri="file:///tmp/report.html",
        report_id=3,
        event_id=4,
    )
    parsed = AssetEventExtra.model_validate(result.event_extra())
    assert parsed.served_prediction_drift and parsed.prediction_drift and parsed.performance_decay
    assert parsed.drift_event_id == 4 and parsed.top_features == ["amount"]

"""Every validation check fails on a frame that violates it and passes on one that does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.settings import REPO_ROOT
from driftline.specs import load_spec
from driftline.validation import ValidationFailed, enforce, validate
from tests.frames import joined, window_of

SPEC = load_spec("fraud_detection", REPO_ROOT / "include" / "models")
# the session's small world has fewer rows than the shipped floor of 5000
SPEC = SPEC.model_copy(update={"validation": SPEC.validation.model_copy(update={"min_rows": 2000})})


@pytest.fixture(scope="module")
def good(baseline_offline: Path) -> pd.DataFrame:
    frame = joined(baseline_offline)
    # drop the warm-up week, when merchants have no matured labels yet
    return frame[frame["event_timestamp"] >= frame["event_timestamp"].min() + pd.Timedelta(days=8)]


def _run(frame: pd.DataFrame, recent: pd.DataFrame | None = None, spec=SPEC):
    window = window_of(spec, frame if len(frame) else GOOD_WINDOW_FRAME)
    return validate(
        spec, frame, recent if recent is not None else frame.iloc[:0], window, source="test"
    )


GOOD_WINDOW_FRAME = pd.DataFrame(
    {"event_timestamp": pd.to_datetime(["2026-01-09", "2026-01-21"], utc=True)}
)


def _failed(report) -> set[str]:
    return {check.name for check in report.failed}


def test_good_frame_passes_every_check(good: pd.DataFrame) -> None:
    report = _run(good)
    assert report.passed, report.summary()
    assert len(report.checks) > 40
    enforce(report)


@pytest.mark.parametrize(
    ("corrupt", "check"),
    [
        (lambda f: f.drop(columns=["card_txn_count_1h"]), "training.required_columns"),
        (lambda f: f.assign(amount=f["amount"].astype(str)), "training.dtypes"),
        (
            lambda f: f.assign(distance_from_home_km=np.nan),
            "training.null_rate[distance_from_home_km]",
        ),
        (
            lambda f: f.assign(amount=f["amount"].where(f.index % 10 != 0)),
            "training.null_rate[amount]",
        ),
        (
            lambda f: f.assign(amount=f["amount"].where(f.index % 50 != 0, np.inf)),
            "training.finite[amount]",
        ),
        (lambda f: f.assign(amount=-f["amount"]), "training.range[amount]"),
        (lambda f: f.head(500), "training.row_count"),
        (lambda f: f.assign(is_fraud=0), "training.positives"),
        (lambda f: f.assign(is_fraud=(f.index % 3 == 0).astype(int)), "training.label_rate"),
        (
            lambda f: f.assign(is_fraud=f["is_fraud"].where(f.index % 7 != 0)),
            "training.label_present",
        ),
        (lambda f: pd.concat([f, f.head(50)]), "training.duplicate_keys"),
        (
            lambda f: f.assign(channel=f["channel"].replace("online", "telepathy")),
            "training.categories[channel]",
        ),
        (lambda f: f.assign(card_amount_max_7d=f["is_fraud"] * 1000.0), "training.leakage"),
        (
            lambda f: f.assign(
                merchant_txn_count_7d=np.nan,
                merchant_amount_mean_7d=np.nan,
                merchant_fraud_rate_30d=np.nan,
                merchant_labeled_txn_30d=np.nan,
            ),
            "training.freshness[merchant_features]",
        ),
        (lambda f: f[f["event_timestamp"].dt.day % 2 == 0], "training.window_coverage"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_check_fails_on_its_violation(good: pd.DataFrame, corrupt, check: str) -> None:
    report = _run(corrupt(good.copy()))
    assert check in _failed(report), report.summary()
    with pytest.raises(ValidationFailed) as error:
        enforce(report)
    failed = next(c for c in report.failed if c.name == check)
    # the message names the check, the observed value and the threshold
    assert failed.describe() in str(error.value)
    assert "observed" in failed.describe() and "threshold" in failed.describe()


def test_timestamps_in_the_future_are_caught_in_recent_rows(good: pd.DataFrame) -> None:
    window = window_of(SPEC, good)
    recent = good.tail(100).drop(columns=["is_fraud"]).copy()
    recent["event_timestamp"] = pd.Timestamp(window.as_of) + pd.Timedelta(days=3)
    report = validate(SPEC, good, recent, window, source="test")
    assert _failed(report) >= {"recent.no_future_timestamps"}
    assert "recent.no_future_timestamps: observed 100" in report.summary()


def test_empty_training_window(good: pd.DataFrame) -> None:
    report = _run(good.iloc[:0])
    assert {"training.row_count", "training.positives", "training.window_coverage"} <= _failed(
        report
    )


def test_every_failed_check_is_named_at_once(good: pd.DataFrame) -> None:
    frame = good.assign(amount=-good["amount"], channel="telepathy", is_fraud=0)
    summary = _run(frame).summary()
    for name in ("training.range[amount]", "training.categories[channel]", "training.positives"):
        assert name in summary


def test_report_is_written_as_json_and_html(good: pd.DataFrame, tmp_path: Path) -> None:
    report = _run(good.assign(amount=-good["amount"]))
    json_path, html_path = report.write(tmp_path)
    assert '"passed": false' in json_path.read_text()
    page = html_path.read_text()
    assert "FAILED" in page and "training.range[amount]" in page


def _one_day(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    days = frame["event_timestamp"].dt.date
    day = sorted(days.unique())[len(days.unique()) // 2]
    return days == day, day.isoformat()


def test_one_day_of_nulls_cannot_hide_in_a_good_window(good: pd.DataFrame) -> None:
    on_day, day = _one_day(good)
    broken = good.copy()
    # a quarter of one day's amounts go missing: over the window that is under 2 %, the
    # ceiling, so only the per-day rule can see it
    rows = broken.index[on_day][: int(on_day.sum() * 0.25)]
    broken.loc[rows, "amount"] = np.nan
    report = _run(broken)
    assert broken["amount"].isna().mean() < 0.02
    assert _failed(report) == {"training.null_rate[amount].per_day"}
    failed = report.failed[0]
    assert failed.observed[0].startswith(f"{day}: 0.2"), failed.observed
    assert f"{day}: 0.2" in report.summary()


def test_one_day_of_broken_labels_cannot_hide_in_a_good_window(good: pd.DataFrame) -> None:
    on_day, day = _one_day(good)
    broken = good.copy()
    # an upstream bug marks a third of one day's transactions as fraud
    broken.loc[broken.index[on_day][::3], "is_fraud"] = 1
    report = _run(broken)
    low, high = SPEC.validation.label_rate
    assert low <= broken["is_fraud"].mean() <= high
    assert "training.label_rate.per_day" in _failed(report)
    assert "training.label_rate" not in _failed(report)
    [failed] = [c for c in report.failed if c.name == "training.label_rate.per_day"]
    assert failed.observed == [failed.observed[0]] and failed.observed[0].startswith(day)


def test_one_day_without_a_channel_cannot_hide_in_a_good_window(good: pd.DataFrame) -> None:
    on_day, day = _one_day(good)
    broken = good.copy()
    # an upstream bug maps one day's online transactions to chip
    broken.loc[on_day & (broken["channel"] == "online"), "channel"] = "chip"
    report = _run(broken)
    low, high = SPEC.validation.category_shares["channel"]["online"]
    assert low <= (broken["channel"] == "online").mean() <= high
    assert _failed(report) == {"training.category_share[channel=online].per_day"}
    [failed] = report.failed
    assert failed.observed == [failed.observed[0]] and failed.observed[0].startswith(f"{day}: 0 (")


def test_a_window_share_out_of_bounds_fails_the_window_rule(good: pd.DataFrame) -> None:
    flooded = good.copy()
    flooded.loc[flooded.index[::2], "channel"] = "online"  # about 0.63 online everywhere
    failed = _failed(_run(flooded))
    assert "training.category_share[channel=online]" in failed
    assert "training.category_share[channel=online].per_day" in failed


def test_per_day_rules_tolerate_ordinary_daily_noise(good: pd.DataFrame) -> None:
    # the good window's daily label rates range widely on ~550 rows a day; none is flagged
    rates = good.groupby(good["event_timestamp"].dt.date)["is_fraud"].mean()
    assert rates.max() / max(rates.min(), 1e-9) > 2
    assert not [c for c in _run(good).failed if c.name.endswith(".per_day")]

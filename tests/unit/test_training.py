"""Time splits, model inputs and metrics of the training stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftline.errors import DriftlineError
from driftline.settings import REPO_ROOT
from driftline.specs import load_spec
from driftline.training import (
    fit,
    metrics,
    model_inputs,
    predict,
    reference_sample,
    time_split,
)
from tests.frames import joined, window_of

SPEC = load_spec("fraud_detection", REPO_ROOT / "include" / "models")


@pytest.fixture(scope="module")
def frame(baseline_offline: Path) -> pd.DataFrame:
    return joined(baseline_offline).sample(frac=1.0, random_state=3)  # shuffled on purpose


def test_time_splits_never_overlap_and_respect_order(frame: pd.DataFrame) -> None:
    window = window_of(SPEC, frame)
    split = time_split(frame, SPEC, window)
    assert len(split.train) + len(split.validation) + len(split.holdout) == len(frame)
    assert split.train["event_timestamp"].max() < split.validation["event_timestamp"].min()
    assert split.validation["event_timestamp"].max() < split.holdout["event_timestamp"].min()
    assert set(split.train["transaction_id"]).isdisjoint(split.holdout["transaction_id"])
    holdout_days = split.holdout["event_timestamp"].dt.date.nunique()
    validation_days = split.validation["event_timestamp"].dt.date.nunique()
    assert (holdout_days, validation_days) == (
        SPEC.training.holdout_days,
        SPEC.training.validation_days,
    )
    assert split.holdout["event_timestamp"].max() < pd.Timestamp(window.end)


def test_a_time_ordered_frame_splits_as_a_shuffled_one(frame: pd.DataFrame) -> None:
    """A built training set is stored in time order and splits by position, without the
    sorted copy; the parts must be the rows, order and index a shuffled frame gives."""
    window = window_of(SPEC, frame)
    ordered = frame.sort_values("event_timestamp", kind="stable")
    assert ordered["event_timestamp"].is_unique  # no ties: one right order
    fast, slow = time_split(ordered, SPEC, window), time_split(frame, SPEC, window)
    for part in ("train", "validation", "holdout"):
        pd.testing.assert_frame_equal(getattr(fast, part), getattr(slow, part), obj=part)
    assert (fast.validation_start, fast.holdout_start) == (
        slow.validation_start,
        slow.holdout_start,
    )


def test_reference_sample_is_the_concatenated_parts_sample(frame: pd.DataFrame) -> None:
    """The drift reference: the rows ``pd.concat([train, validation]).sample(n, seed)``
    picked before (the stored references of earlier versions stay comparable), taken
    without the concatenated copy of every training row."""
    split = time_split(frame, SPEC, window_of(SPEC, frame))
    columns = [SPEC.timestamp_column, *SPEC.feature_names, SPEC.label]
    n = min(SPEC.training.reference_sample_rows, len(split.train) + len(split.validation))
    expected = pd.concat([split.train, split.validation]).sample(
        n=n, random_state=SPEC.training.seed
    )[columns]
    sample = reference_sample(split, SPEC)
    assert len(sample) == n and (split.validation.index.isin(sample.index)).any()
    pd.testing.assert_frame_equal(sample, expected)


def test_model_inputs_follow_the_spec(frame: pd.DataFrame) -> None:
    inputs = model_inputs(
        frame.assign(channel=frame["channel"].replace("online", "telepathy")), SPEC
    )
    assert inputs.names == SPEC.feature_names
    assert inputs.values.dtype == "float64" and inputs.values.shape == (len(frame), 13)
    assert inputs.types == ["c" if n in SPEC.categorical else "float" for n in SPEC.feature_names]
    channel = inputs.values[:, inputs.names.index("channel")]
    # codes in the spec's fixed list (chip, contactless, online); unknown -> missing
    assert set(np.unique(channel[~np.isnan(channel)])) == {0.0, 1.0}
    assert np.isnan(channel).sum() == (frame["channel"] == "online").sum()
    amount = inputs.values[:, inputs.names.index("amount")]
    np.testing.assert_array_equal(amount, frame["amount"].to_numpy(dtype="float64"))


def test_the_matrix_scores_as_xgboost_scores_pandas_categoricals(frame: pd.DataFrame) -> None:
    """The serving path (plain lists, one row at a time) and the training path (a frame) give
    the scores XGBoost gives for pandas categoricals over the spec's category lists — with
    unknown categories and nulls — so no model scores differently for how rows arrive."""
    import xgboost as xgb

    split = time_split(frame, SPEC, window_of(SPEC, frame))
    booster = fit(SPEC, split)
    rows = split.holdout.head(300).copy()
    rows.loc[rows.index[:20], "merchant_category"] = "casino"
    rows.loc[rows.index[20:40], "channel"] = None
    rows.loc[rows.index[40:60], "card_amount_mean_7d"] = np.nan
    as_pandas = pd.DataFrame(
        {
            name: (
                pd.Categorical(rows[name].astype("object"), categories=list(SPEC.categorical[name]))
                if name in SPEC.categorical
                else pd.to_numeric(rows[name], errors="coerce").astype("float64")
            )
            for name in SPEC.feature_names
        }
    )
    expected = booster.predict(xgb.DMatrix(as_pandas, enable_categorical=True))
    np.testing.assert_array_equal(predict(booster, rows, SPEC), expected)
    records = rows[SPEC.feature_names].astype("object").where(rows.notna(), None)
    one_by_one = [
        predict(booster, {k: [v] for k, v in record.items()}, SPEC)[0]
        for record in records.to_dict("records")
    ]
    np.testing.assert_array_equal(np.array(one_by_one, dtype="float32"), expected)


def test_training_is_deterministic_and_learns(frame: pd.DataFrame) -> None:
    split = time_split(frame, SPEC, window_of(SPEC, frame))
    first, second = fit(SPEC, split), fit(SPEC, split)
    scores = predict(first, split.holdout, SPEC)
    np.testing.assert_array_equal(scores, predict(second, split.holdout, SPEC))
    result = metrics(split.holdout["is_fraud"].to_numpy(), scores, 0.01)
    assert result["roc_auc"] > 0.85
    assert result["pr_auc"] > 5 * split.holdout["is_fraud"].mean()


def test_metrics_known_values() -> None:
    labels = np.array([0, 0, 1, 1])
    perfect = metrics(labels, np.array([0.1, 0.2, 0.8, 0.9]), 0.01)
    assert (
        perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0 and perfect["recall_at_fpr"] == 1.0
    )
    inverted = metrics(labels, np.array([0.9, 0.8, 0.2, 0.1]), 0.01)
    assert inverted["roc_auc"] == 0.0
    with pytest.raises(DriftlineError, match="single class"):
        metrics(np.array([0, 0]), np.array([0.1, 0.2]), 0.01)


def test_evaluation_report_sample_ignores_row_order(
    frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline import evaluation

    small = 2_000
    monkeypatch.setattr(evaluation, "REPORT_SAMPLE_ROWS", small)
    columns = SPEC.feature_names
    first = evaluation.report_frame(SPEC, frame, columns)
    second = evaluation.report_frame(SPEC, frame.sample(frac=1.0, random_state=99), columns)
    assert len(first) == small < len(frame)
    pd.testing.assert_frame_equal(first, second)


def test_the_training_set_is_read_with_what_models_score_on(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """Training and evaluation read the time, the features and the label, plus any input
    column an older version was trained on; ids stay on disk."""
    from types import SimpleNamespace

    from driftline.training import read_training_set
    from driftline.training_set import TRAINING_FILE

    stored = frame.assign(retired_feature=1.5)
    stored.to_parquet(tmp_path / TRAINING_FILE, index=False)
    read = read_training_set(tmp_path, SPEC)
    assert list(read.columns) == [SPEC.timestamp_column, *SPEC.feature_names, SPEC.label]
    assert "transaction_id" in frame.columns and "transaction_id" not in read.columns
    pd.testing.assert_frame_equal(read, stored[list(read.columns)].reset_index(drop=True))

    older = SimpleNamespace(feature_names=[*SPEC.feature_names[:3], "retired_feature"])
    with_older = read_training_set(tmp_path, SPEC, [older])
    assert with_older["retired_feature"].eq(1.5).all()
    # a column no file holds is left to predict() to name, as before
    gone = SimpleNamespace(feature_names=["never_stored"])
    assert "never_stored" not in read_training_set(tmp_path, SPEC, [gone]).columns

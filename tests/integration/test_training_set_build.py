"""The training set Feast builds: one file, the same every time, whole or joined in pieces.

The build streams Feast's join to disk and sorts it there (10M labeled rows in bounded
memory); what it writes must still be Feast's answer for the window's rows, in time order,
byte for byte the same on a rerun and when the join goes in pieces."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from driftline import feast_offline
from driftline.feature_store import get_store
from driftline.settings import get_settings
from driftline.specs import load_spec
from driftline.training_set import (
    TRAINING_FILE,
    build_training_set,
    entity_rows,
    training_window,
)
from tests.conftest import applied_feast_home

AS_OF = datetime(2026, 1, 22, tzinfo=UTC)  # the baseline world's 21 days end here


def test_build_writes_feasts_answer_in_time_order_the_same_every_time(
    tmp_path_factory: pytest.TempPathFactory,
    baseline_offline: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with applied_feast_home(tmp_path_factory, baseline_offline) as home:
        settings = get_settings()
        spec = load_spec("fraud_detection", settings.models_dir)
        first = build_training_set(spec, as_of=AS_OF, run_dir=home / "first")
        again = build_training_set(spec, as_of=AS_OF, run_dir=home / "again")
        monkeypatch.setattr(feast_offline, "CHUNK_ROWS", 997)
        pieces = build_training_set(spec, as_of=AS_OF, run_dir=home / "pieces")
        assert first.rows > 5 * 997
        assert first.sha256 == again.sha256 == pieces.sha256
        assert (home / "first" / TRAINING_FILE).read_bytes() == (
            home / "pieces" / TRAINING_FILE
        ).read_bytes()

        stored = pd.read_parquet(home / "first" / TRAINING_FILE)
        assert stored[spec.timestamp_column].is_monotonic_increasing
        assert (len(stored), int(stored[spec.label].sum())) == (first.rows, first.positives)
        assert list(stored.columns) == first.columns

        # Feast's own answer for the same rows, through its DuckDB store and to_df
        window = training_window(spec, AS_OF)
        rows = entity_rows(spec, window, settings.offline_dir)
        labeled = rows[
            (rows[spec.timestamp_column] < window.end)
            & (rows["label_available_at"] <= window.as_of)
        ]
        store = get_store(settings, offline_store="duckdb")
        service = store.get_feature_service(spec.feature_service)
        expected = store.get_historical_features(entity_df=labeled, features=service).to_df()
        order = [spec.timestamp_column, *spec.entity_keys, "transaction_id"]
        expected = expected.sort_values(order, ignore_index=True)[stored.columns]
        pd.testing.assert_frame_equal(stored, expected, check_exact=True)

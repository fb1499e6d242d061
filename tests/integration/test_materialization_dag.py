"""feature_materialization under `airflow dags test`: new days reach the online store and
every feature view's asset is updated."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from driftline import offline
from driftline.datagen import generate
from driftline.feature_store import apply_repo, get_store
from tests.airflow_env import airflow_env, migrated_database, run_airflow
from tests.conftest import SMALL

pytestmark = pytest.mark.airflow


def test_dag_materializes_new_days_and_updates_assets(
    offline_copy: Path, driftline_home: Path, airflow_db_template: Path
) -> None:
    apply_repo()
    generate(offline_dir=offline_copy, days=1, scenario="covariate_shift", **SMALL)
    newest = offline.list_days(offline_copy)[-1]
    airflow_home = driftline_home / "airflow"
    migrated_database(airflow_db_template, airflow_home)
    env = airflow_env(airflow_home)

    # The run whose data interval is the newest day: [newest, newest + 1 day).
    logical = datetime(newest.year, newest.month, newest.day, tzinfo=UTC) + timedelta(days=1)
    result = run_airflow(["dags", "test", "feature_materialization", logical.isoformat()], env)
    assert "state=success" in result.stdout + result.stderr

    # The online store serves the newest day's values.
    cards = pd.read_parquet(offline.partition_path(offline_copy, "card_features", newest))
    latest = cards.sort_values("event_timestamp").groupby("card_id").tail(1).set_index("card_id")
    sample = latest.index[:25].tolist()
    served = (
        get_store()
        .get_online_features(
            features=["card_features:card_txn_count_24h", "card_features:card_amount_max_7d"],
            entity_rows=[{"card_id": int(card)} for card in sample],
        )
        .to_df()
        .set_index("card_id")
    )
    assert (
        served["card_txn_count_24h"].tolist() == latest.loc[sample, "card_txn_count_24h"].tolist()
    )
    pd.testing.assert_series_equal(
        served["card_amount_max_7d"], latest.loc[sample, "card_amount_max_7d"], check_names=False
    )

    # One asset event per feature view, carrying the window and row count.
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
        ).fetchall()
    events = {uri: json.loads(extra) for uri, extra in rows}
    assert set(events) == {
        "feast://feature_view/card_features",
        "feast://feature_view/merchant_features",
    }
    # the window starts one hour early (the overlap) so boundary rows are never missed
    previous = pd.read_parquet(
        offline.partition_path(offline_copy, "card_features", newest - timedelta(days=1))
    )
    overlap = (previous["event_timestamp"] >= logical - timedelta(days=1, hours=1)).sum()
    assert overlap > 0
    assert events["feast://feature_view/card_features"]["rows"] == len(cards) + overlap
    assert events["feast://feature_view/merchant_features"]["rows"] == SMALL["n_merchants"]

"""Fair champion/challenger comparisons on a real Feast store and MLflow registry, in worlds
where the right answer is known: a model never judged on rows it trained on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from driftline import monitoring, registry, retrain
from driftline.datagen import generate
from driftline.feature_store import apply_repo
from driftline.lineage import RunContext
from tests.conftest import EARLY_START, WORLD, isolate_environment

MODEL = "fraud_detection"
BASELINE_DAYS = 50  # 2025-12-22 .. 2026-02-09
DRIFT_DAYS = 33  # concept drift from 2026-02-10 .. 2026-03-14


@pytest.fixture(scope="module")
def concept_drift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """50 baseline days, then four to five weeks in which fraudsters change tactics; a first
    champion trained before the drift (as of 2026-02-10)."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("fair") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        generate(offline_dir=home / "offline", days=BASELINE_DAYS, start=EARLY_START, **WORLD)
        generate(offline_dir=home / "offline", scenario="concept_drift", days=DRIFT_DAYS, **WORLD)
        apply_repo()
        first = retrain.run_all(
            MODEL, as_of=datetime(2026, 2, 10, tzinfo=UTC), context=RunContext(run_id="v1")
        )
        assert first["decision"]["outcome"] == "promote", first["decision"]
        yield home


def test_newer_challenger_beats_a_champion_that_missed_the_drift(concept_drift: Path) -> None:
    result = retrain.run_all(
        MODEL, as_of=datetime(2026, 3, 15, tzinfo=UTC), context=RunContext(run_id="v2")
    )
    decision = result["decision"]
    assert decision["outcome"] == "promote", decision["reasons"]
    assert registry.alias_version(MODEL, registry.CHAMPION) == "2"
    # judged on the challenger's holdout, every row after both models' training data
    assert decision["trained_until"] == {
        "challenger": "2026-03-04T00:00:00+00:00",
        "champion": "2026-01-30T00:00:00+00:00",
    }
    assert decision["comparison_window"] == [
        "2026-03-04T00:00:00+00:00",
        "2026-03-08T00:00:00+00:00",
    ]
    interval = decision["interval"]
    assert interval["low"] >= 0.005, interval
    assert any("90% interval" in reason for reason in decision["reasons"])
    assert {piece["value"] for piece in decision["slices"]} == {"chip", "contactless", "online"}
    audit = monitoring.audit_log(MODEL)[0]
    assert audit["action"] == "promoted"
    assert audit["metrics"]["comparison_window"] == decision["comparison_window"]


def test_a_champion_trained_after_the_challengers_holdout_is_inconclusive(
    concept_drift: Path,
) -> None:
    # champion v2 trained until 2026-03-04; as of 2026-03-11 the window ends on 03-04, so
    # the challenger's holdout (02-28 .. 03-04) is rows the champion learned: no fair set
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    result = retrain.run_all(
        MODEL, as_of=datetime(2026, 3, 11, tzinfo=UTC), context=RunContext(run_id="v3")
    )
    decision = result["decision"]
    assert decision["outcome"] == "inconclusive", decision["reasons"]
    assert decision["champion_metrics"] is None
    assert decision["comparison_rows"] == 0
    assert decision["comparison_window"] == [
        "2026-03-04T00:00:00+00:00",
        "2026-03-04T00:00:00+00:00",
    ]
    assert any(
        "inconclusive: no fair comparison" in r
        and "comparison set too small: 0 rows < 1000" in r
        and f"a fair comparison becomes possible as of {decision['fair_from']}" in r
        for r in decision["reasons"]
    ), decision["reasons"]
    # one day of labels after 2026-03-04 is enough in this world; they mature 7 days later
    assert decision["fair_from"] == "2026-03-12"
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    tags = registry.version_info(MODEL, registry.alias_version(MODEL, registry.CHALLENGER)).tags
    assert tags["decision"] == "inconclusive"
    assert monitoring.audit_log(MODEL)[0]["action"] == "inconclusive"

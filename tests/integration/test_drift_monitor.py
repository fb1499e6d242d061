"""The drift monitor on the generator's scenarios, with a real Feast store, a real MLflow
registry and the real monitoring store. One champion is trained on baseline data; each
scenario continues the same world in its own offline store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftline import monitoring, offline, predlog, registry, retrain
from driftline.datagen import SCENARIO_MOVES, WATCHED_COLUMNS, generate
from driftline.drift import NoChampion, _features, column_drift, current_window, monitor
from driftline.errors import DriftlineError
from driftline.evaluation import load_reference
from driftline.feature_store import apply_repo
from driftline.lineage import RunContext
from driftline.settings import get_settings
from driftline.specs import load_spec
from driftline.training import PREDICTION
from tests.conftest import WORLD, WORLD_DAYS, isolate_environment

MODEL = "fraud_detection"
CHAMPION_AS_OF = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=WORLD_DAYS)
SCENARIO_DAYS = {"baseline": 3, "covariate_shift": 3, "concept_drift": 10}


@dataclass
class World:
    home: Path
    patch: pytest.MonkeyPatch

    def use(self, scenario: str) -> datetime:
        """Point the settings at the scenario's own offline store and Feast registry
        (MLflow and the monitoring store stay shared); returns the day after its data."""
        self.patch.setenv("DRIFTLINE_OFFLINE_DIR", str(self.home / f"offline_{scenario}"))
        self.patch.setenv(
            "DRIFTLINE_FEAST_REGISTRY", str(self.home / f"registry_{scenario}.sqlite")
        )
        self.patch.setenv("DRIFTLINE_FEAST_ONLINE_PATH", str(self.home / f"online_{scenario}.db"))
        newest = offline.list_days(self.home / f"offline_{scenario}")[-1]
        return datetime(newest.year, newest.month, newest.day, tzinfo=UTC) + timedelta(days=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, world_offline: Path) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("drift") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        found = World(home, patch)
        for scenario, days in SCENARIO_DAYS.items():
            shutil.copytree(world_offline, home / f"offline_{scenario}")
            found.use(scenario)
            generate(
                offline_dir=home / f"offline_{scenario}", days=days, scenario=scenario, **WORLD
            )
            apply_repo()
        found.use("baseline")
        with pytest.raises(NoChampion, match="has no champion yet; nothing to monitor"):
            monitor(load_spec(MODEL), as_of=CHAMPION_AS_OF, context=RunContext(run_id="early"))
        retrain.run_all(MODEL, as_of=CHAMPION_AS_OF, context=RunContext(run_id="champion"))
        yield found


def _monitor(world: World, scenario: str, run_id: str):
    as_of = world.use(scenario)
    return monitor(load_spec(MODEL), as_of=as_of, context=RunContext(dag_id="test", run_id=run_id))


def _events() -> list[dict]:
    return monitoring.drift_event_log(MODEL, url=get_settings().monitoring_db_url)


def test_baseline_raises_no_event(world: World) -> None:
    before = len(_events())
    result = _monitor(world, "baseline", "baseline")
    assert result.verdict == "no_drift", result.reasons
    assert not set(result.drifted_columns) & set(WATCHED_COLUMNS)
    assert not result.prediction["drifted"]
    served = result.prediction["served"]
    assert (served["rows"], served["drifted"], served["score"]) == (0, False, None)
    assert served["note"].startswith("no served traffic in the window")
    assert result.event_id is None and len(_events()) == before
    stored = monitoring.drift_report_log(MODEL)[0]
    assert (stored["id"], stored["verdict"]) == (result.report_id, "no_drift")


def test_covariate_shift_drifts_exactly_the_moved_features(world: World) -> None:
    result = _monitor(world, "covariate_shift", "covariate")
    assert result.verdict == "drift"
    for column in WATCHED_COLUMNS:
        assert (column in result.drifted_columns) == (
            column in SCENARIO_MOVES["covariate_shift"]
        ), (
            column,
            result.columns[column],
        )
    assert result.reasons[0].startswith("data drift:")
    event = monitoring.drift_event(result.event_id)
    assert event["status"] == "emitted" and event["report_id"] == result.report_id
    assert event["payload"]["share_drifted"] == pytest.approx(result.share_drifted, abs=1e-4)
    assert set(event["payload"]["top_features"]) <= set(result.drifted_columns)
    assert event["payload"]["report_uri"].startswith("runs:/")


def test_concept_drift_is_seen_as_performance_decay(world: World) -> None:
    result = _monitor(world, "concept_drift", "concept")
    decay = result.performance
    assert decay["decayed"], decay
    assert decay["current_value"] < decay["training_value"] - 0.1
    assert any(reason.startswith("performance decay: pr_auc") for reason in result.reasons)
    # the inputs themselves barely move: concept drift is not covariate shift
    assert not set(result.drifted_columns) & {"amount", "hour", "distance_from_home_km"}
    assert result.event_id is not None


@pytest.mark.parametrize("scenario", ["baseline", "covariate_shift", "concept_drift"])
def test_sampled_verdicts_match_full_data(world: World, scenario: str) -> None:
    spec = load_spec(MODEL)
    as_of = world.use(scenario)
    reference = load_reference(MODEL, registry.alias_version(MODEL, registry.CHAMPION))
    window = current_window(
        spec.model_copy(update={"drift": spec.drift.model_copy(update={"current_window_days": 3})}),
        as_of,
        get_settings().offline_dir,
    )
    current = _features(spec, window, get_settings(), labeled=False)
    full, _, _ = column_drift(spec, reference, current, sample_rows=10_000_000)
    # samples smaller than both sides: a distance estimated from n rows errs by ~1/sqrt(n);
    # measured at 4,000 rows a standard deviation of at most 0.015 per column (20 seeds,
    # largest gap 0.04) near the thresholds, plus up to ~10 % of a large distance, which is
    # normalized by the sampled reference's spread. Bounded at 0.06 + 15 % here; at the
    # default 50,000 rows the absolute part scales to 0.017 against thresholds of 0.1.
    rows = 4_000

    def tolerance(score: float) -> float:
        return 0.06 + 0.15 * score

    assert len(reference) > rows and len(current) > rows
    # verdicts farther than the tolerance from their threshold cannot flip
    clear_cut = [
        c for c, v in full.items() if abs(v["score"] - v["threshold"]) > tolerance(v["score"])
    ]
    assert len(clear_cut) >= 5
    for seed in range(5):
        sampled, _, _ = column_drift(spec, reference, current, sample_rows=rows, seed=seed)
        scores = {c: (round(full[c]["score"], 4), round(sampled[c]["score"], 4)) for c in full}
        assert all(abs(a - b) <= tolerance(a) for a, b in scores.values()), (seed, scores)
        assert {c: sampled[c]["drifted"] for c in clear_cut} == {
            c: full[c]["drifted"] for c in clear_cut
        }, (seed, scores)
    # the sample depends on the rows, not on the order Feast returned them in
    shuffled = current.sample(frac=1.0, random_state=7)
    again, _, _ = column_drift(spec, reference, shuffled, sample_rows=rows, seed=0)
    first, _, _ = column_drift(spec, reference, current, sample_rows=rows, seed=0)
    assert {c: again[c]["score"] for c in full} == pytest.approx(
        {c: first[c]["score"] for c in full}, abs=1e-9
    )


def test_bad_current_window_is_not_drift(world: World) -> None:
    spec = load_spec(MODEL)
    as_of = world.use("baseline")
    newest = (as_of - timedelta(days=1)).date()
    path = offline.partition_path(world.home / "offline_baseline", "transactions", newest)
    original = pd.read_parquet(path)
    before = len(_events())

    def write(frame: pd.DataFrame) -> None:
        pq.write_table(
            pa.Table.from_pandas(frame, schema=offline.TRANSACTIONS_SCHEMA, preserve_index=False),
            path,
        )

    try:
        write(original.assign(channel=None))
        with pytest.raises(
            DriftlineError, match=r"all-null columns \['channel'\]; bad data is not drift"
        ):
            monitor(spec, as_of=as_of, context=RunContext(run_id="all-null"))
        write(original.iloc[:0])
        with pytest.raises(DriftlineError, match=r"has 0 rows; no drift verdict, no event"):
            monitor(spec, as_of=as_of, context=RunContext(run_id="empty"))
        original.drop(columns=["amount"]).to_parquet(path, index=False)
        with pytest.raises(DriftlineError, match=r"schema change .* missing columns \['amount'\]"):
            monitor(spec, as_of=as_of, context=RunContext(run_id="missing"))
    finally:
        write(original)
    assert len(_events()) == before


def test_no_data_before_as_of(world: World) -> None:
    world.use("baseline")
    with pytest.raises(DriftlineError, match="the current window has 0 rows"):
        monitor(
            load_spec(MODEL), as_of=datetime(2025, 1, 1, tzinfo=UTC), context=RunContext(run_id="x")
        )


def _served_rows(scores: pd.Series, window_start: datetime, version: str, arm: str) -> list[dict]:
    moments = [window_start + timedelta(seconds=30 * i) for i in range(len(scores))]
    return [
        {
            "request_id": f"{arm}-{i}",
            "scored_at": moment,
            "event_timestamp": moment,
            "transaction_id": f"t{i}",
            "model": MODEL,
            "version": version,
            "arm": arm,
            "score": float(score),
            "latency_ms": 3.0,
            "status": "ok",
            "error": None,
            "card_id": i,
            "merchant_id": i % 150,
        }
        for i, (score, moment) in enumerate(zip(scores, moments, strict=True))
    ]


def test_shifted_served_scores_are_prediction_drift_on_served_traffic(world: World) -> None:
    """The window's data is the baseline (no drift on it, see above); the scores the service
    answered for it are shifted upward, as a broken feature pipeline in serving would."""
    spec = load_spec(MODEL)
    as_of = world.use("baseline")
    settings = get_settings()
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    window = current_window(spec, as_of, settings.offline_dir)
    reference = load_reference(MODEL, champion)
    shifted = (reference[PREDICTION].iloc[:1000] * 3 + 0.2).clip(upper=1.0)
    keys = {"card_id": pa.int64(), "merchant_id": pa.int64()}
    predlog.write_rows(
        settings.offline_dir, MODEL, _served_rows(shifted, window.start, champion, "champion"), keys
    )
    canary = reference[PREDICTION].iloc[:300]
    predlog.write_rows(
        settings.offline_dir, MODEL, _served_rows(canary, window.start, "999", "candidate"), keys
    )
    try:
        result = monitor(spec, as_of=as_of, context=RunContext(dag_id="test", run_id="served"))
    finally:
        shutil.rmtree(predlog.model_dir(settings.offline_dir, MODEL))
    served = result.prediction["served"]
    assert served["drifted"], served
    assert served["score"] > spec.drift.prediction_threshold
    assert (served["rows"], served["compared_rows"]) == (1300, 1000)
    assert served["versions"] == {champion: 1000, "999": 300}
    assert not result.prediction["drifted"]  # the champion re-scoring the window: unmoved
    assert result.verdict == "drift"
    assert [r for r in result.reasons if r.startswith("served prediction drift: score ")]
    assert result.event_extra()["served_prediction_drift"] is True
    stored = monitoring.drift_report_log(MODEL)[0]
    assert stored["id"] == result.report_id
    assert stored["prediction"]["served"]["versions"] == {champion: 1000, "999": 300}

"""The drift monitor: is the champion still looking at the world it was trained on?

Three questions, each against the champion version's own reference sample and metrics:

* data drift — Evidently's per-column drift test on the current window (the newest day(s)
  of arriving transactions with their Feast features) against the reference sample, with
  the spec's method and threshold per column type;
* prediction drift — the champion's score distribution on the current window against its
  scores on the reference: once as the champion re-scores the window's transactions, and once
  on served traffic, the scores the scoring service answered for them (the prediction log,
  :mod:`driftline.predlog`);
* performance decay — where labels have matured (the newest ``performance_window_days``
  older than ``label_delay_days``), the champion's primary metric against its training
  holdout value.

Statistics are computed on a uniform sample of at most ``sample_rows`` rows per side, drawn
by seeded row hashes so the same data gives the same verdict whatever order it arrives in.
The drift scores are distribution distances whose sampling error shrinks like 1/sqrt(n):
measured at 4,000 rows a standard deviation of at most 0.015 per column, so about 0.004 at
the default 50k rows, against thresholds of 0.1 (tests/integration/test_drift_monitor.py
bounds it; `make bench` compares verdicts with Evidently on 1M full rows).
Bad data is not drift: a window with no rows, missing columns or all-null columns fails
with a clear message and raises no event.

Served traffic: the logged rows whose transaction time (``event_timestamp``) falls in the
current window, read from the log's partitions scored at or after the window's start (a
transaction is scored when it happens, or later when a calendar is replayed). Only rows the
current champion version answered on the champion arm are compared with its reference; the
report counts every served row by version and arm. No served traffic in the window, or
fewer than ``drift.min_served_rows`` compared rows, is said in the report and is no verdict
either way: not an error, not drift.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline import monitoring, offline, predlog, registry
from driftline.errors import DriftlineError
from driftline.files import write_json
from driftline.lineage import RunContext, run_dir
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec
from driftline.training import PREDICTION, metrics, predict
from driftline.training_set import Window

log = logging.getLogger(__name__)

REPORT_FILE = "drift_report.html"
SUMMARY_FILE = "drift_summary.json"


class NoChampion(DriftlineError):
    """There is nothing to monitor yet."""


@dataclass
class DriftResult:
    model: str
    champion_version: str
    window_start: str
    window_end: str
    current_rows: int
    reference_rows: int
    columns: dict[str, dict[str, Any]]
    share_drifted: float
    prediction: dict[str, Any]
    performance: dict[str, Any]
    verdict: str
    reasons: list[str] = field(default_factory=list)
    report_uri: str = ""
    report_id: int | None = None
    event_id: int | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return sorted(name for name, column in self.columns.items() if column["drifted"])

    def top_features(self, n: int = 5) -> list[str]:
        drifted = [
            (c["score"] / c["threshold"], name) for name, c in self.columns.items() if c["drifted"]
        ]
        return [name for _, name in sorted(drifted, reverse=True)[:n]]

    def event_extra(self) -> dict[str, Any]:
        """The summary carried by the drift asset event."""
        return {
            "model": self.model,
            "drift_event_id": self.event_id,
            "drift_report_id": self.report_id,
            "champion_version": self.champion_version,
            "verdict": self.verdict,
            "share_drifted": round(self.share_drifted, 4),
            "top_features": self.top_features(),
            "prediction_drift": self.prediction.get("drifted", False),
            "served_prediction_drift": (self.prediction.get("served") or {}).get("drifted", False),
            "performance_decay": self.performance.get("decayed", False),
            "reasons": self.reasons,
            "report_uri": self.report_uri,
            "window": [self.window_start, self.window_end],
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted_columns": self.drifted_columns}


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def current_window(spec: ModelSpec, as_of: datetime, offline_dir: Path) -> Window:
    """The newest ``current_window_days`` days of arriving data at or before ``as_of``."""
    days = [d for d in offline.list_days(offline_dir, spec.entity_table) if _day_start(d) < as_of]
    if not days:
        raise DriftlineError(
            f"no {spec.entity_table} partitions before {as_of.isoformat()} in {offline_dir}: "
            "the current window has 0 rows"
        )
    end = min(as_of, _day_start(days[-1]) + timedelta(days=1))
    start = end - timedelta(days=spec.drift.current_window_days)
    return Window(start=start, end=end, as_of=as_of)


def _features(
    spec: ModelSpec, window: Window, settings: Settings, *, labeled: bool
) -> pd.DataFrame:
    from driftline.feature_store import get_store
    from driftline.training_set import entity_rows

    rows = entity_rows(spec, window, settings.offline_dir)
    rows = rows[rows[spec.timestamp_column] < window.end]
    if labeled:
        rows = rows[rows["label_available_at"] <= window.as_of]
    else:
        rows = rows.drop(columns=[spec.label])
    if rows.empty:
        return rows
    store = get_store(settings)
    service = store.get_feature_service(spec.feature_service)
    return store.get_historical_features(entity_df=rows, features=service).to_df()


def check_current(spec: ModelSpec, frame: pd.DataFrame, window: Window) -> None:
    """Bad data is not drift: refuse a window that cannot be compared, naming why."""
    where = f"current window [{window.start.isoformat()}, {window.end.isoformat()})"
    if frame.empty:
        raise DriftlineError(f"{where} of {spec.name} has 0 rows; no drift verdict, no event")
    missing = [c for c in spec.feature_names if c not in frame.columns]
    if missing:
        raise DriftlineError(
            f"{where} of {spec.name} lacks columns {missing}; no drift verdict, no event"
        )
    empty = [c for c in spec.feature_names if frame[c].isna().all()]
    if empty:
        raise DriftlineError(
            f"{where} of {spec.name} has all-null columns {empty}; bad data is not drift, no event"
        )


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A uniform sample of ``rows`` rows that depends on the rows' values, not their order.

    The rows with the smallest seeded hashes: Feast's join returns rows in no fixed order,
    and a positional sample would give the same data a different verdict on each run.
    """
    if len(frame) <= rows:
        return frame
    hashes = pd.util.hash_pandas_object(frame, index=False, hash_key=f"driftline{seed:07d}")
    picked = np.sort(np.argpartition(hashes.to_numpy(), rows)[:rows])
    return frame.iloc[picked]


def column_drift(
    spec: ModelSpec,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    sample_rows: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], Any]:
    """Per-column and prediction drift with Evidently; returns (columns, prediction, snapshot).

    One ValueDrift per column (and one for the prediction), each with the method and
    threshold the spec gives its type.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    rows = sample_rows or spec.drift.sample_rows
    drift = spec.drift
    features = spec.feature_names
    numerical = [c for c in features if c not in spec.categorical]
    categorical = [c for c in features if c in spec.categorical]
    with_prediction = PREDICTION in reference.columns and PREDICTION in current.columns
    columns = [*features, PREDICTION] if with_prediction else features

    def prepared(frame: pd.DataFrame) -> pd.DataFrame:
        frame = _sample(frame[columns], rows, seed).copy()
        numbers = [*numerical, *([PREDICTION] if with_prediction else [])]
        frame[numbers] = frame[numbers].astype("float64").replace([np.inf, -np.inf], np.nan)
        for column in categorical:
            frame[column] = frame[column].astype("object")
        return frame.reset_index(drop=True)

    metrics_list = [
        ValueDrift(
            column=c,
            method=drift.categorical_method if c in spec.categorical else drift.numeric_method,
            threshold=drift.categorical_threshold
            if c in spec.categorical
            else drift.numeric_threshold,
        )
        for c in features
    ]
    if with_prediction:
        metrics_list.append(
            ValueDrift(
                column=PREDICTION,
                method=drift.prediction_method,
                threshold=drift.prediction_threshold,
            )
        )
    definition = DataDefinition(
        numerical_columns=[*numerical, *([PREDICTION] if with_prediction else [])],
        categorical_columns=categorical,
    )
    snapshot = Report(metrics_list, include_tests=True).run(
        current_data=Dataset.from_pandas(prepared(current), data_definition=definition),
        reference_data=Dataset.from_pandas(prepared(reference), data_definition=definition),
    )
    results = _parse(snapshot)
    prediction = results.pop(PREDICTION, {"drifted": False, "score": None})
    return results, prediction, snapshot


def _parse(snapshot: Any) -> dict[str, dict[str, Any]]:
    """Per-column score, method, threshold and drifted flag from an Evidently snapshot."""
    data = snapshot.dict()
    statuses: dict[str, list[str]] = {}
    for test in data["tests"]:
        status = test["status"]
        statuses.setdefault(test["metric_config"]["metric_id"], []).append(
            getattr(status, "value", status)
        )
    columns = {}
    for metric in data["metrics"]:
        config = metric["config"]
        if config["type"] != "evidently:metric_v2:ValueDrift":
            continue
        states = statuses.get(metric["id"], [])
        columns[config["column"]] = {
            "score": float(metric["value"]),
            "method": config["method"],
            "threshold": float(config["threshold"]),
            "drifted": "FAIL" in states,
        }
    return columns


def _score_drift(
    reference: pd.Series, current: pd.Series, *, method: str, threshold: float, rows: int, seed: int
) -> dict[str, Any]:
    """Evidently's ValueDrift of one score column (``method``, ``threshold``) on samples."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=[PREDICTION])

    def prepared(scores: pd.Series) -> Dataset:
        frame = pd.DataFrame({PREDICTION: scores.astype("float64").to_numpy()})
        frame = _sample(frame, rows, seed).reset_index(drop=True)
        return Dataset.from_pandas(frame, data_definition=definition)

    snapshot = Report(
        [ValueDrift(column=PREDICTION, method=method, threshold=threshold)], include_tests=True
    ).run(current_data=prepared(current), reference_data=prepared(reference))
    return _parse(snapshot)[PREDICTION]


def served_prediction_drift(
    spec: ModelSpec,
    reference: pd.DataFrame,
    window: Window,
    champion: str,
    offline_dir: Path,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The scores the service answered for the window's transactions against the champion's
    scores on its reference sample (see the module docstring for which rows count)."""
    model = spec.registered_model
    where = f"[{window.start.isoformat()}, {window.end.isoformat()})"
    logged = predlog.read(
        offline_dir,
        model,
        start=window.start,
        columns=["scored_at", "event_timestamp", "version", "arm", "score", "status"],
    )
    if not logged.empty:
        moment = pd.to_datetime(logged["event_timestamp"], utc=True)
        logged = logged[
            (moment >= pd.Timestamp(window.start))
            & (moment < pd.Timestamp(window.end))
            & (logged["status"] == "ok")
            & logged["score"].notna()
        ]
    drift = spec.drift
    result: dict[str, Any] = {
        "rows": len(logged),
        "versions": {str(v): int(n) for v, n in logged["version"].value_counts().items()}
        if len(logged)
        else {},
        "arms": {str(a): int(n) for a, n in logged["arm"].value_counts().items()}
        if len(logged)
        else {},
        "compared_version": champion,
        "method": drift.prediction_method,
        "threshold": drift.prediction_threshold,
        "score": None,
        "drifted": False,
    }
    if logged.empty:
        result["compared_rows"] = 0
        result["note"] = (
            f"no served traffic in the window {where}: the prediction log of {model} holds "
            "no answered rows for its transactions; served prediction drift not assessed"
        )
        return result
    compared = logged[(logged["version"] == champion) & (logged["arm"] == "champion")]["score"]
    result["compared_rows"] = len(compared)
    if len(compared) < drift.min_served_rows:
        result["note"] = (
            f"not assessed: {len(compared)} rows served by the champion v{champion} in the "
            f"window {where} (needs drift.min_served_rows = {drift.min_served_rows})"
        )
        return result
    result.update(
        _score_drift(
            reference[PREDICTION],
            compared,
            method=drift.prediction_method,
            threshold=drift.prediction_threshold,
            rows=drift.sample_rows,
            seed=seed,
        )
    )
    return result


def performance(
    spec: ModelSpec,
    booster: Any,
    champion_tags: dict[str, str],
    as_of: datetime,
    settings: Settings,
) -> dict[str, Any]:
    """The champion's primary metric on the newest matured labels vs its training holdout."""
    primary = spec.promotion.primary_metric
    end = as_of - timedelta(days=spec.label_delay_days)
    window = Window(
        start=end - timedelta(days=spec.drift.performance_window_days), end=end, as_of=as_of
    )
    labeled = _features(spec, window, settings, labeled=True)
    result: dict[str, Any] = {
        "metric": primary,
        "window": [window.start.isoformat(), window.end.isoformat()],
        "labeled_rows": len(labeled),
        "decayed": False,
    }
    trained = champion_tags.get(f"holdout_{primary}")
    positives = int(labeled[spec.label].sum()) if len(labeled) else 0
    result["labeled_positives"] = positives
    if trained is None:
        result["note"] = f"not assessed: the champion has no holdout_{primary} tag"
        return result
    if len(labeled) < spec.drift.min_labeled_rows or positives < spec.drift.min_labeled_positives:
        result["note"] = (
            f"not assessed: {len(labeled)} matured labels with {positives} positives "
            f"(needs {spec.drift.min_labeled_rows} and {spec.drift.min_labeled_positives})"
        )
        return result
    labels = labeled[spec.label].to_numpy()
    current = metrics(labels, predict(booster, labeled, spec), spec.training.target_fpr)[primary]
    drop = float(trained) - current
    result.update(
        training_value=float(trained),
        current_value=current,
        drop=drop,
        threshold=spec.drift.max_metric_drop,
        decayed=drop > spec.drift.max_metric_drop,
    )
    return result


def monitor(
    spec: ModelSpec,
    *,
    as_of: datetime,
    context: RunContext,
    settings: Settings | None = None,
) -> DriftResult:
    """Run the three checks, store the report, and record a drift event on a drift verdict.

    Raises NoChampion when there is nothing to monitor, DriftlineError on bad data.
    """
    import mlflow

    from driftline.evaluation import load_reference

    settings = settings or get_settings()
    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    model = spec.registered_model
    champion = registry.alias_version(model, registry.CHAMPION, settings)
    if champion is None:
        raise NoChampion(f"{model} has no champion yet; nothing to monitor (train one first)")
    info = registry.version_info(model, champion, settings)

    window = current_window(spec, as_of, settings.offline_dir)
    current = _features(spec, window, settings, labeled=False)
    check_current(spec, current, window)
    booster = registry.load_booster(model, champion, settings)
    current = current.assign(**{PREDICTION: predict(booster, current, spec)})
    reference = load_reference(model, champion, settings)

    columns, prediction, snapshot = column_drift(spec, reference, current, seed=spec.training.seed)
    served = served_prediction_drift(
        spec, reference, window, champion, settings.offline_dir, seed=spec.training.seed
    )
    prediction = {**prediction, "served": served}
    drifted = sorted(name for name, column in columns.items() if column["drifted"])
    share = len(drifted) / len(columns) if columns else 0.0
    decay = performance(spec, booster, info.tags, as_of, settings)

    reasons = []
    if share >= spec.drift.drift_share:
        reasons.append(
            f"data drift: {len(drifted)} of {len(columns)} features drifted "
            f"({share:.0%} >= {spec.drift.drift_share:.0%}): {', '.join(drifted)}"
        )
    if prediction.get("drifted"):
        reasons.append(
            f"prediction drift: score {prediction['score']:.3f} >= {prediction['threshold']} "
            f"({prediction['method']})"
        )
    if served["drifted"]:
        reasons.append(
            f"served prediction drift: score {served['score']:.3f} >= {served['threshold']} "
            f"({served['method']}) on {served['compared_rows']} rows served by "
            f"v{served['compared_version']}"
        )
    if decay["decayed"]:
        reasons.append(
            f"performance decay: {decay['metric']} {decay['current_value']:.3f} vs "
            f"{decay['training_value']:.3f} at training (drop {decay['drop']:.3f} > {decay['threshold']})"
        )
    verdict = "drift" if reasons else "no_drift"

    directory = run_dir(settings.runs_dir, model, context)
    directory.mkdir(parents=True, exist_ok=True)
    report_path = directory / REPORT_FILE
    snapshot.save_html(str(report_path))
    experiment = registry.experiment_id(f"{model}_monitoring", settings)
    with mlflow.start_run(experiment_id=experiment, run_name=f"drift {window.start.date()}") as run:
        mlflow.set_tags({**context.tags(), "champion_version": champion, "verdict": verdict})
        mlflow.log_metrics(
            {
                "share_drifted": share,
                "prediction_drift_score": prediction.get("score") or 0.0,
                "served_rows": served["rows"],
                **(
                    {"served_prediction_drift_score": served["score"]}
                    if served["score"] is not None
                    else {}
                ),
            }
        )
        mlflow.log_artifact(str(report_path), artifact_path="drift")
        report_uri = f"runs:/{run.info.run_id}/drift/{REPORT_FILE}"

    result = DriftResult(
        model=model,
        champion_version=champion,
        window_start=window.start.isoformat(),
        window_end=window.end.isoformat(),
        current_rows=len(current),
        reference_rows=len(reference),
        columns=columns,
        share_drifted=share,
        prediction=prediction,
        performance=decay,
        verdict=verdict,
        reasons=reasons,
        report_uri=report_uri,
    )
    result.report_id = monitoring.record_drift_report(
        model=model,
        champion_version=champion,
        window_start=window.start,
        window_end=window.end,
        current_rows=result.current_rows,
        reference_rows=result.reference_rows,
        share_drifted=share,
        columns=columns,
        prediction=prediction,
        performance=decay,
        verdict=verdict,
        reasons=reasons,
        report_uri=report_uri,
        dag_id=context.dag_id,
        run_id=context.run_id,
        url=settings.monitoring_db_url,
    )
    if verdict == "drift":
        # announced through the monitor's own asset event, so the watcher must not raise it again
        result.event_id = monitoring.create_drift_event(
            model=model,
            source=f"monitor:{context.key}",
            payload=result.event_extra(),
            status="emitted",
            report_id=result.report_id,
            url=settings.monitoring_db_url,
        )
    write_json(directory / SUMMARY_FILE, result.as_dict())
    log.info(
        "%s drift monitor: %s%s", model, verdict, f" — {'; '.join(reasons)}" if reasons else ""
    )
    return result

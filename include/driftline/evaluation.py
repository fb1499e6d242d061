"""Score champion and challenger on the same, most recent holdout.

The holdout is the newest ``holdout_days`` of this run's training window, so both models
are judged on the data that matters now. The evaluation records which version was
champion when it looked (the promotion's compare-and-set checks it has not moved), and
logs an Evidently report of the holdout against the training reference to the
challenger's MLflow run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from driftline import registry
from driftline.errors import DriftlineError
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec
from driftline.training import PREDICTION, REFERENCE_ARTIFACT, metrics, predict, time_split
from driftline.training_set import TRAINING_FILE, Window, read_fingerprint

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "holdout_vs_reference.html"
REPORT_SAMPLE_ROWS = 50_000


@dataclass
class Evaluation:
    model: str
    challenger_version: str
    challenger_metrics: dict[str, float]
    champion_version: str | None
    champion_metrics: dict[str, float] | None
    holdout_rows: int
    holdout_positives: int
    report_uri: str
    mlflow_run_id: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: Path) -> Path:
        path = run_dir / EVALUATION_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path


def read_evaluation(run_dir: Path) -> Evaluation:
    path = run_dir / EVALUATION_FILE
    if not path.is_file():
        raise DriftlineError(f"no evaluation at {path}; run the evaluate step first")
    return Evaluation(**json.loads(path.read_text()))


def load_reference(model: str, version: str, settings: Settings | None = None) -> pd.DataFrame:
    """The reference sample stored with a version's training run."""
    import mlflow

    info = registry.version_info(model, version, settings)
    artifact = info.tags.get("reference_artifact", REFERENCE_ARTIFACT)
    registry.configure(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=info.run_id, artifact_path=artifact, dst_path=tmp
        )
        return pd.read_parquet(path)


def drift_report(
    spec: ModelSpec,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: list[str] | None = None,
    seed: int = 0,
) -> Any:
    """An Evidently data-drift snapshot of ``current`` against ``reference`` (both sampled
    to at most REPORT_SAMPLE_ROWS rows), with the spec's per-type methods and thresholds."""
    import numpy as np
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = columns or spec.feature_names
    categorical = [c for c in columns if c in spec.categorical]
    numerical = [c for c in columns if c not in spec.categorical]

    def prepared(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[columns]
        if len(frame) > REPORT_SAMPLE_ROWS:
            frame = frame.sample(n=REPORT_SAMPLE_ROWS, random_state=seed)
        frame = frame.copy()
        frame[numerical] = frame[numerical].astype("float64").replace([np.inf, -np.inf], np.nan)
        for column in categorical:
            frame[column] = frame[column].astype("object")
        return frame.reset_index(drop=True)

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    drift = spec.drift
    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                num_method=drift.numeric_method,
                num_threshold=drift.numeric_threshold,
                cat_method=drift.categorical_method,
                cat_threshold=drift.categorical_threshold,
                drift_share=drift.drift_share,
            )
        ],
        include_tests=True,
    )
    return report.run(
        current_data=Dataset.from_pandas(prepared(current), data_definition=definition),
        reference_data=Dataset.from_pandas(prepared(reference), data_definition=definition),
    )


def evaluate(
    spec: ModelSpec,
    *,
    run_dir: Path,
    challenger_version: str,
    settings: Settings | None = None,
) -> Evaluation:
    """Score both models on this run's holdout and write ``evaluation.json``."""
    import mlflow

    settings = settings or get_settings()
    model = spec.registered_model
    fingerprint = read_fingerprint(run_dir)
    window = Window(**{k: datetime.fromisoformat(v) for k, v in fingerprint.window.items()})
    holdout = time_split(pd.read_parquet(run_dir / TRAINING_FILE), spec, window).holdout
    labels = holdout[spec.label].to_numpy()
    target_fpr = spec.training.target_fpr

    challenger = registry.load_booster(model, challenger_version, settings)
    challenger_metrics = metrics(labels, predict(challenger, holdout, spec), target_fpr)

    notes: list[str] = []
    champion_version = registry.alias_version(model, registry.CHAMPION, settings)
    champion_metrics = None
    if champion_version is not None:
        try:
            champion = registry.load_booster(model, champion_version, settings)
            champion_metrics = metrics(labels, predict(champion, holdout, spec), target_fpr)
        except Exception as exc:  # a champion trained on other features cannot be compared
            notes.append(f"champion version {champion_version} could not be scored: {exc}")
            log.warning("champion %s of %s not scored: %s", champion_version, model, exc)

    reference = load_reference(model, challenger_version, settings)
    snapshot = drift_report(spec, reference.drop(columns=[PREDICTION]), holdout)
    report_path = run_dir / REPORT_FILE
    snapshot.save_html(str(report_path))
    info = registry.version_info(model, challenger_version, settings)
    with mlflow.start_run(run_id=info.run_id):
        mlflow.log_artifact(str(report_path), artifact_path="evaluation")
        mlflow.log_metrics({f"eval_challenger_{k}": v for k, v in challenger_metrics.items()})
        if champion_metrics:
            mlflow.log_metrics({f"eval_champion_{k}": v for k, v in champion_metrics.items()})
    artifact_uri = f"runs:/{info.run_id}/evaluation/{REPORT_FILE}"

    evaluation = Evaluation(
        model=model,
        challenger_version=challenger_version,
        challenger_metrics=challenger_metrics,
        champion_version=champion_version,
        champion_metrics=champion_metrics,
        holdout_rows=len(holdout),
        holdout_positives=int(labels.sum()),
        report_uri=artifact_uri,
        mlflow_run_id=info.run_id,
        notes=notes,
    )
    evaluation.write(run_dir)
    log.info(
        "evaluated %s on %d holdout rows: challenger v%s pr_auc %.4f, champion %s",
        model,
        len(holdout),
        challenger_version,
        challenger_metrics["pr_auc"],
        f"v{champion_version} pr_auc {champion_metrics['pr_auc']:.4f}"
        if champion_metrics
        else "none",
    )
    return evaluation

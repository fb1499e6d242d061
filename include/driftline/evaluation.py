"""Score champion and challenger on the same rows, neither of which either model trained on.

The comparison set is out-of-time for *both* models: this run's labeled rows from the later
of the two models' ``trained_until`` (the end of its training and early-stopping rows; a
version without the tag falls back to its ``window_end``) up to the run's window end, so
every label has matured as of the run's as-of time. With no champion it is the
challenger's own holdout. When a champion exists, its model must load and score: a
champion alias whose model cannot be read fails the evaluation (Airflow retries) instead of
letting an uncompared challenger through. When too few rows are newer than both models, the
evaluation records why and from which as-of date a fair comparison becomes possible, and the
policy's answer is ``inconclusive``.

Beside the point metrics it records a paired bootstrap interval of the primary metric's
gain (both models scored on the same resampled rows) and the guard metrics per declared
slice. It also logs an Evidently report of the holdout against the training reference to the
challenger's MLflow run, on a sample drawn by row hash (the same rows in any order give the
same report).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline import registry
from driftline.clock import midnight, utc
from driftline.drift import _sample as sample_by_hash
from driftline.errors import DriftlineError, InvalidInput, Unavailable
from driftline.files import write_json
from driftline.policy import Evidence, Interval, SliceEvidence, paired_interval
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec
from driftline.training import (
    PREDICTION,
    REFERENCE_ARTIFACT,
    TRAINED_UNTIL,
    holdout_start,
    metrics,
    predict,
    read_training_set,
    time_split,
)
from driftline.training_set import Window, read_fingerprint

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "holdout_vs_reference.html"
REPORT_SAMPLE_ROWS = 50_000


@dataclass
class Evaluation:
    model: str
    challenger_version: str
    # on the comparison set; with a champion but no fair comparison set, on the
    # challenger's own holdout (for the record only)
    challenger_metrics: dict[str, float]
    champion_version: str | None
    champion_metrics: dict[str, float] | None
    comparison_rows: int
    comparison_positives: int
    report_uri: str
    mlflow_run_id: str = ""
    notes: list[str] = field(default_factory=list)
    as_of: str = ""
    # [start, end) of the rows both models were scored on
    comparison_window: list[str] = field(default_factory=list)
    trained_until: dict[str, str | None] = field(default_factory=dict)
    fair_from: str | None = None
    interval: dict[str, Any] | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: Path) -> Path:
        return write_json(run_dir / EVALUATION_FILE, self.as_dict())

    def evidence(self) -> Evidence:
        """What the promotion policy judges."""
        window = self.comparison_window
        return Evidence(
            challenger=self.challenger_metrics,
            champion=self.champion_metrics,
            rows=self.comparison_rows,
            positives=self.comparison_positives,
            champion_version=self.champion_version,
            interval=Interval(**self.interval) if self.interval else None,
            slices=tuple(SliceEvidence(**piece) for piece in self.slices),
            comparison_window=(window[0], window[1]) if len(window) == 2 else None,
            fair_from=self.fair_from,
        )


def read_evaluation(run_dir: Path) -> Evaluation:
    import json

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


def report_frame(
    spec: ModelSpec, frame: pd.DataFrame, columns: list[str], *, seed: int = 0
) -> pd.DataFrame:
    """``columns`` of at most REPORT_SAMPLE_ROWS rows of ``frame``, chosen by seeded row hash
    (the drift monitor's sampler) and put in a canonical order: the same rows in any order
    give the same frame, so the same data always gives the same report."""
    categorical = [c for c in columns if c in spec.categorical]
    numerical = [c for c in columns if c not in spec.categorical]
    frame = sample_by_hash(frame[columns], REPORT_SAMPLE_ROWS, seed).copy()
    frame[numerical] = frame[numerical].astype("float64").replace([np.inf, -np.inf], np.nan)
    for column in categorical:
        frame[column] = frame[column].astype("object")
    return frame.sort_values(columns, kind="stable", na_position="last").reset_index(drop=True)


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
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = columns or spec.feature_names
    categorical = [c for c in columns if c in spec.categorical]
    numerical = [c for c in columns if c not in spec.categorical]
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
        current_data=Dataset.from_pandas(
            report_frame(spec, current, columns, seed=seed), data_definition=definition
        ),
        reference_data=Dataset.from_pandas(
            report_frame(spec, reference, columns, seed=seed), data_definition=definition
        ),
    )


def trained_until(tags: dict[str, str]) -> datetime | None:
    """Where a version's training rows end: its ``trained_until`` tag, or conservatively its
    ``window_end`` (the end of every row it saw) for versions made before the tag existed."""
    value = tags.get(TRAINED_UNTIL) or tags.get("window_end")
    return utc(datetime.fromisoformat(value)) if value else None


def load_champion(model: str, version: str, settings: Settings) -> tuple[Any, dict[str, str]]:
    """The champion's booster and tags. Fails closed: an alias whose model cannot be read is
    an outage to retry, never "no champion"."""
    try:
        tags = registry.version_info(model, version, settings).tags
        booster = registry.load_booster(model, version, settings)
    except DriftlineError:
        raise
    except Exception as exc:
        raise Unavailable(
            f"champion {model} v{version} (alias {registry.CHAMPION}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}; refusing to judge a challenger without it"
        ) from exc
    return booster, tags


def fair_from(
    spec: ModelSpec, rows: int, positives: int, window: Window, start: datetime
) -> datetime | None:
    """The earliest as-of date at which enough labeled rows after ``start`` may exist, at this
    window's daily row and positive rates (``rows`` and ``positives`` over the window; None:
    the window has no positives to go by)."""
    days = max((window.end - window.start).days, 1)
    per_day_rows = rows / days
    per_day_positives = positives / days
    if per_day_rows <= 0 or per_day_positives <= 0:
        return None
    policy = spec.promotion
    needed = max(
        math.ceil(policy.min_holdout_rows / per_day_rows),
        math.ceil(policy.min_holdout_positives / per_day_positives),
        1,
    )
    return midnight(start + timedelta(days=needed - 1)) + timedelta(days=1 + spec.label_delay_days)


def _slices(
    spec: ModelSpec,
    frame: pd.DataFrame,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray,
) -> list[dict[str, Any]]:
    """Both models' guard metrics on each value of each declared slice column."""
    policy, label = spec.promotion, spec.label
    guards = set(policy.max_regression)
    pieces = []
    for column in policy.slices:
        values = frame[column].astype("object").to_numpy()
        for value in spec.categorical[column]:
            mask = values == value
            labels = frame[label].to_numpy()[mask]
            positives = int(labels.sum())
            piece: dict[str, Any] = {
                "column": column,
                "value": value,
                "rows": int(mask.sum()),
                "positives": positives,
                "challenger": None,
                "champion": None,
            }
            if positives >= policy.min_holdout_positives and positives < len(labels):
                target = spec.training.target_fpr
                challenger = metrics(labels, challenger_scores[mask], target)
                champion = metrics(labels, champion_scores[mask], target)
                piece["challenger"] = {k: v for k, v in challenger.items() if k in guards}
                piece["champion"] = {k: v for k, v in champion.items() if k in guards}
            pieces.append(piece)
    return pieces


def evaluate(
    spec: ModelSpec,
    *,
    run_dir: Path,
    challenger_version: str,
    settings: Settings | None = None,
) -> Evaluation:
    """Score both models on rows newer than both models' training data; write
    ``evaluation.json``."""
    import mlflow

    settings = settings or get_settings()
    model = spec.registered_model
    policy = spec.promotion
    fingerprint = read_fingerprint(run_dir)
    window = Window(**{k: datetime.fromisoformat(v) for k, v in fingerprint.window.items()})
    target_fpr = spec.training.target_fpr
    notes: list[str] = []

    challenger = registry.load_booster(model, challenger_version, settings)
    champion_version = registry.alias_version(model, registry.CHAMPION, settings)
    champion, champion_tags = None, {}
    if champion_version is not None:
        champion, champion_tags = load_champion(model, champion_version, settings)

    challenger_until = trained_until(
        registry.version_info(model, challenger_version, settings).tags
    ) or utc(holdout_start(spec, window))
    # every row compared or reported is at or after the holdout's start or the challenger's
    # training end, whichever is earlier: the rest of the window is not read
    since = min(challenger_until, utc(holdout_start(spec, window)))
    boosters = [b for b in (challenger, champion) if b is not None]
    frame = read_training_set(run_dir, spec, boosters, since=since)
    split = time_split(frame, spec, window)
    holdout = split.holdout
    until: dict[str, str | None] = {"challenger": challenger_until.isoformat(), "champion": None}
    start = challenger_until
    if champion is not None:
        champion_until = trained_until(champion_tags)
        if champion_until is None:
            champion_until = utc(window.end)
            notes.append(
                f"champion v{champion_version} records neither trained_until nor window_end: "
                "taken as trained on every row of this window"
            )
        until["champion"] = champion_until.isoformat()
        start = max(start, champion_until)

    ts = pd.to_datetime(frame[spec.timestamp_column], utc=True)
    comparison = frame[(ts >= start) & (ts < utc(window.end))]
    labels = comparison[spec.label].to_numpy()
    rows, positives = len(comparison), int(labels.sum())
    fair = champion is None or (
        rows >= policy.min_holdout_rows and policy.min_holdout_positives <= positives < rows
    )

    champion_metrics = None
    interval = None
    slices: list[dict[str, Any]] = []
    fair_date = None
    if champion is not None and fair:
        challenger_scores = predict(challenger, comparison, spec)
        try:
            champion_scores = predict(champion, comparison, spec)
        except DriftlineError as exc:
            raise InvalidInput(
                f"champion {model} v{champion_version} cannot score the comparison set: {exc}"
            ) from None
        challenger_metrics = metrics(labels, challenger_scores, target_fpr)
        champion_metrics = metrics(labels, champion_scores, target_fpr)
        interval = asdict(
            paired_interval(
                policy.primary_metric,
                labels,
                challenger_scores,
                champion_scores,
                level=policy.confidence,
                resamples=policy.bootstrap_resamples,
                seed=policy.bootstrap_seed,
                target_fpr=target_fpr,
            )
        )
        slices = _slices(spec, comparison, challenger_scores, champion_scores)
    else:
        # no champion: the holdout is the comparison set; no fair set: for the record only
        challenger_metrics = metrics(
            holdout[spec.label].to_numpy(), predict(challenger, holdout, spec), target_fpr
        )
        if champion is not None:
            found = fair_from(spec, fingerprint.rows, fingerprint.positives, window, start)
            fair_date = found.date().isoformat() if found else None
            notes.append(
                f"challenger metrics are on its own holdout from "
                f"{utc(split.holdout_start).isoformat()}: the champion trained until "
                f"{until['champion']}, so only {rows} labeled rows of this run are newer "
                "than both"
            )

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
        if interval:
            mlflow.log_metrics({f"eval_gain_{k}": interval[k] for k in ("gain", "low", "high")})
    artifact_uri = f"runs:/{info.run_id}/evaluation/{REPORT_FILE}"

    evaluation = Evaluation(
        model=model,
        challenger_version=challenger_version,
        challenger_metrics=challenger_metrics,
        champion_version=champion_version,
        champion_metrics=champion_metrics,
        comparison_rows=rows,
        comparison_positives=positives,
        report_uri=artifact_uri,
        mlflow_run_id=info.run_id,
        notes=notes,
        as_of=window.as_of.isoformat(),
        comparison_window=[start.isoformat(), utc(window.end).isoformat()],
        trained_until=until,
        fair_from=fair_date,
        interval=interval,
        slices=slices,
    )
    evaluation.write(run_dir)
    log.info(
        "evaluated %s on %d rows in [%s, %s): challenger v%s pr_auc %.4f, champion %s",
        model,
        rows,
        start.isoformat(),
        utc(window.end).isoformat(),
        challenger_version,
        challenger_metrics["pr_auc"],
        f"v{champion_version} pr_auc {champion_metrics['pr_auc']:.4f}"
        if champion_metrics
        else (f"v{champion_version} not comparable" if champion_version else "none"),
    )
    return evaluation

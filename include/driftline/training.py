"""Train an XGBoost challenger and register it in MLflow with its lineage.

Splits are by time, never random: the newest ``holdout_days`` of the training window are the
holdout, the ``validation_days`` before them drive early stopping, the rest trains. The
seed is fixed. ``training.engine`` decides only where the trees are fit (``fit`` in this
process, or ``training_dask.fit_dask`` on a Dask cluster); the split, the metrics, the
registration and the reference sample are the same for both. The registered version carries the training-set fingerprint, the feature
service, the git commit and the Airflow run that made it, its as-of time and
``trained_until`` (the holdout start: no row before it may judge this model against
another); alias ``challenger`` points at it.
A reference sample of the training features (with the model's scores) is stored with the
run for the drift monitor.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline import registry
from driftline.errors import DriftlineError
from driftline.lineage import RunContext
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec
from driftline.training_set import TRAINING_FILE, Window, read_fingerprint

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/reference.parquet"
PREDICTION = "prediction"
TRAINED_UNTIL = "trained_until"
PIP_REQUIREMENTS = ["xgboost==3.2.0", "pandas==2.3.3"]


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    validation_start: datetime
    holdout_start: datetime


def holdout_start(spec: ModelSpec, window: Window) -> datetime:
    """Where a window's holdout days begin (the training rows end before them)."""
    return window.end - timedelta(days=spec.training.holdout_days)


def time_split(frame: pd.DataFrame, spec: ModelSpec, window: Window) -> Split:
    """Train, validation and holdout by time: each part strictly after the one before."""
    holdout = holdout_start(spec, window)
    validation_start = holdout - timedelta(days=spec.training.validation_days)
    ts = pd.to_datetime(frame[spec.timestamp_column], utc=True)
    if ts.is_monotonic_increasing:  # a built training set is stored in time order (no NaT)
        first, middle, last = ts.searchsorted([validation_start, holdout, window.end])
        return Split(
            train=frame.iloc[:first],
            validation=frame.iloc[first:middle],
            holdout=frame.iloc[middle:last],
            validation_start=validation_start,
            holdout_start=holdout,
        )
    # one copy of the frame, in time order (stable; NaT last, as sort_values puts it)
    order = np.argsort(ts.to_numpy(dtype="datetime64[ns]"), kind="stable")
    ordered, ts = frame.iloc[order], ts.iloc[order]
    return Split(
        train=ordered[ts < validation_start],
        validation=ordered[(ts >= validation_start) & (ts < holdout)],
        holdout=ordered[(ts >= holdout) & (ts < window.end)],
        validation_start=validation_start,
        holdout_start=holdout,
    )


def read_training_set(
    run_dir: Path,
    spec: ModelSpec,
    boosters: Sequence[Any] = (),
    *,
    since: datetime | None = None,
) -> pd.DataFrame:
    """The columns of the run's training set that training and scoring read: the time, the
    spec's features, the label, and the input columns of ``boosters`` (a version trained
    under an older spec reads its own). The rest (ids, label times) stays on disk: the
    transaction ids alone cost a third of the frame's memory and most of its read time.
    ``since``: only the rows at or after it (evaluation scores the newest days only).
    Validation reads its own columns (retrain._checked_columns)."""
    import pyarrow.parquet as pq

    path = run_dir / TRAINING_FILE
    wanted = [spec.timestamp_column, *spec.feature_names, spec.label]
    for booster in boosters:
        wanted += booster.feature_names or []
    present = set(pq.read_schema(path).names)
    columns = [c for c in dict.fromkeys(wanted) if c in present]
    if since is None:
        return pd.read_parquet(path, columns=columns)
    return pd.read_parquet(
        path, columns=columns, filters=[(spec.timestamp_column, ">=", pd.Timestamp(since))]
    )


# what a frame may be: a DataFrame, or (the scoring service) columns of plain lists
Columns = pd.DataFrame | Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class ModelInputs:
    """The model's input columns as one float64 array, with XGBoost's names and types."""

    values: np.ndarray
    names: list[str]
    types: list[str]  # "float" or "c" (categorical: the code in the spec's category list)


def _numbers(values: Any) -> np.ndarray:
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    try:
        return np.asarray(values, dtype="float64")  # None -> NaN
    except (TypeError, ValueError):
        return _numbers(pd.Series(list(values), dtype="object"))


def _codes(values: Any, categories: tuple[str, ...]) -> np.ndarray:
    if isinstance(values, pd.Series):
        try:  # a column: pandas' hash lookup, not a Python call per row (same codes)
            codes = pd.Categorical(values, categories=list(categories)).codes
        except TypeError:  # an unhashable value: row by row below, where it becomes missing
            pass
        else:
            return np.where(codes >= 0, codes, np.nan)
    index = {category: float(code) for code, category in enumerate(categories)}
    items = values.to_numpy(dtype="object") if isinstance(values, pd.Series) else values
    return np.fromiter(
        (index.get(v, np.nan) if isinstance(v, str) else np.nan for v in items),
        dtype="float64",
        count=len(items),
    )


def model_inputs(frame: Columns, spec: ModelSpec, names: list[str] | None = None) -> ModelInputs:
    """The model's input columns (default: the spec's, in spec order): numbers as float64,
    categories as their code in the spec's fixed category list (unknown values and nulls
    become missing). Exactly what XGBoost makes of pandas categoricals over that list
    (tests/unit/test_training.py checks it), without pandas' per-column cost: the service
    builds a one-row matrix per request with this function."""
    names = list(names or spec.feature_names)
    categorical = spec.categorical
    columns = [
        _codes(frame[name], categorical[name]) if name in categorical else _numbers(frame[name])
        for name in names
    ]
    return ModelInputs(
        values=np.column_stack(columns) if columns else np.empty((0, 0)),
        names=names,
        types=["c" if name in categorical else "float" for name in names],
    )


def to_matrix(
    frame: Columns,
    spec: ModelSpec,
    names: list[str] | None = None,
    label: pd.Series | None = None,
) -> Any:
    """The XGBoost training matrix of ``frame`` (its :func:`model_inputs`)."""
    import xgboost as xgb

    inputs = model_inputs(frame, spec, names)
    return xgb.DMatrix(
        inputs.values,
        label=label,
        feature_names=inputs.names,
        feature_types=inputs.types,
        enable_categorical=True,
    )


def _rows(frame: Columns) -> int:
    if isinstance(frame, pd.DataFrame):
        return len(frame)
    return len(next(iter(frame.values()), ()))


def predict(booster: Any, frame: Columns, spec: ModelSpec) -> np.ndarray:
    """Scores of ``frame``'s rows: its :func:`model_inputs` straight into the booster
    (``inplace_predict``: no matrix to build, the same scores as a DMatrix, thread-safe) —
    for evaluation, drift and the scoring service alike (training-serving parity)."""
    if _rows(frame) == 0:
        return np.array([], dtype=float)
    # a version trained under an older spec still reads the columns it was trained on
    names = list(booster.feature_names or spec.feature_names)
    missing = [name for name in names if name not in frame]
    if missing:
        raise DriftlineError(f"cannot score: the data lacks the model's input columns {missing}")
    return booster.inplace_predict(model_inputs(frame, spec, names).values)


def metrics(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log loss, Brier and recall at a fixed false-positive rate."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
        roc_curve,
    )

    labels = np.asarray(labels, dtype=int)
    scores = np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
    if len(labels) == 0 or labels.min() == labels.max():
        raise DriftlineError(
            f"cannot score a model on {len(labels)} rows with a single class; the holdout "
            "needs positives and negatives"
        )
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "log_loss": float(log_loss(labels, scores, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, scores)),
        "recall_at_fpr": float(np.interp(target_fpr, fpr, tpr)),
    }


def check_trainable(spec: ModelSpec, split: Split) -> None:
    """Both classes in the train and the validation split, whatever the engine."""
    for part in ("train", "validation"):
        labels = getattr(split, part)[spec.label]
        if len(labels) == 0 or labels.nunique() < 2:
            raise DriftlineError(
                f"the {part} split of {spec.name} has {len(labels)} rows and "
                f"{int(labels.sum()) if len(labels) else 0} positives; it needs both classes"
            )


def xgb_params(spec: ModelSpec) -> dict[str, Any]:
    return {"seed": spec.training.seed, **spec.training.params}


def best_trees(booster: Any) -> Any:
    """The booster cut to its best iteration, which it records as ``best_iteration``."""
    best = booster.best_iteration
    trimmed = booster[: best + 1]
    trimmed.set_attr(best_iteration=str(best))
    return trimmed


def fit(spec: ModelSpec, split: Split) -> Any:
    """XGBoost with the spec's parameters, early-stopped on the validation days; the
    returned booster holds only the trees up to the best iteration."""
    import xgboost as xgb

    check_trainable(spec, split)
    dtrain = to_matrix(split.train, spec, label=split.train[spec.label])
    dvalid = to_matrix(split.validation, spec, label=split.validation[spec.label])
    booster = xgb.train(
        xgb_params(spec),
        dtrain,
        num_boost_round=spec.training.num_boost_round,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=spec.training.early_stopping_rounds,
        verbose_eval=False,
    )
    return best_trees(booster)


def _signature(spec: ModelSpec) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = [
        ColSpec("string" if name in spec.categorical else "double", name)
        for name in spec.feature_names
    ]
    outputs = [TensorSpec(np.dtype("float32"), (-1,))]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def reference_sample(split: Split, spec: ModelSpec) -> pd.DataFrame:
    """``reference_sample_rows`` rows of the train and validation days (the drift monitor's
    reference): the rows ``pd.concat([train, validation]).sample(n, random_state=seed)``
    picks, in its order, taken from each part without concatenating them first."""
    columns = [spec.timestamp_column, *spec.feature_names, spec.label]
    parts = (split.train, split.validation)
    total = sum(len(part) for part in parts)
    size = min(spec.training.reference_sample_rows, total)
    # pandas' sample: RandomState(seed).choice(len, size, replace=False)
    picks = np.random.RandomState(spec.training.seed).choice(total, size=size, replace=False)
    in_train = picks < len(split.train)
    taken = pd.concat(
        [
            split.train.iloc[picks[in_train]][columns],
            split.validation.iloc[picks[~in_train] - len(split.train)][columns],
        ]
    )
    # back to the order of the picks
    order = np.concatenate([np.flatnonzero(in_train), np.flatnonzero(~in_train)])
    return taken.iloc[np.argsort(order, kind="stable")].copy()


@dataclass(frozen=True)
class TrainResult:
    model: str
    version: str
    mlflow_run_id: str
    metrics: dict[str, float]
    reused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(
    spec: ModelSpec,
    *,
    run_dir: Path,
    context: RunContext,
    settings: Settings | None = None,
) -> TrainResult:
    """Train, log and register a new version, then point ``challenger`` at it.

    Idempotent per run: if this run (``context.key``) already registered a version, that
    version is returned and no second one is made.
    """
    import mlflow
    import mlflow.xgboost

    settings = settings or get_settings()
    model = spec.registered_model
    existing = registry.find_version_by_tag(model, "run_key", context.key, settings)
    if existing is not None:
        info = registry.version_info(model, existing, settings)
        registry.client(settings).set_registered_model_alias(model, registry.CHALLENGER, existing)
        log.info(
            "run %s already registered %s version %s; reusing it", context.key, model, existing
        )
        stored = {
            k.removeprefix("holdout_"): float(v)
            for k, v in info.tags.items()
            if k.startswith("holdout_")
        }
        return TrainResult(model, existing, info.run_id, stored, reused=True)

    fingerprint = read_fingerprint(run_dir)
    window = Window(**{k: datetime.fromisoformat(v) for k, v in fingerprint.window.items()})
    split = time_split(read_training_set(run_dir, spec), spec, window)
    if spec.training.engine == "dask":
        from driftline.training_dask import fit_dask

        booster = fit_dask(spec, split, settings=settings)
    else:
        booster = fit(spec, split)

    holdout_metrics = metrics(
        split.holdout[spec.label].to_numpy(),
        predict(booster, split.holdout, spec),
        spec.training.target_fpr,
    )
    validation_metrics = metrics(
        split.validation[spec.label].to_numpy(),
        predict(booster, split.validation, spec),
        spec.training.target_fpr,
    )
    importance = booster.get_score(importance_type="gain")

    reference = reference_sample(split, spec)
    reference[PREDICTION] = predict(booster, reference, spec)

    lineage = {
        **context.tags(),
        "feature_service": spec.feature_service,
        "git_commit": registry.git_commit(),
        "training_set_sha256": fingerprint.sha256,
        "training_rows": fingerprint.rows,
        "training_positives": fingerprint.positives,
        "window_start": fingerprint.window["start"],
        "window_end": fingerprint.window["end"],
        "as_of": fingerprint.window["as_of"],
        # the end of the rows that trained or early-stopped this model: no fair comparison
        # may use a row before it (evaluation.py)
        TRAINED_UNTIL: split.holdout_start.isoformat(),
        "model_spec": spec.source,
        "reference_artifact": REFERENCE_ARTIFACT,
        "best_iteration": booster.attr("best_iteration"),
        "training_engine": spec.training.engine,
    }
    experiment = registry.experiment_id(model, settings)
    with mlflow.start_run(experiment_id=experiment, run_name=f"{model} {context.run_id}") as run:
        mlflow.set_tags(lineage)
        mlflow.log_params(
            {
                **{f"xgb_{k}": v for k, v in spec.training.params.items()},
                "num_boost_round": spec.training.num_boost_round,
                "early_stopping_rounds": spec.training.early_stopping_rounds,
                "seed": spec.training.seed,
                "window_days": round((window.end - window.start).total_seconds() / 86400, 3),
                "validation_days": spec.training.validation_days,
                "holdout_days": spec.training.holdout_days,
                "train_rows": len(split.train),
                "validation_rows": len(split.validation),
                "holdout_rows": len(split.holdout),
            }
        )
        mlflow.log_metrics({f"holdout_{k}": v for k, v in holdout_metrics.items()})
        mlflow.log_metrics({f"validation_{k}": v for k, v in validation_metrics.items()})
        mlflow.log_dict(fingerprint.as_dict(), "training_set/fingerprint.json")
        mlflow.log_dict(
            dict(sorted(importance.items(), key=lambda kv: -kv[1])), "feature_importance.json"
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "reference.parquet"
            reference.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="reference")
        logged = mlflow.xgboost.log_model(
            booster,
            name="model",
            model_format="json",
            # the signature only: an input example of raw rows (category strings) fails
            # MLflow's serving-input check, which scores it through a DMatrix of object
            # columns, and only logged a misleading warning per run
            signature=_signature(spec),
            pip_requirements=PIP_REQUIREMENTS,
        )
        mlflow_run_id = run.info.run_id

    version_tags = {
        **{k: str(v) for k, v in lineage.items()},
        **{f"holdout_{k}": f"{v:.6f}" for k, v in holdout_metrics.items()},
        "mlflow_run_id": mlflow_run_id,
        # train only runs after validate_data passed for this run's training set
        "validation": "passed",
        "decision": "pending",
    }
    registered = mlflow.register_model(logged.model_uri, model, tags=version_tags)
    version = str(registered.version)
    registry.client(settings).set_registered_model_alias(model, registry.CHALLENGER, version)
    log.info(
        "registered %s version %s (holdout pr_auc %.4f, roc_auc %.4f); alias challenger -> %s",
        model,
        version,
        holdout_metrics["pr_auc"],
        holdout_metrics["roc_auc"],
        version,
    )
    (run_dir / "train.json").write_text(
        json.dumps(
            {"version": version, "mlflow_run_id": mlflow_run_id, "metrics": holdout_metrics},
            indent=2,
        )
    )
    return TrainResult(model, version, mlflow_run_id, holdout_metrics)

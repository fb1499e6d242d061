"""Model specs: one declarative YAML file per model under ``include/models/``.

A spec says everything an operator may want to change without code: the features and
label, the validation rules, drift thresholds, XGBoost parameters, the promotion policy and
the schedules. A second model is a second file. Loading is cheap (YAML + pydantic) because
DAG files call it at parse time to generate one set of DAGs per spec.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from driftline.errors import DriftlineError
from driftline.settings import get_settings

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
SPEC_SUFFIXES = (".yaml", ".yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestFeature(_Strict):
    """A feature that arrives with the scored event itself (from the entity source)."""

    name: str
    dtype: Literal["float64", "int64", "category"]
    categories: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _categories_for_category(self) -> RequestFeature:
        if self.dtype == "category" and not self.categories:
            raise ValueError(f"request feature {self.name!r} has dtype category but no categories")
        return self


class ValidationSpec(_Strict):
    """The data-validation gate of a training set."""

    min_rows: int = Field(1000, ge=1)
    max_null_rate: dict[str, float] = Field(default_factory=lambda: {"default": 0.05})
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    label_rate: tuple[float, float] = (0.001, 0.2)
    min_positives: int = Field(20, ge=1)
    max_duplicate_keys: int = Field(0, ge=0)
    # share of a window's days that must hold at least one row
    min_day_coverage: float = Field(0.9, ge=0.0, le=1.0)
    # a feature whose ROC-AUC against the label alone is beyond this is treated as leakage
    leakage_max_auc: float = Field(0.98, gt=0.5, le=1.0)
    # share of rows whose Feast value expired (beyond the view's TTL) tolerated per view
    max_stale_rate: float = Field(0.5, ge=0.0, le=1.0)
    # a column added upstream to an entity partition: a recorded warning (training ignores
    # it) or a blocking failure; a missing or retyped column always blocks
    on_new_columns: Literal["warn", "block"] = "warn"


class DriftSpec(_Strict):
    """Thresholds of the drift monitor."""

    current_window_days: int = Field(1, ge=1)
    # a column drifts when its test statistic crosses its method's threshold
    numeric_method: str = "wasserstein"
    numeric_threshold: float = Field(0.1, gt=0)
    categorical_method: str = "jensenshannon"
    categorical_threshold: float = Field(0.1, gt=0)
    drift_share: float = Field(0.3, gt=0, le=1)
    # the champion's score distribution: PSI is robust to the long tail of fraud scores
    prediction_method: str = "psi"
    prediction_threshold: float = Field(0.2, gt=0)
    # performance decay: alert when the primary metric falls this far below training time,
    # measured on the newest performance_window_days whose labels have matured
    max_metric_drop: float = Field(0.1, ge=0)
    performance_window_days: int = Field(3, ge=1)
    min_labeled_rows: int = Field(500, ge=1)
    # fewer positives than this make a PR-AUC estimate too noisy to call decay
    min_labeled_positives: int = Field(50, ge=1)
    sample_rows: int = Field(50_000, ge=1000)
    # at most one drift-triggered retrain per cooldown; later events are suppressed, recorded.
    # Fractions are fine: 0.05 is three minutes.
    cooldown_hours: float = Field(24, ge=0)
    # how often the AssetWatcher polls the monitoring store for new drift events
    event_poll_seconds: float = Field(5.0, gt=0)
    # an event the watcher claimed (emitted) that no retrain run consumed within this lease
    # goes back to new and is delivered again (a triggerer died between claim and asset event)
    event_lease_seconds: float = Field(300, ge=10)


class TrainingSpec(_Strict):
    window_days: int = Field(28, ge=3)
    validation_days: int = Field(3, ge=1)
    holdout_days: int = Field(4, ge=1)
    num_boost_round: int = Field(400, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    seed: int = 7
    params: dict[str, Any] = Field(default_factory=dict)
    # recall is reported at this false-positive rate
    target_fpr: float = Field(0.01, gt=0, lt=1)
    reference_sample_rows: int = Field(20_000, ge=100)

    @model_validator(mode="after")
    def _splits_fit(self) -> TrainingSpec:
        if self.validation_days + self.holdout_days >= self.window_days:
            raise ValueError(
                f"validation_days + holdout_days ({self.validation_days + self.holdout_days}) "
                f"must be smaller than window_days ({self.window_days})"
            )
        return self


Metric = Literal["pr_auc", "roc_auc", "log_loss", "brier", "recall_at_fpr"]


class PromotionSpec(_Strict):
    primary_metric: Metric = "pr_auc"
    min_improvement: float = Field(0.005, ge=0)
    floors: dict[Metric, float] = Field(default_factory=lambda: {"pr_auc": 0.2, "roc_auc": 0.8})
    # metric -> largest tolerated regression against the champion
    max_regression: dict[Metric, float] = Field(default_factory=lambda: {"roc_auc": 0.01})
    min_holdout_rows: int = Field(1000, ge=1)
    min_holdout_positives: int = Field(20, ge=1)
    # promote only when this two-sided paired-bootstrap interval of the primary metric's
    # gain has its lower bound at or above min_improvement
    confidence: float = Field(0.9, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    bootstrap_seed: int = 0
    # categorical features whose every value must also hold the max_regression guards
    slices: tuple[str, ...] = ()


class ScheduleSpec(_Strict):
    retrain: str = "0 3 * * 1"
    drift_monitor: str = "0 2 * * *"


class ModelSpec(_Strict):
    """Everything driftline needs to know about one model."""

    name: Annotated[str, Field(pattern=_NAME.pattern)]
    description: str
    owner: str = "driftline"
    tags: tuple[str, ...] = ()
    label: str
    label_delay_days: int = Field(7, ge=0)
    entity_table: str = "transactions"
    entity_keys: tuple[str, ...]
    timestamp_column: str = "event_timestamp"
    feature_service: str
    request_features: tuple[RequestFeature, ...] = ()
    feast_features: tuple[str, ...]
    validation: ValidationSpec = ValidationSpec()
    drift: DriftSpec = DriftSpec()
    training: TrainingSpec = TrainingSpec()
    promotion: PromotionSpec = PromotionSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    source: str = ""

    @model_validator(mode="after")
    def _feature_refs(self) -> ModelSpec:
        for ref in self.feast_features:
            if ref.count(":") != 1 or not all(ref.split(":")):
                raise ValueError(f"feast_features entry {ref!r} must be 'feature_view:feature'")
        names = self.feature_names
        if len(set(names)) != len(names):
            raise ValueError(
                f"feature names repeat: {sorted(n for n in names if names.count(n) > 1)}"
            )
        if self.label in names:
            raise ValueError(f"the label {self.label!r} is also listed as a feature")
        return self

    @model_validator(mode="after")
    def _slices_are_categorical(self) -> ModelSpec:
        unknown = [s for s in self.promotion.slices if s not in self.categorical]
        if unknown:
            raise ValueError(
                f"promotion.slices {unknown} must be declared categorical features "
                f"(declared: {sorted(self.categorical)})"
            )
        return self

    @property
    def feature_views(self) -> tuple[str, ...]:
        return tuple(sorted({ref.split(":")[0] for ref in self.feast_features}))

    @property
    def feature_names(self) -> list[str]:
        """Model input columns, in the order the model sees them."""
        return [f.name for f in self.request_features] + [
            ref.split(":")[1] for ref in self.feast_features
        ]

    @property
    def categorical(self) -> dict[str, tuple[str, ...]]:
        return {f.name: f.categories for f in self.request_features if f.dtype == "category"}

    @property
    def registered_model(self) -> str:
        return self.name


def _format_error(path: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{field}: {error['msg']}")
    return f"model spec {path} is malformed: " + "; ".join(problems)


def load_spec_file(path: Path) -> ModelSpec:
    """Parse and validate one spec; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DriftlineError(f"model spec {path} is unreadable: {exc}") from exc
    except yaml.YAMLError as exc:
        raise DriftlineError(f"model spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise DriftlineError(
            f"model spec {path} must be a mapping of fields, got {type(raw).__name__}"
        )
    try:
        spec = ModelSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise DriftlineError(_format_error(path, exc)) from None
    if spec.name != path.stem:
        raise DriftlineError(
            f"model spec {path} is malformed: name: {spec.name!r} must match the file name "
            f"{path.stem!r}"
        )
    return spec


def spec_files(models_dir: Path | None = None) -> list[Path]:
    directory = models_dir or get_settings().models_dir
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in SPEC_SUFFIXES)


def load_specs(models_dir: Path | None = None) -> list[ModelSpec]:
    """Every spec of the models directory, sorted by name."""
    return [load_spec_file(path) for path in spec_files(models_dir)]


def load_spec(name: str, models_dir: Path | None = None) -> ModelSpec:
    """The spec of one model; an unknown name lists the known ones."""
    files = {path.stem: path for path in spec_files(models_dir)}
    if name not in files:
        directory = models_dir or get_settings().models_dir
        known = ", ".join(sorted(files)) or "none"
        raise DriftlineError(f"unknown model {name!r}: no spec in {directory} (known: {known})")
    return load_spec_file(files[name])


def feature_views_in_use(models_dir: Path | None = None) -> list[str]:
    """Feature views some model reads — the assets the materialization DAG updates."""
    return sorted({view for spec in load_specs(models_dir) for view in spec.feature_views})

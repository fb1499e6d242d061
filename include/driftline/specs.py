"""Model specs: one declarative YAML file per model under ``include/models/``.

A spec says everything an operator may want to change without code: the features and
label, the validation rules, drift thresholds, XGBoost parameters, the promotion policy and
the schedules. A second model is a second file. Loading is cheap (YAML + pydantic) because
DAG files call it at parse time to generate one set of DAGs per spec.

Strict: unknown keys are refused, and so is every value the system could not honour — a
per-feature rule on a column that is not a feature (with the nearest valid name), reversed
bounds, an unknown drift method, an invalid cron, a value outside what the trigger form
accepts. Isolated: one broken spec costs only its own model. The DAG files build DAGs from
:func:`loadable_specs`; ``dags/model_specs.py`` raises :func:`check_specs`'s error, so each
broken spec shows as an Airflow import error naming the file and the field.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from driftline.errors import DriftlineError, InvalidInput
from driftline.settings import get_settings

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,62}$")
SPEC_SUFFIXES = (".yaml", ".yml")
# the retrain trigger form's upper bound of window_days; a spec default beyond it would fail
# the DAG's import through the Param
MAX_WINDOW_DAYS = 365
# Evidently 0.7's drift tests by column type (evidently.legacy.calculations.stattests),
# checked against Evidently itself by tests/unit/test_specs.py
NUMERIC_METHODS = (
    "anderson",
    "cramer_von_mises",
    "ed",
    "empirical_mmd",
    "es",
    "hellinger",
    "jensenshannon",
    "kl_div",
    "ks",
    "mannw",
    "psi",
    "t_test",
    "wasserstein",
)
CATEGORICAL_METHODS = (
    "TVD",
    "chisquare",
    "fisher_exact",
    "g_test",
    "hellinger",
    "jensenshannon",
    "kl_div",
    "psi",
    "z",
)


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
    # feature -> ceiling; "default" for every feature not named
    max_null_rate: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: {"default": 0.05}
    )
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    label_rate: tuple[
        Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]
    ] = (0.001, 0.2)
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
    # categorical feature -> category -> [low, high] share of rows, over the window and on
    # every day (a feed that drops a channel for a day cannot hide in a month of good days)
    category_shares: dict[
        str,
        dict[
            str,
            tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]],
        ],
    ] = Field(default_factory=dict)


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
    # served traffic (the prediction log): fewer champion-served rows in the window than this
    # are reported, not judged
    min_served_rows: int = Field(200, ge=1)
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


# tcp://host:port or tls://host:port — what dask.distributed.Client accepts for a scheduler
_DASK_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
DASK_SCHEDULER_ENV = "DRIFTLINE_DASK_SCHEDULER"


def dask_address_problem(address: str) -> str | None:
    """Why ``address`` is not a Dask scheduler address, or None when it is one."""
    match = _DASK_ADDRESS.match(address)
    if match is None:
        return f"{address!r} is not a Dask scheduler address; write tcp://host:port (or tls://)"
    if not 1 <= int(match.group(3)) <= 65535:
        return f"{address!r} has port {match.group(3)}, outside 1-65535"
    return None


class DaskSpec(_Strict):
    """Where ``training.engine: dask`` trains. DRIFTLINE_DASK_SCHEDULER, when set, overrides
    the address (the deployment says where its cluster is; the spec keeps a default)."""

    scheduler_address: str | None = None
    # how long connecting to the scheduler (and waiting for a first worker) may take before
    # the train task fails as Unavailable, naming the address; Airflow then retries it
    connect_timeout_seconds: float = Field(10.0, gt=0, le=300)

    @field_validator("scheduler_address")
    @classmethod
    def _address_is_one(cls, address: str | None) -> str | None:
        problem = address and dask_address_problem(address)
        if problem:
            raise ValueError(problem)
        return address


class TrainingSpec(_Strict):
    # local: xgboost.train in the task's process; dask: xgboost.dask on a Dask cluster
    engine: Literal["local", "dask"] = "local"
    dask: DaskSpec = DaskSpec()
    window_days: int = Field(28, ge=3, le=MAX_WINDOW_DAYS)
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

    @model_validator(mode="after")
    def _dask_has_an_address(self) -> TrainingSpec:
        if self.engine == "dask" and not (
            self.dask.scheduler_address or get_settings().dask_scheduler
        ):
            raise ValueError(
                "engine 'dask' needs a scheduler address: set training.dask.scheduler_address "
                f"(tcp://host:port) or {DASK_SCHEDULER_ENV}; neither is set"
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
    # false: a floor the champion itself fails on the same comparison rows does not keep out
    # a challenger that beats it there (replacing a failing model with a better one); true:
    # floors always block
    strict_floors: bool = False


class RolloutGuards(_Strict):
    """What a canary step must hold, candidate against champion over the same period."""

    # the candidate's error rate above this AND above the champion's breaks the guard; both
    # arms above it (an outage of the service, not the model) holds the step instead
    max_error_rate: float = Field(0.01, ge=0, le=1)
    # the same rule for the 99th percentile of scoring latency, in milliseconds
    max_p99_latency_ms: float = Field(50.0, gt=0)
    # population stability index of the candidate's scores against the champion's
    max_score_psi: float = Field(0.2, gt=0)
    # champion PR-AUC minus candidate PR-AUC on the period's requests whose labels matured:
    # broken when the lower bound of its bootstrap interval (the arms' labeled rows resampled
    # independently) is above this, so a gap that two samples of different cards show by
    # chance does not abort a healthy candidate
    max_pr_auc_drop: float = Field(0.05, ge=0, le=1)
    # two-sided level of that interval
    pr_auc_confidence: float = Field(0.9, gt=0, lt=1)
    # requests each arm needs in the period before the step is judged at all
    min_requests: int = Field(500, ge=1)
    # matured positives each arm needs before the PR-AUC guard is judged (else: not judged)
    min_labeled_positives: int = Field(20, ge=1)


class RolloutSpec(_Strict):
    """How a challenger that passed the offline policy reaches the traffic.

    ``direct``: the champion alias moves at once. ``canary``: the challenger becomes the
    ``candidate`` and serves ``steps[i]`` of the traffic, each step for at least
    ``step_minutes`` while the guards hold; the last step (1.0) is the promotion.
    """

    mode: Literal["direct", "canary"] = "direct"
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    step_minutes: float = Field(30.0, gt=0)
    guards: RolloutGuards = RolloutGuards()


class ScheduleSpec(_Strict):
    retrain: str = "0 3 * * 1"
    drift_monitor: str = "0 2 * * *"
    # how often <model>_rollout checks an active canary (a no-op without one)
    rollout: str = "*/5 * * * *"


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
    rollout: RolloutSpec = RolloutSpec()
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
        problems = _rule_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
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


def _nearest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.0)
    return f" (nearest valid name: {close[0]!r})" if close else ""


def _rule_problems(spec: ModelSpec) -> list[str]:
    """Values the schema admits but the system could not honour, each as ``key.path: why``."""
    problems = []
    features = spec.feature_names
    for section, names in (
        ("ranges", list(spec.validation.ranges)),
        ("max_null_rate", [n for n in spec.validation.max_null_rate if n != "default"]),
    ):
        valid = [*features, "default"] if section == "max_null_rate" else features
        for name in names:
            if name not in features:
                problems.append(
                    f"validation.{section}.{name}: {name!r} is not a feature of this model"
                    f"{_nearest(name, valid)}"
                )
    for name, (low, high) in spec.validation.ranges.items():
        if low > high:
            problems.append(f"validation.ranges.{name}: lower bound {low} is above upper {high}")
    categorical = spec.categorical
    for name, shares in spec.validation.category_shares.items():
        if name not in categorical:
            problems.append(
                f"validation.category_shares.{name}: {name!r} is not a categorical feature "
                f"of this model{_nearest(name, list(categorical))}"
            )
            continue
        for category, (low, high) in shares.items():
            if category not in categorical[name]:
                problems.append(
                    f"validation.category_shares.{name}.{category}: {category!r} is not a "
                    f"declared category of {name}{_nearest(category, list(categorical[name]))}"
                )
            if low > high:
                problems.append(
                    f"validation.category_shares.{name}.{category}: lower bound {low} is "
                    f"above upper {high}"
                )
    low, high = spec.validation.label_rate
    if low >= high:
        problems.append(f"validation.label_rate: lower bound {low} is not below upper {high}")
    for key, value, allowed in (
        ("numeric_method", spec.drift.numeric_method, NUMERIC_METHODS),
        ("categorical_method", spec.drift.categorical_method, CATEGORICAL_METHODS),
        ("prediction_method", spec.drift.prediction_method, NUMERIC_METHODS),
    ):
        if value not in allowed:
            problems.append(
                f"drift.{key}: {value!r} is not an Evidently drift method for this column "
                f"type{_nearest(value, list(allowed))}; one of {', '.join(allowed)}"
            )
    from croniter import croniter

    problems.extend(_rollout_problems(spec.rollout))
    for key in ("retrain", "drift_monitor", "rollout"):
        cron = getattr(spec.schedule, key)
        if not croniter.is_valid(cron) or len(cron.split()) not in (1, 5):
            problems.append(
                f"schedule.{key}: {cron!r} is not a valid cron expression "
                "(five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * 1')"
            )
    return problems


def _rollout_problems(rollout: RolloutSpec) -> list[str]:
    """The steps of a rollout: strictly increasing shares in (0, 1], ending at 1.0."""
    steps = list(rollout.steps)
    problems = []
    if not steps or steps[-1] != 1.0:
        problems.append(f"rollout.steps: {steps} must end at 1.0 (the step that promotes)")
    outside = [share for share in steps if not 0 < share <= 1]
    if outside:
        problems.append(f"rollout.steps: {steps} has shares outside (0, 1]: {outside}")
    if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
        problems.append(f"rollout.steps: {steps} must be strictly increasing")
    if rollout.mode == "canary" and len(steps) < 2:
        problems.append(
            f"rollout.steps: {steps} — a canary needs at least one share below 1.0 "
            "(at 1.0 no champion traffic is left to compare with)"
        )
    return problems


def _format_error(path: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        got = error.get("input")
        if field and not isinstance(got, dict) and len(repr(got)) <= 80:
            message = f"{message} (got {got!r})"
        problems.append(f"{field}: {message}" if field else message)
    return f"model spec {path} is malformed: " + "; ".join(problems)


def load_spec_file(path: Path) -> ModelSpec:
    """Parse and validate one spec; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"model spec {path} is unreadable: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"model spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"model spec {path} must be a mapping of fields, got {type(raw).__name__}"
        )
    try:
        spec = ModelSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise InvalidInput(_format_error(path, exc)) from None
    if spec.name != path.stem:
        raise InvalidInput(
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
    """Every spec of the models directory, sorted by name; the first broken one raises."""
    return [load_spec_file(path) for path in spec_files(models_dir)]


def loadable_specs(models_dir: Path | None = None) -> list[ModelSpec]:
    """The specs that load; a broken one is logged and left out, costing only its model.

    For the DAG files: Airflow drops every DAG of a file that raises, so they build DAGs from
    these, and ``dags/model_specs.py`` reports the broken ones as its import error.
    """
    specs = []
    for path in spec_files(models_dir):
        try:
            specs.append(load_spec_file(path))
        except DriftlineError as exc:
            log.error("%s; its DAGs are left out until it is fixed", exc)
    return specs


def model_names(models_dir: Path | None = None) -> list[str]:
    """Every model with a spec file, broken or not (a broken spec's events wait for its fix)."""
    return [path.stem for path in spec_files(models_dir)]


def check_specs(models_dir: Path | None = None) -> None:
    """Raise one error listing every broken spec (file, field, value, nearest valid name)."""
    problems = []
    for path in spec_files(models_dir):
        try:
            load_spec_file(path)
        except DriftlineError as exc:
            problems.append(str(exc))
    if problems:
        count = f"{len(problems)} model spec{'s' if len(problems) > 1 else ''}"
        raise InvalidInput(
            f"{count} broken, {'its' if len(problems) == 1 else 'their'} DAGs are left out "
            "(every other model runs):\n- " + "\n- ".join(problems)
        )


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
    return sorted({view for spec in loadable_specs(models_dir) for view in spec.feature_views})

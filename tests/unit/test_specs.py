"""Model specs: the shipped one is valid; a broken one names its file and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from driftline.errors import DriftlineError, InvalidInput
from driftline.settings import REPO_ROOT
from driftline.specs import (
    CATEGORICAL_METHODS,
    NUMERIC_METHODS,
    check_specs,
    feature_views_in_use,
    load_spec,
    load_specs,
    loadable_specs,
    model_names,
)

MODELS = REPO_ROOT / "include" / "models"


def _write(directory: Path, file_stem: str, **changes: object) -> Path:
    raw = yaml.safe_load((MODELS / "fraud_detection.yaml").read_text())
    raw["name"] = file_stem
    raw.update(changes)
    path = directory / f"{file_stem}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_spec_loads() -> None:
    spec = load_spec("fraud_detection", MODELS)
    assert spec.feature_service == "fraud_detection_v1"
    assert spec.feature_views == ("card_features", "merchant_features")
    assert "amount" in spec.feature_names and "is_fraud" not in spec.feature_names
    assert spec.categorical["channel"] == ("chip", "contactless", "online")
    assert feature_views_in_use(MODELS) == ["card_features", "merchant_features"]


def test_a_second_model_is_a_second_file(tmp_path: Path) -> None:
    _write(tmp_path, "fraud_detection")
    _write(
        tmp_path,
        "fraud_lite",
        name="fraud_lite",
        feast_features=["card_features:card_txn_count_1h"],
        # per-feature rules name only this model's features
        validation=_validation(ranges={"amount": [0.01, 100000]}, max_null_rate={"default": 0.02}),
    )
    assert [spec.name for spec in load_specs(tmp_path)] == ["fraud_detection", "fraud_lite"]


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(
        DriftlineError, match=r"unknown model 'fraud_detecton'.*known: fraud_detection"
    ):
        load_spec("fraud_detecton", MODELS)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"training": {"window_days": "many"}}, "training.window_days"),
        ({"promotion": {"primary_metric": "accuracy"}}, "promotion.primary_metric"),
        ({"feast_features": ["card_txn_count_1h"]}, "must be 'feature_view:feature'"),
        ({"validation": {"min_rows": 0}}, "validation.min_rows"),
        ({"label_rate_typo": 1}, "label_rate_typo: Extra inputs are not permitted"),
        ({"training": {"window_days": 5, "validation_days": 3, "holdout_days": 4}}, "training"),
    ],
)
def test_malformed_spec_names_file_and_field(tmp_path: Path, changes: dict, field: str) -> None:
    path = _write(tmp_path, "fraud_detection", **changes)
    with pytest.raises(DriftlineError) as error:
        load_spec("fraud_detection", tmp_path)
    assert f"model spec {path} is malformed" in str(error.value)
    assert field in str(error.value)


def test_name_must_match_file(tmp_path: Path) -> None:
    _write(tmp_path, "fraud_detection", name="other_model")
    with pytest.raises(DriftlineError, match="name: 'other_model' must match the file name"):
        load_spec("fraud_detection", tmp_path)


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "fraud_detection.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(DriftlineError, match=rf"model spec {path} is not valid YAML"):
        load_spec("fraud_detection", tmp_path)


@pytest.mark.parametrize(
    ("promotion", "message"),
    [
        ({"confidence": 0.5}, "promotion.confidence: Input should be greater than 0.5"),
        ({"confidence": 1.0}, "promotion.confidence: Input should be less than 1"),
        ({"bootstrap_resamples": 50}, "promotion.bootstrap_resamples: Input should be greater"),
        ({"slices": ["amount"]}, "promotion.slices ['amount'] must be declared categorical"),
        ({"slices": ["planet"]}, "promotion.slices ['planet'] must be declared categorical"),
    ],
)
def test_promotion_confidence_and_slices_are_validated(
    tmp_path: Path, promotion: dict, message: str
) -> None:
    raw = yaml.safe_load((MODELS / "fraud_detection.yaml").read_text())
    path = _write(tmp_path, "fraud_detection", promotion={**raw["promotion"], **promotion})
    with pytest.raises(DriftlineError, match=re.escape(message)):
        load_spec("fraud_detection", tmp_path)
    assert str(path) in _message(tmp_path)


def _message(directory: Path) -> str:
    try:
        load_spec("fraud_detection", directory)
    except DriftlineError as exc:
        return str(exc)
    return ""


def test_shipped_spec_has_a_full_rollout_block_in_direct_mode() -> None:
    # direct: the embedded stack has no live traffic for a canary to be judged on (README)
    rollout = load_spec("fraud_detection", MODELS).rollout
    assert rollout.mode == "direct"
    assert rollout.steps == (0.05, 0.25, 0.5, 1.0) and rollout.step_minutes > 0
    assert rollout.guards.min_requests >= 1


def test_shipped_spec_declares_confidence_and_slices() -> None:
    promotion = load_spec("fraud_detection", MODELS).promotion
    assert (promotion.confidence, promotion.slices) == (0.9, ("channel",))
    assert promotion.bootstrap_resamples >= 100


def _training(**changes: object) -> dict:
    raw = yaml.safe_load((MODELS / "fraud_detection.yaml").read_text())["training"]
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"engine": "spark"}, "training.engine: Input should be 'local' or 'dask' (got 'spark')"),
        (
            {"engine": "dask"},
            "training: engine 'dask' needs a scheduler address: set "
            "training.dask.scheduler_address (tcp://host:port) or DRIFTLINE_DASK_SCHEDULER",
        ),
        (
            {"engine": "dask", "dask": {"scheduler_address": "dask-scheduler:8786"}},
            "training.dask.scheduler_address: 'dask-scheduler:8786' is not a Dask scheduler "
            "address; write tcp://host:port",
        ),
        (
            {"engine": "dask", "dask": {"scheduler_address": "tcp://dask:87860"}},
            "training.dask.scheduler_address: 'tcp://dask:87860' has port 87860",
        ),
        (
            {"dask": {"scheduler_address": "tcp://dask:8786", "connect_timeout_seconds": 0}},
            "training.dask.connect_timeout_seconds: Input should be greater than 0 (got 0)",
        ),
    ],
)
def test_training_engine_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training: dict, message: str
) -> None:
    monkeypatch.delenv("DRIFTLINE_DASK_SCHEDULER", raising=False)
    path = _write(tmp_path, "fraud_detection", training=_training(**training))
    with pytest.raises(InvalidInput, match=re.escape(message)) as error:
        load_spec("fraud_detection", tmp_path)
    assert f"model spec {path} is malformed" in str(error.value)


def test_dask_address_may_come_from_the_environment_which_overrides_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline.settings import get_settings
    from driftline.training_dask import scheduler_address

    assert load_spec("fraud_detection", MODELS).training.engine == "local"
    monkeypatch.setenv("DRIFTLINE_DASK_SCHEDULER", "tcp://10.0.0.5:8786")
    path = _write(tmp_path, "fraud_detection", training=_training(engine="dask"))
    spec = load_spec("fraud_detection", tmp_path)
    assert scheduler_address(spec, get_settings()) == (
        "tcp://10.0.0.5:8786",
        "DRIFTLINE_DASK_SCHEDULER",
    )
    monkeypatch.delenv("DRIFTLINE_DASK_SCHEDULER")
    _write(
        tmp_path,
        "fraud_detection",
        training=_training(engine="dask", dask={"scheduler_address": "tls://dask.internal:8786"}),
    )
    spec = load_spec("fraud_detection", tmp_path)
    assert scheduler_address(spec, get_settings()) == (
        "tls://dask.internal:8786",
        f"training.dask.scheduler_address in {path}",
    )
    monkeypatch.setenv("DRIFTLINE_DASK_SCHEDULER", "localhost:8786")
    with pytest.raises(
        InvalidInput,
        match=re.escape("DRIFTLINE_DASK_SCHEDULER: 'localhost:8786' is not a Dask scheduler"),
    ):
        scheduler_address(spec, get_settings())


def _validation(**changes: object) -> dict:
    raw = yaml.safe_load((MODELS / "fraud_detection.yaml").read_text())["validation"]
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"validation": _validation(ranges={"amout": [0.01, 100000]})},
            "validation.ranges.amout: 'amout' is not a feature of this model "
            "(nearest valid name: 'amount')",
        ),
        (
            {"validation": _validation(max_null_rate={"default": 0.02, "card_amount_mean7d": 0.2})},
            "validation.max_null_rate.card_amount_mean7d: 'card_amount_mean7d' is not a feature "
            "of this model (nearest valid name: 'card_amount_mean_7d')",
        ),
        (
            {"validation": _validation(ranges={"hour": [23, 0]})},
            "validation.ranges.hour: lower bound 23.0 is above upper 0.0",
        ),
        (
            {"validation": _validation(label_rate=[0.08, 0.003])},
            "validation.label_rate: lower bound 0.08 is not below upper 0.003",
        ),
        ({"validation": _validation(label_rate=[0.0, 1.5])}, "validation.label_rate.1"),
        (
            {"validation": _validation(category_shares={"chanel": {"online": [0.1, 0.5]}})},
            "validation.category_shares.chanel: 'chanel' is not a categorical feature of this "
            "model (nearest valid name: 'channel')",
        ),
        (
            {"validation": _validation(category_shares={"channel": {"onlin": [0.1, 0.5]}})},
            "validation.category_shares.channel.onlin: 'onlin' is not a declared category of "
            "channel (nearest valid name: 'online')",
        ),
        (
            {"validation": _validation(category_shares={"channel": {"online": [0.6, 0.1]}})},
            "validation.category_shares.channel.online: lower bound 0.6 is above upper 0.1",
        ),
        ({"validation": _validation(max_null_rate={"default": 2})}, "max_null_rate.default"),
        (
            {"drift": {"numeric_method": "wasserstien"}},
            "drift.numeric_method: 'wasserstien' is not an Evidently drift method for this "
            "column type (nearest valid name: 'wasserstein')",
        ),
        (
            {"drift": {"categorical_method": "wasserstein"}},
            "drift.categorical_method: 'wasserstein' is not an Evidently drift method",
        ),
        (
            {"schedule": {"retrain": "0 25 * * 1"}},
            "schedule.retrain: '0 25 * * 1' is not a valid cron expression",
        ),
        (
            {"schedule": {"drift_monitor": "every night"}},
            "schedule.drift_monitor: 'every night' is not a valid cron expression",
        ),
        (
            {"training": {"window_days": 400}},
            "training.window_days: Input should be less than or equal to 365",
        ),
        (
            {"rollout": {"mode": "canary", "steps": [0.5, 0.25, 1.0]}},
            "rollout.steps: [0.5, 0.25, 1.0] must be strictly increasing",
        ),
        (
            {"rollout": {"steps": [0.05, 0.5]}},
            "rollout.steps: [0.05, 0.5] must end at 1.0 (the step that promotes)",
        ),
        (
            {"rollout": {"steps": [0.0, 0.5, 1.0]}},
            "rollout.steps: [0.0, 0.5, 1.0] has shares outside (0, 1]: [0.0]",
        ),
        (
            {"rollout": {"steps": [0.5, 1.5]}},
            "rollout.steps: [0.5, 1.5] has shares outside (0, 1]: [1.5]",
        ),
        (
            {"rollout": {"mode": "canary", "steps": [1.0]}},
            "rollout.steps: [1.0] — a canary needs at least one share below 1.0",
        ),
        (
            {"rollout": {"mode": "gradual"}},
            "rollout.mode: Input should be 'direct' or 'canary' (got 'gradual')",
        ),
        (
            {"rollout": {"step_minutes": 0}},
            "rollout.step_minutes: Input should be greater than 0 (got 0)",
        ),
        (
            {"rollout": {"guards": {"max_error_rate": 1.5}}},
            "rollout.guards.max_error_rate: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            {"rollout": {"guards": {"min_requests": 0}}},
            "rollout.guards.min_requests: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"rollout": {"guards": {"max_p99_latency": 50}}},
            "rollout.guards.max_p99_latency: Extra inputs are not permitted",
        ),
        (
            {"schedule": {"rollout": "every minute"}},
            "schedule.rollout: 'every minute' is not a valid cron expression",
        ),
    ],
)
def test_values_the_system_cannot_honour_are_refused(
    tmp_path: Path, changes: dict, expected: str
) -> None:
    path = _write(tmp_path, "fraud_detection", **changes)
    with pytest.raises(InvalidInput) as error:
        load_spec("fraud_detection", tmp_path)
    assert f"model spec {path} is malformed" in str(error.value)
    assert expected in str(error.value)


def test_every_rule_problem_is_named_at_once(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "fraud_detection",
        validation=_validation(ranges={"amout": [0, 1], "hour": [5, 1]}),
        schedule={"retrain": "61 * * * *"},
    )
    with pytest.raises(InvalidInput) as error:
        load_spec("fraud_detection", tmp_path)
    for part in ("validation.ranges.amout", "validation.ranges.hour", "schedule.retrain"):
        assert part in str(error.value)


def test_a_broken_spec_costs_only_its_own_model(tmp_path: Path) -> None:
    _write(tmp_path, "fraud_detection")
    broken = _write(
        tmp_path, "fraud_lite", name="fraud_lite", validation=_validation(ranges={"amout": [0, 1]})
    )
    unparsable = tmp_path / "fraud_yaml.yaml"
    unparsable.write_text("name: fraud_yaml\n  label: [oops\n")

    assert [spec.name for spec in loadable_specs(tmp_path)] == ["fraud_detection"]
    assert feature_views_in_use(tmp_path) == ["card_features", "merchant_features"]
    assert model_names(tmp_path) == ["fraud_detection", "fraud_lite", "fraud_yaml"]
    with pytest.raises(InvalidInput) as error:
        check_specs(tmp_path)
    message = str(error.value)
    assert message.startswith("2 model specs broken")
    assert f"model spec {broken} is malformed: validation.ranges.amout" in message
    assert f"model spec {unparsable} is not valid YAML" in message
    with pytest.raises(InvalidInput):
        load_specs(tmp_path)


def test_good_specs_pass_the_check() -> None:
    check_specs(MODELS)


def test_drift_method_lists_match_evidently() -> None:
    import evidently.legacy.calculations.stattests  # noqa: F401  (registers the tests)
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
    from evidently.legacy.core import ColumnType

    def registered(column_type: ColumnType) -> list[str]:
        return sorted(
            name for name, by_type in _registered_stat_tests.items() if column_type in by_type
        )

    assert list(NUMERIC_METHODS) == registered(ColumnType.Numerical)
    assert list(CATEGORICAL_METHODS) == registered(ColumnType.Categorical)

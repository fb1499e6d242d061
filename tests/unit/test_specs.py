"""Model specs: the shipped one is valid; a broken one names its file and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from driftline.errors import DriftlineError
from driftline.settings import REPO_ROOT
from driftline.specs import feature_views_in_use, load_spec, load_specs

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


def test_shipped_spec_declares_confidence_and_slices() -> None:
    promotion = load_spec("fraud_detection", MODELS).promotion
    assert (promotion.confidence, promotion.slices) == (0.9, ("channel",))
    assert promotion.bootstrap_resamples >= 100

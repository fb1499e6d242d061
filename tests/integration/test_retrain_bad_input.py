"""Bad input to the retrain stages, on a real Feast store and MLflow registry: each case is
a clear error naming the problem, and nothing is registered or promoted."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from driftline import offline, registry, retrain
from driftline.datagen import generate
from driftline.errors import DriftlineError
from driftline.feature_store import apply_repo
from driftline.lineage import RunContext
from driftline.settings import REPO_ROOT
from tests.conftest import EARLY_START, SMALL, isolate_environment

MODEL = "fraud_detection"
AS_OF = datetime(2026, 2, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """50 baseline days, the registry applied and a first champion trained."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("bad_input") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        # 2025-12-22 .. 2026-02-09: the training window (from 2026-01-06) is past the warm-up
        # week in which merchants have no matured labels yet
        generate(offline_dir=home / "offline", days=50, start=EARLY_START, **SMALL)
        apply_repo()
        retrain.run_all(MODEL, as_of=AS_OF, context=RunContext(run_id="first-champion"))
        assert registry.alias_version(MODEL, registry.CHAMPION) == "1"
        yield home


def _rewrite(
    home: Path, table: str, day: datetime | None, change: Callable[[pd.DataFrame], pd.DataFrame]
) -> None:
    days = offline.list_days(home / "offline", table)
    target = day.date() if day else days[-1]
    path = offline.partition_path(home / "offline", table, target)
    frame = change(pd.read_parquet(path))
    path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


@pytest.fixture
def restore(state: Path) -> Iterator[Path]:
    """Snapshot the offline store; put it back after the test."""
    backup = state.parent / "offline.backup"
    shutil.copytree(state / "offline", backup)
    yield state
    shutil.rmtree(state / "offline")
    shutil.move(backup, state / "offline")


def _run(name: str, **kwargs) -> None:
    retrain.run_all(
        MODEL, as_of=kwargs.pop("as_of", AS_OF), context=RunContext(run_id=name), **kwargs
    )


def _nothing_changed() -> None:
    assert registry.alias_version(MODEL, registry.CHAMPION) == "1"
    found = registry.client().search_model_versions(f"name='{MODEL}'")
    assert sorted(str(v.version) for v in found) == ["1"]


NEWEST = None
IN_WINDOW = datetime(2026, 1, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("case", "table", "day", "change", "message"),
    [
        (
            "missing feature column",
            "card_features",
            NEWEST,
            lambda f: f.drop(columns=["card_txn_count_1h"]),
            r"schema change in offline partition .*card_features/date=2026-02-09/part-0\.parquet: missing columns \['card_txn_count_1h'\]",
        ),
        (
            "wrong dtype",
            "transactions",
            IN_WINDOW,
            lambda f: f.assign(amount=f["amount"].astype(str)),
            r"date=2026-01-20/part-0\.parquet: changed types \['amount: string \(expected double\)'\]",
        ),
        (
            "all-null column",
            "transactions",
            NEWEST,
            lambda f: f.assign(distance_from_home_km=float("nan")),
            r"recent\.null_rate\[distance_from_home_km\]: observed 0\.1\d+, threshold <= 0\.02",
        ),
        (
            "infinite values",
            "transactions",
            NEWEST,
            lambda f: f.assign(amount=f["amount"].where(f.index % 20 != 0, float("inf"))),
            r"recent\.finite\[amount\]: observed \d+, threshold 0 infinite values",
        ),
        (
            "duplicate rows",
            "transactions",
            NEWEST,
            lambda f: pd.concat([f, f.head(25)]),
            r"recent\.duplicate_keys: observed 25",
        ),
        (
            "future timestamps",
            "transactions",
            NEWEST,
            lambda f: f.assign(
                event_timestamp=f["event_timestamp"] + pd.Timedelta(days=60),
                label_available_at=f["label_available_at"] + pd.Timedelta(days=60),
            ),
            r"recent\.no_future_timestamps: observed \d+, threshold 0 rows after the as-of time",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_bad_partition(restore: Path, case, table, day, change, message) -> None:
    _rewrite(restore, table, day, change)
    with pytest.raises(DriftlineError) as error:
        _run(case.replace(" ", "-"))
    assert re.search(message, str(error.value)), str(error.value)
    _nothing_changed()


def _with_new_column(home: Path, table: str) -> Path:
    _rewrite(home, table, NEWEST, lambda f: f.assign(loyalty_tier="gold"))
    newest = offline.list_days(home / "offline", table)[-1]
    return offline.partition_path(home / "offline", table, newest)


# upstream adds a column to the newest day: of the label table, of a feature view's source
SCHEMA_EVOLUTION = pytest.mark.parametrize("table", ["transactions", "card_features"])


@SCHEMA_EVOLUTION
def test_a_new_column_is_a_recorded_warning(restore: Path, table: str) -> None:
    path = _with_new_column(restore, table)
    context = RunContext(run_id=f"new-column-{table}")
    built = retrain.build(MODEL, as_of=AS_OF, context=context)
    for name in ("recent.parquet", "training_set.parquet"):
        assert "loyalty_tier" not in pd.read_parquet(Path(built["run_dir"]) / name)
    result = retrain.validate(MODEL, built["run_dir"], context=context)
    assert result["passed"]
    report = json.loads((Path(built["run_dir"]) / "validation.json").read_text())
    [check] = [c for c in report["checks"] if c["name"] == "training.schema_evolution"]
    assert check["passed"] and check["warning"]
    assert check["observed"] == [f"{path}: new columns ['loyalty_tier']"]
    _nothing_changed()


@SCHEMA_EVOLUTION
def test_a_new_column_blocks_when_the_spec_says_so(
    restore: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    raw = yaml.safe_load((REPO_ROOT / "include" / "models" / "fraud_detection.yaml").read_text())
    raw["validation"]["on_new_columns"] = "block"
    (tmp_path / "fraud_detection.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(tmp_path))
    path = _with_new_column(restore, table)
    with pytest.raises(DriftlineError) as error:
        _run(f"new-column-blocked-{table}")
    assert f"schema change in offline partition {path}: unexpected columns ['loyalty_tier']" in (
        str(error.value)
    )
    _nothing_changed()


def test_no_positive_labels(restore: Path) -> None:
    for day in offline.list_days(restore / "offline"):
        _rewrite(
            restore,
            "transactions",
            datetime(day.year, day.month, day.day, tzinfo=UTC),
            lambda f: f.assign(is_fraud=0),
        )
    with pytest.raises(DriftlineError, match=r"training.positives: observed 0, threshold >= 30"):
        _run("no-positives")
    _nothing_changed()


def test_stale_features(restore: Path) -> None:
    # merchant snapshots stop after 2026-01-12: later rows find none within the 2-day TTL
    for day in offline.list_days(restore / "offline", "merchant_features"):
        if day > datetime(2026, 1, 12).date():
            shutil.rmtree(
                offline.partition_path(restore / "offline", "merchant_features", day).parent
            )
    with pytest.raises(
        DriftlineError, match=r"training.freshness\[merchant_features\]: observed 0\.\d+"
    ):
        _run("stale")
    _nothing_changed()


def test_empty_training_window(state: Path) -> None:
    with pytest.raises(DriftlineError) as error:
        _run("empty", as_of=datetime(2025, 6, 1, tzinfo=UTC))
    assert "training.row_count: observed 0" in str(error.value)
    _nothing_changed()


def test_too_few_rows(state: Path) -> None:
    with pytest.raises(
        DriftlineError, match=r"training.row_count: observed \d+, threshold >= 5000"
    ):
        _run("few-rows", window_days=8)
    _nothing_changed()


def test_window_too_short_for_the_splits(state: Path) -> None:
    with pytest.raises(DriftlineError, match=r"window_days 5 is too short for fraud_detection"):
        _run("short", window_days=5)
    _nothing_changed()


def test_unknown_model(state: Path) -> None:
    with pytest.raises(
        DriftlineError, match=r"unknown model 'fraud_detecton'.*known: fraud_detection"
    ):
        retrain.run_all("fraud_detecton", as_of=AS_OF, context=RunContext(run_id="unknown"))


def test_malformed_spec_names_file_and_field(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load((REPO_ROOT / "include" / "models" / "fraud_detection.yaml").read_text())
    raw["promotion"]["floors"]["pr_auc"] = "high"
    spec_path = tmp_path / "fraud_detection.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(tmp_path))
    with pytest.raises(DriftlineError) as error:
        _run("malformed")
    assert f"model spec {spec_path} is malformed: promotion.floors.pr_auc" in str(error.value)
    _nothing_changed()

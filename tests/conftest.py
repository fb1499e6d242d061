"""Shared fixtures: an isolated state directory per test, small generated data sets."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.settings import REPO_ROOT

# Variables that would point a test at the developer's own state.
_ISOLATED = (
    "AIRFLOW_HOME",
    "MLFLOW_TRACKING_URI",
    "FEAST_FS_YAML_FILE_PATH",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)

# A small world that still has every feature populated.
SMALL = {"n_cards": 400, "n_merchants": 60, "seed": 11}
START = "2026-01-01"
# Ten days earlier: data from here to 2026-02-09 lets a retrain as of 2026-02-10 train on
# days past the world's warm-up week (merchants have no matured labels before its day 8,
# which the per-day null-rate rule rightly refuses).
EARLY_START = "2025-12-22"
# A world big and long enough for drift statistics: the per-day noise of 400 cards crosses
# the drift thresholds, and the merchant fraud rate needs 37 days (30-day window + 7-day
# label delay) before its training reference is out of the warm-up.
WORLD = {"n_cards": 1200, "n_merchants": 150, "seed": 11}
WORLD_DAYS = 70


def isolate_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for key in list(os.environ):
        if key.startswith("DRIFTLINE_") or key in _ISOLATED:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DRIFTLINE_HOME", str(home))


@contextlib.contextmanager
def applied_feast_home(
    tmp_path_factory: pytest.TempPathFactory, baseline_offline: Path, name: str = "feast"
) -> Iterator[Path]:
    """A state directory with the baseline data and the Feast repo applied, the environment
    pointing at it while the block runs (for module-scoped fixtures)."""
    from driftline.feature_store import apply_repo

    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp(name) / "state"
        home.mkdir()
        isolate_environment(patch, home)
        shutil.copytree(baseline_offline, home / "offline")
        apply_repo()
        yield home


@pytest.fixture
def driftline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty state directory that every setting points into."""
    home = tmp_path / "state"
    home.mkdir()
    isolate_environment(monkeypatch, home)
    return home


@pytest.fixture(scope="session")
def baseline_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """21 baseline days of a small world, generated once per session. Copy before changing."""
    from driftline.datagen import generate

    offline_dir = tmp_path_factory.mktemp("baseline") / "offline"
    generate(offline_dir=offline_dir, days=21, start=START, **SMALL)
    return offline_dir


@pytest.fixture(scope="session")
def world_offline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORLD_DAYS baseline days of the drift-sized world, generated once per session."""
    from driftline.datagen import generate

    offline_dir = tmp_path_factory.mktemp("world") / "offline"
    generate(offline_dir=offline_dir, days=WORLD_DAYS, start=START, **WORLD)
    return offline_dir


@pytest.fixture
def offline_copy(baseline_offline: Path, driftline_home: Path) -> Path:
    """The session's baseline data, copied into this test's state directory."""
    target = driftline_home / "offline"
    shutil.copytree(baseline_offline, target)
    return target


@pytest.fixture(scope="session")
def repo_root() -> Iterator[Path]:
    yield REPO_ROOT


@pytest.fixture(scope="session")
def airflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow metadata database migrated once per session; tests copy it."""
    from tests.airflow_env import airflow_env, run_airflow

    home = tmp_path_factory.mktemp("airflow_template")
    run_airflow(["db", "migrate"], airflow_env(home), timeout=300)
    return home / "airflow.db"

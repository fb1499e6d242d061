"""Settings are read lazily, default under one state directory, and are all documented."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from driftline import settings as settings_module
from driftline.settings import ENVIRONMENT, REPO_ROOT, get_settings


def test_every_location_defaults_under_the_state_directory(driftline_home: Path) -> None:
    s = get_settings()
    for location in (
        s.offline_dir,
        s.runs_dir,
        s.feast_registry,
        s.feast_online_path,
        s.airflow_home,
        s.mlflow_artifacts,
    ):
        assert location.is_relative_to(driftline_home), location
    assert s.mlflow_tracking_uri == f"sqlite:///{driftline_home}/mlflow/mlflow.db"
    assert s.monitoring_db_url == f"sqlite:///{driftline_home}/monitoring.db"
    assert s.feast_yaml == REPO_ROOT / "feature_repo" / "feature_store.yaml"


def test_environment_is_read_when_asked_not_at_import(
    driftline_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    importlib.reload(settings_module)
    monkeypatch.setenv("DRIFTLINE_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    s = settings_module.get_settings()
    assert s.home == tmp_path / "elsewhere"
    assert s.offline_dir == tmp_path / "elsewhere" / "offline"
    assert s.mlflow_tracking_uri == "http://mlflow.internal:5000"


def test_default_state_directory_is_git_ignored() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "/.local/" in ignored


def test_readme_documents_every_variable() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table_rows = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    missing = [name for name, _, _ in ENVIRONMENT if name not in table_rows]
    assert not missing, f"README configuration table lacks {missing}"

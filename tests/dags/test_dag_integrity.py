"""Every DAG file imports cleanly, touches nothing external at parse time, and follows
the project's DAG conventions."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.settings import REPO_ROOT

# dags/model_specs.py defines no DAG: it reports broken model specs as its import error.
SPEC_CHECK = REPO_ROOT / "dags" / "model_specs.py"
DAG_FILES = sorted(path for path in (REPO_ROOT / "dags").glob("*.py") if path != SPEC_CHECK)
PARSE_BUDGET_SECONDS = 5.0
SCRIPT = Path(__file__).with_name("parse_dag_file.py")


@cache
def _parse(path: Path, home: str, models_dir: Path | None = None) -> dict[str, Any]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "DRIFTLINE_", "MLFLOW_"))
    }
    env.update(
        AIRFLOW_HOME=home,
        DRIFTLINE_HOME=home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        PYTHONPATH=str(REPO_ROOT / "plugins"),
    )
    if models_dir is not None:
        env["DRIFTLINE_MODELS_DIR"] = str(models_dir)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parse_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    # An Airflow home without a metadata database: any DB access at parse time must fail.
    return str(tmp_path_factory.mktemp("airflow_home"))


def test_there_are_dags() -> None:
    assert DAG_FILES


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_imports_without_errors_or_external_access(path: Path, parse_home: str) -> None:
    parsed = _parse(path, parse_home)
    assert parsed["import_errors"] == {}
    assert parsed["dags"], f"{path.name} defines no DAG"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parse_time_under_budget(path: Path, parse_home: str) -> None:
    assert _parse(path, parse_home)["seconds"] < PARSE_BUDGET_SECONDS


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_conventions(path: Path, parse_home: str) -> None:
    for dag in _parse(path, parse_home)["dags"]:
        where = f"{path.name}:{dag['dag_id']}"
        assert dag["tags"], f"{where} has no tags"
        assert "airflow" not in dag["owners"], f"{where} keeps the default owner"
        assert dag["min_retries"] >= 2, f"{where} has a task with retries < 2"
        assert dag["catchup"] is False, f"{where} must set catchup=False"
        assert len(dag["doc_md"]) > 200, f"{where} needs a doc_md saying what it does"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_schedule_is_explicit(path: Path) -> None:
    tree = ast.parse(path.read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) in {"dag", "DAG"}
    ]
    assert calls, f"{path.name} has no dag(...) call"
    for call in calls:
        assert "schedule" in {kw.arg for kw in call.keywords}, f"{path.name}: schedule= missing"


def test_parse_guard_catches_parse_time_access(tmp_path: Path, parse_home: str) -> None:
    # The guard itself must be able to fail: a DAG reading a Variable at parse time.
    bad = tmp_path / "bad_dag.py"
    bad.write_text(
        "from datetime import datetime\n"
        "from airflow.sdk import Variable, dag\n"
        "threshold = Variable.get('threshold')\n"
        "@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)\n"
        "def bad_dag():\n    pass\n"
        "bad_dag()\n"
    )
    parsed = _parse(bad, parse_home)
    assert "Airflow Variable lookup at parse time" in json.dumps(parsed["import_errors"])


def test_spec_check_file_defines_no_dag_and_passes_on_the_shipped_specs(parse_home: str) -> None:
    parsed = _parse(SPEC_CHECK, parse_home)
    assert parsed["import_errors"] == {}
    assert parsed["dags"] == []


def test_a_broken_spec_costs_only_its_own_model(tmp_path: Path, parse_home: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO_ROOT / "include" / "models" / "fraud_detection.yaml", models)
    raw = yaml.safe_load((models / "fraud_detection.yaml").read_text())
    raw["name"] = "fraud_lite"
    raw["validation"]["ranges"] = {"amout": [0.01, 100000]}
    (models / "fraud_lite.yaml").write_text(yaml.safe_dump(raw))
    # the malformed file of the report: an indentation error
    (models / "fraud_indent.yaml").write_text("name: fraud_indent\n  label: is_fraud\n")

    parsed = _parse(REPO_ROOT / "dags", parse_home, models)

    assert sorted(dag["dag_id"] for dag in parsed["dags"]) == [
        "feature_materialization",
        "fraud_detection_drift_monitor",
        "fraud_detection_retrain",
        "fraud_detection_rollout",
    ]
    assert list(parsed["import_errors"]) == [str(SPEC_CHECK)]
    error = parsed["import_errors"][str(SPEC_CHECK)]
    assert "2 model specs broken" in error
    assert (
        f"model spec {models / 'fraud_lite.yaml'} is malformed: validation.ranges.amout: "
        "'amout' is not a feature of this model (nearest valid name: 'amount')"
    ) in error
    assert f"model spec {models / 'fraud_indent.yaml'} is not valid YAML" in error

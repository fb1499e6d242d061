"""Run the real Airflow CLI against a throwaway AIRFLOW_HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from driftline.settings import get_settings

BIN = Path(sys.executable).parent


def airflow_env(airflow_home: Path, **extra: str) -> dict[str, str]:
    """The process environment of an Airflow command for the current driftline settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(get_settings().airflow_env())
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{airflow_home / 'airflow.db'}",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run_airflow(
    args: list[str], env: dict[str, str], *, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"airflow {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def migrated_database(template: Path, airflow_home: Path) -> None:
    """Give ``airflow_home`` a copy of an already migrated metadata database."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, airflow_home / "airflow.db")


_CREATE_RUN = """
import sys
from datetime import datetime

from airflow.models.dagbag import DBDagBag
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType, DagRunType

dag_id, run_id, run_type, run_after = sys.argv[1:5]
triggered_by = {
    "asset_triggered": DagRunTriggeredByType.ASSET,
    "scheduled": DagRunTriggeredByType.TIMETABLE,
}.get(run_type, DagRunTriggeredByType.TEST)
with create_session() as session:
    dag = DBDagBag().get_latest_version_of_dag(dag_id, session=session)
    dag.create_dagrun(
        run_id=run_id,
        run_after=datetime.fromisoformat(run_after),
        run_type=DagRunType(run_type),
        triggered_by=triggered_by,
        state=DagRunState.RUNNING,
        conf={},
        session=session,
    )
"""


def create_dag_run(
    env: dict[str, str], dag_id: str, run_id: str, *, run_type: str, run_after: str
) -> None:
    """Insert a DAG run of ``run_type`` (e.g. ``asset_triggered``) into the metadata
    database, as the scheduler would, so `airflow tasks test` can run its tasks. The DAG
    must have been serialized (by a `dags test` run) before."""
    result = subprocess.run(
        [sys.executable, "-c", _CREATE_RUN, dag_id, run_id, run_type, run_after],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"creating run {run_id} failed:\n{result.stderr[-4000:]}")

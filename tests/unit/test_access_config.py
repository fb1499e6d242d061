"""The production profile's access settings, checked without running anything: the Operator
role against FAB's own permission lists, and the compose checks that refuse an open stack."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from driftline.compose_check import access_problems, problems
from driftline.settings import REPO_ROOT

ROLES = REPO_ROOT / "deploy" / "airflow" / "fab-roles.json"
COMPOSE = REPO_ROOT / "docker-compose.yaml"
# what the Operator may not do that FAB's User role may: read pools, delete DAGs, runs or
# task instances (clearing is editing, and stays)
NOT_FOR_OPERATORS = {
    ("can_read", "Pools"),
    ("can_delete", "DAGs"),
    ("can_delete", "DAG Runs"),
    ("can_delete", "Task Instances"),
}


def _operator() -> set[tuple[str, str]]:
    role = json.loads(ROLES.read_text())["Operator"]
    return {(p["action"], p["resource"]) for p in role}


def test_operator_is_fabs_user_role_without_pools_and_deletes() -> None:
    from airflow.providers.fab.auth_manager.security_manager.override import (
        FabAirflowSecurityManagerOverride as Fab,
    )

    user = set(Fab.VIEWER_PERMISSIONS + Fab.USER_PERMISSIONS)
    assert _operator() == user - NOT_FOR_OPERATORS
    administration = {r for _, r in Fab.OP_PERMISSIONS + Fab.ADMIN_PERMISSIONS} - {
        r for _, r in user
    }
    # connections, variables, config, users, roles ... are out of the operator's reach
    assert {"Connections", "Variables", "Configurations", "Roles"} <= administration
    assert not {r for _, r in _operator()} & administration
    assert {("can_create", "DAG Runs"), ("can_edit", "DAG Runs"), ("can_edit", "DAGs")} <= (
        _operator()
    )


def test_shipped_compose_is_closed_and_an_open_one_is_refused(tmp_path: Path) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert access_problems(compose["services"]) == []
    api = compose["services"]["airflow-apiserver"]["environment"]
    assert api["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    assert "--app-name basic-auth" in (REPO_ROOT / "deploy/mlflow/start-mlflow.sh").read_text()

    api["AIRFLOW__CORE__AUTH_MANAGER"] = (
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    )
    compose["services"]["mlflow"]["command"] = "mlflow server --host 0.0.0.0 --allowed-hosts *"
    compose["services"]["mlflow"]["ports"] = ["5000:5000"]
    opened = tmp_path / "docker-compose.yaml"
    opened.write_text(yaml.safe_dump(compose))
    found = "\n".join(problems(opened, REPO_ROOT / ".env.example"))
    assert "'airflow-apiserver' runs Airflow's SimpleAuthManager" in found
    assert "does not run MLflow's basic-auth app" in found
    assert "allows every Host header" in found
    assert "publishes '5000:5000' beyond this host" in found

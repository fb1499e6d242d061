"""Extra links on task instances: the MLflow run, the model version, the HTML reports.

Airflow 3 computes a task's extra links when the task finishes and keeps them in XCom; the
links here read the task's own return value (run ids, versions, report URIs) and point at
the MLflow UI, whose address comes from DRIFTLINE_MLFLOW_UI (set by `driftline up`). Reports
are MLflow artifacts, so the MLflow UI serves them.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

LINKS_XCOM_KEY = "driftline_links"


def _result(ti_key: Any) -> dict[str, Any]:
    """The task's return value, or what it pushed under LINKS_XCOM_KEY before failing."""
    for key in ("return_value", LINKS_XCOM_KEY):
        try:
            value = ti_key.xcom_pull(task_ids=ti_key.task_id, key=key)
        except Exception:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _ui() -> str:
    return os.environ.get("DRIFTLINE_MLFLOW_UI", "").rstrip("/")


def artifact_url(uri: str) -> str:
    """``runs:/<run id>/<path>`` -> the MLflow UI's artifact download of it."""
    if not uri.startswith("runs:/") or not _ui():
        return ""
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    return f"{_ui()}/get-artifact?path={quote(path)}&run_uuid={run_id}"


class MlflowRunLink(BaseOperatorLink):
    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        run_id = _result(ti_key).get("mlflow_run_id")
        return f"{_ui()}/#/runs/{run_id}" if run_id and _ui() else ""


class ModelVersionLink(BaseOperatorLink):
    name = "Model version"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        result = _result(ti_key)
        version, model = result.get("version"), result.get("model")
        return f"{_ui()}/#/models/{model}/versions/{version}" if version and model and _ui() else ""


class ReportLink(BaseOperatorLink):
    """The HTML report a task wrote (validation, Evidently evaluation or drift report)."""

    name = "Report (HTML)"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return artifact_url(str(_result(ti_key).get("report_uri", "")))


def with_links(task_output: Any, *links: BaseOperatorLink) -> Any:
    """Attach extra links to a TaskFlow task (``@task`` has no argument for them)."""
    task_output.operator.operator_extra_links = list(links)
    return task_output

"""Translate an Airflow task context into driftline's RunContext."""

from __future__ import annotations

from typing import Any

from driftline.lineage import RunContext


def triggered_by(dag_run: Any) -> str:
    """A readable answer to "who or what started this run"."""
    run_type = getattr(dag_run.run_type, "value", str(dag_run.run_type))
    if run_type == "manual":
        return f"user:{dag_run.triggering_user_name or 'unknown'}"
    if run_type == "asset_triggered":
        uris = sorted({event.asset.uri for event in dag_run.consumed_asset_events or []})
        return "asset:" + (",".join(uris) or "unknown")
    return run_type


def run_context(context: Any) -> RunContext:
    """The RunContext of the running task's DAG run, with its params."""
    dag_run = context["dag_run"]
    params = context["params"]
    return RunContext(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        run_type=getattr(dag_run.run_type, "value", str(dag_run.run_type)),
        triggered_by=triggered_by(dag_run),
        reason=str(params.get("reason") or ""),
        dry_run=bool(params.get("dry_run", False)),
    )

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
        events = asset_events(dag_run)
        uris = sorted({event["uri"] for event in events})
        return f"asset:{','.join(uris) or 'unknown'} ({len(events)} event(s))"
    return run_type


def asset_events(dag_run: Any) -> list[dict[str, Any]]:
    """The asset events that started a run, as plain dicts."""
    return [
        {
            "uri": event.asset.uri,
            "extra": dict(event.extra or {}),
            "timestamp": event.timestamp.isoformat(),
            "source": event.source_dag_id or "api",
        }
        for event in dag_run.consumed_asset_events or []
    ]


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

"""What is live and why: the champion, the last decisions and the open drift events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from driftline import monitoring, registry
from driftline.settings import Settings, get_settings
from driftline.specs import loadable_specs


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def model_status(
    model: str, *, decisions: int = 5, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    aliases = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS_CHAMPION):
        version = registry.alias_version(model, alias, settings)
        entry: dict[str, Any] = {"version": version}
        if version is not None:
            tags = registry.version_info(model, version, settings).tags
            entry.update(
                pr_auc=tags.get("holdout_pr_auc"),
                roc_auc=tags.get("holdout_roc_auc"),
                decision=tags.get("decision"),
                trained_in=tags.get("run_key"),
                promoted_at=tags.get("promoted_at"),
            )
        aliases[alias] = entry
    audit = [
        {
            "at": _when(row["created_at"]),
            "action": row["action"],
            "version": row["challenger_version"],
            "champion_before": row["champion_before"],
            "champion_after": row["champion_after"],
            "actor": row["actor"],
            "run_id": row["run_id"],
            "reasons": row["reasons"],
        }
        for row in monitoring.audit_log(model, limit=decisions, url=url)
    ]
    open_events = [
        {
            "id": row["id"],
            "at": _when(row["created_at"]),
            "source": row["source"],
            "status": row["status"],
            "payload": row["payload"],
        }
        for row in monitoring.drift_event_log(model, statuses=("new", "emitted"), url=url)
    ]
    recent_events = [
        {
            "id": row["id"],
            "status": row["status"],
            "run_id": row["consumed_by_run_id"],
            "reason": row["status_reason"],
        }
        for row in monitoring.drift_event_log(model, limit=decisions, url=url)
    ]
    reports = monitoring.drift_report_log(model, limit=1, url=url)
    last_report = (
        {
            "at": _when(reports[0]["created_at"]),
            "verdict": reports[0]["verdict"],
            "share_drifted": reports[0]["share_drifted"],
            "reasons": reports[0]["reasons"],
            "report_uri": reports[0]["report_uri"],
        }
        if reports
        else None
    )
    return {
        "model": model,
        "aliases": aliases,
        "decisions": audit,
        "open_drift_events": open_events,
        "recent_drift_events": recent_events,
        "last_drift_report": last_report,
    }


def status(model: str | None = None, settings: Settings | None = None) -> list[dict[str, Any]]:
    settings = settings or get_settings()
    names = [model] if model else [spec.name for spec in loadable_specs(settings.models_dir)]
    return [model_status(name, settings=settings) for name in names]


def render(statuses: list[dict[str, Any]]) -> str:
    """Plain-text tables for a terminal."""
    lines: list[str] = []
    for entry in statuses:
        lines.append(f"== {entry['model']}")
        for alias, info in entry["aliases"].items():
            if info["version"] is None:
                lines.append(f"  {alias:18} -")
            else:
                lines.append(
                    f"  {alias:18} v{info['version']:<4} pr_auc {info['pr_auc'] or '?':<9} "
                    f"decision {info['decision'] or '?':<15} trained in {info['trained_in'] or '?'}"
                )
        lines.append("  last decisions:")
        if not entry["decisions"]:
            lines.append("    none yet")
        for row in entry["decisions"]:
            lines.append(
                f"    {row['at']}  {row['action']:<15} v{row['version']}  champion "
                f"{row['champion_before'] or '-'} -> {row['champion_after'] or '-'}  by {row['actor']}"
            )
            for reason in row["reasons"][:4]:
                lines.append(f"        - {reason}")
        report = entry["last_drift_report"]
        if report:
            lines.append(
                f"  last drift check: {report['at']}  {report['verdict']}  "
                f"share drifted {report['share_drifted']:.0%}"
            )
        lines.append(f"  open drift events: {len(entry['open_drift_events'])}")
        for event in entry["open_drift_events"]:
            lines.append(
                f"    #{event['id']} {event['at']} {event['status']} from {event['source']}"
            )
    return "\n".join(lines)


def render_components(rows: list[dict[str, Any]]) -> str:
    """The stack's components: process state (running, dead, stale record) and health."""
    if not rows:
        return "== stack: not running (nothing recorded; `make up` starts it)"
    lines = ["== stack"]
    for row in rows:
        beat = f"  heartbeat {row['last_heartbeat']}" if row["last_heartbeat"] else ""
        lines.append(
            f"  {row['component']:14} {row['process']:12} {row['health']:14} "
            f"pgid {row['process_group']}{beat}"
        )
    broken = [row["component"] for row in rows if row["process"] != "running"]
    if broken:
        lines.append(f"  {', '.join(broken)} not running: `make up` restarts only what is dead")
    return "\n".join(lines)

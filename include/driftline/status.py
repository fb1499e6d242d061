"""What is live and why: the champion, the last decisions and the open drift events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from driftline import monitoring, registry, rollout
from driftline.settings import Settings, get_settings
from driftline.specs import load_spec, loadable_specs

LIVE_WINDOW = timedelta(hours=1)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago, for a human: 42s, 7m, 3h, 2d."""
    if value is None:
        return "?"
    seconds = max(0, int(((now or datetime.now(UTC)) - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def events_by_status(model: str, *, url: str | None = None) -> dict[str, dict[str, Any]]:
    """Per status: how many drift events, and the age of the oldest (since its last change) —
    an old ``new`` or ``emitted`` is an event stuck on its way."""
    now = datetime.now(UTC)
    counts = monitoring.event_counts(model, url=url)
    return {
        status: {
            "count": counts[status]["count"],
            "oldest_age": _age(counts[status]["oldest"], now),
            "oldest_at": _when(counts[status]["oldest"]),
        }
        for status in monitoring.EVENT_STATUSES
        if status in counts
    }


def event_rows(
    model: str | None = None,
    *,
    statuses: tuple[str, ...] = (),
    limit: int = 50,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """The newest drift events with their status, age and reason (``driftline events``)."""
    settings = settings or get_settings()
    now = datetime.now(UTC)
    return [
        {
            "id": row["id"],
            "model": row["model"],
            "status": row["status"],
            "age": _age(row["updated_at"], now),
            "created_at": _when(row["created_at"]),
            "updated_at": _when(row["updated_at"]),
            "source": row["source"],
            "run_id": row["consumed_by_run_id"],
            "reason": row["status_reason"] or (row["problem"] or ""),
        }
        for row in monitoring.drift_event_log(
            model, statuses=statuses or None, limit=limit, url=settings.monitoring_db_url
        )
    ]


def render_events(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no drift events"
    lines = [f"{'id':>6}  {'model':<18} {'status':<10} {'age':>5}  source / run / reason"]
    for row in rows:
        lines.append(
            f"{row['id']:>6}  {row['model']:<18} {row['status']:<10} {row['age']:>5}  "
            f"{row['source']}" + (f"  run {row['run_id']}" if row["run_id"] else "")
        )
        if row["reason"]:
            lines.append(f"{'':>8}{row['reason']}")
    return "\n".join(lines)


def model_status(
    model: str, *, decisions: int = 5, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    aliases = {}
    for alias in (
        registry.CHAMPION,
        registry.CHALLENGER,
        registry.PREVIOUS_CHAMPION,
        registry.CANDIDATE,
    ):
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
            # the evidence of retrain decisions (older rows and manual actions have none)
            "comparison_window": (row["metrics"] or {}).get("comparison_window"),
            "interval": (row["metrics"] or {}).get("interval"),
            "slices": (row["metrics"] or {}).get("slices"),
        }
        for row in monitoring.audit_log(model, limit=decisions, url=url)
    ]
    open_events = [
        {
            "id": row["id"],
            "at": _when(row["created_at"]),
            "source": row["source"],
            "status": row["status"],
            "age": _age(row["updated_at"]),
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
    now = datetime.now(UTC)
    return {
        "model": model,
        "aliases": aliases,
        "rollout": rollout.status(model, settings=settings),
        # live performance per version and arm over the last hour of the prediction log
        "live": rollout.live_performance(
            load_spec(model, settings.models_dir),
            start=now - LIVE_WINDOW,
            end=now,
            settings=settings,
        ),
        "decisions": audit,
        "drift_events_by_status": events_by_status(model, url=url),
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
        if "rollout" in entry:
            lines.extend(rollout.render_status(entry["rollout"]))
        for live in entry.get("live", []):
            pr_auc = "?" if live["pr_auc"] is None else f"{live['pr_auc']:.4f}"
            p99 = "?" if live["p99_latency_ms"] is None else f"{live['p99_latency_ms']:.1f} ms"
            lines.append(
                f"  live (last hour) v{live['version']} {live['arm']:<9} "
                f"{live['requests']} requests, errors {live['error_rate']:.2%}, p99 {p99}, "
                f"PR-AUC {pr_auc} on {live['labeled']} matured ({live['positives']} positive)"
            )
        lines.append("  last decisions:")
        if not entry["decisions"]:
            lines.append("    none yet")
        for row in entry["decisions"]:
            if row["version"] is None:  # an event's audit row: requeued, rejected, duplicate
                lines.append(f"    {row['at']}  {row['action']:<15} by {row['actor']}")
                for reason in row["reasons"][:2]:
                    lines.append(f"        - {reason}")
                continue
            lines.append(
                f"    {row['at']}  {row['action']:<15} v{row['version']}  champion "
                f"{row['champion_before'] or '-'} -> {row['champion_after'] or '-'}  by {row['actor']}"
            )
            window, interval = row.get("comparison_window"), row.get("interval")
            if window:
                lines.append(f"        compared on [{window[0]}, {window[1]})")
            if interval:
                lines.append(
                    f"        {interval['metric']} gain {interval['gain']:+.4f}, "
                    f"{interval['level']:.0%} interval [{interval['low']:+.4f}, "
                    f"{interval['high']:+.4f}]"
                )
            if row.get("slices"):
                judged = [
                    f"{piece['column']}={piece['value']}"
                    + ("" if piece["challenger"] else " (not judged)")
                    for piece in row["slices"]
                ]
                lines.append(f"        slices: {', '.join(judged)}")
            for reason in row["reasons"][:4]:
                lines.append(f"        - {reason}")
        report = entry["last_drift_report"]
        if report:
            lines.append(
                f"  last drift check: {report['at']}  {report['verdict']}  "
                f"share drifted {report['share_drifted']:.0%}"
            )
        by_status = entry["drift_events_by_status"]
        lines.append(
            "  drift events: "
            + (
                ", ".join(
                    f"{status} {info['count']} (oldest {info['oldest_age']})"
                    for status, info in by_status.items()
                )
                or "none"
            )
        )
        lines.append(f"  open drift events: {len(entry['open_drift_events'])}")
        for event in entry["open_drift_events"]:
            lines.append(
                f"    #{event['id']} {event['at']} {event['status']} from {event['source']}"
                f" ({event['age']} in this status)"
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

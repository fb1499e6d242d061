"""Drift events: raised by the monitor or by outside systems, consumed by retrain runs.

Outside systems report drift either as an Airflow asset event on ``drift://<model>`` (REST
API) or as a row in the monitoring store's ``drift_events`` table, which the
``DriftEventTrigger`` (an AssetWatcher in the triggerer) turns into an asset event. Every
asset event that starts a retrain is resolved back to a drift event row, which records the
run that consumed it — or why it was suppressed.

Storm protection: at most one drift-triggered retrain per ``drift.cooldown_hours``. Events
that arrive together collapse into one run (Airflow queues them into the same asset-triggered
run); a run that starts inside the cooldown consumes nothing and marks its events suppressed
with the reason. Nothing is silently dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from driftline import monitoring
from driftline.lineage import RunContext
from driftline.settings import Settings, get_settings

log = logging.getLogger(__name__)


class DriftEventPayload(BaseModel):
    """What an outside system may say about drift; unknown keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    reason: str = Field("", max_length=2000)
    share_drifted: float | None = Field(None, ge=0, le=1)
    top_features: list[str] = Field(default_factory=list)
    report_uri: str = ""
    severity: str = ""


def payload_problem(payload: Any) -> str | None:
    """None for a valid payload, else why it is rejected."""
    if not isinstance(payload, dict):
        return f"payload must be a JSON object, got {type(payload).__name__}"
    try:
        DriftEventPayload.model_validate(payload)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
    return None


def claim_new_events(
    model: str, known_models: list[str], *, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """What the AssetWatcher does each poll: reject bad rows, claim the good ones.

    Rows for ``model`` with a valid payload move new -> emitted (a guarded update, so a
    restarted or duplicated trigger cannot claim a row twice) and are returned. Rows with a
    malformed payload, or for a model no spec defines, move new -> rejected with the reason.
    """
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    claimed = []
    for row in monitoring.new_drift_events(url=url):
        if row["model"] not in known_models:
            reason = f"unknown model {row['model']!r}; known: {', '.join(sorted(known_models))}"
            if monitoring.transition_event(
                row["id"], from_statuses=("new",), to_status="rejected", reason=reason, url=url
            ):
                log.warning("drift event %s rejected: %s", row["id"], reason)
            continue
        if row["model"] != model:
            continue
        problem = payload_problem(row["payload"])
        if problem:
            reason = f"malformed payload: {problem}"
            if monitoring.transition_event(
                row["id"], from_statuses=("new",), to_status="rejected", reason=reason, url=url
            ):
                log.warning("drift event %s rejected: %s", row["id"], reason)
            continue
        if monitoring.transition_event(
            row["id"],
            from_statuses=("new",),
            to_status="emitted",
            reason="raised as an asset event by the watcher",
            url=url,
        ):
            claimed.append(row)
    return claimed


def events_after(
    model: str, after_id: int, *, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """What the sensor watches: valid events for ``model`` newer than ``after_id``."""
    settings = settings or get_settings()
    rows = monitoring.drift_event_log(model, limit=100, url=settings.monitoring_db_url)
    return [
        row
        for row in sorted(rows, key=lambda r: r["id"])
        if row["id"] > after_id
        and row["status"] != "rejected"
        and payload_problem(row["payload"]) is None
    ]


def newest_event_id(*, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    rows = monitoring.drift_event_log(limit=1, url=settings.monitoring_db_url)
    return int(rows[0]["id"]) if rows else 0


@dataclass(frozen=True)
class Admission:
    admitted: bool
    event_ids: list[int]
    message: str


def _known_ids(extra: dict[str, Any]) -> list[int]:
    """Drift event ids an asset event already names: the monitor's outlet puts one in its
    extra, the watcher's trigger payload lists the rows it claimed."""
    payload = extra.get("payload") if extra.get("from_trigger") else extra
    if not isinstance(payload, dict):
        return []
    ids = payload.get("drift_event_ids") or (
        [payload["drift_event_id"]] if payload.get("drift_event_id") else []
    )
    return [int(i) for i in ids if isinstance(i, int)]


def _resolve(model: str, asset_events: list[dict[str, Any]], url: str) -> list[int]:
    """Drift event rows behind the asset events of a run. An asset event that came straight
    through the REST API gets a row of its own (found again, not duplicated, on a re-run)."""
    ids: list[int] = []
    for event in asset_events:
        extra = event.get("extra") or {}
        known = [
            i
            for i in _known_ids(extra)
            if (row := monitoring.drift_event(i, url=url)) and row["model"] == model
        ]
        if known:
            ids.extend(known)
            continue
        source = f"asset-event@{event.get('timestamp')}"
        existing = [
            r
            for r in monitoring.drift_event_log(model, limit=200, url=url)
            if r["source"] == source
        ]
        if existing:
            ids.append(int(existing[0]["id"]))
            continue
        payload = (
            {k: v for k, v in extra.items() if k != "from_rest_api"}
            if isinstance(extra, dict)
            else {}
        )
        ids.append(
            monitoring.create_drift_event(
                model=model, source=source, payload=payload, status="emitted", url=url
            )
        )
    return sorted(set(ids))


def admit_drift_run(
    model: str,
    asset_events: list[dict[str, Any]],
    *,
    context: RunContext,
    at: datetime,
    cooldown_hours: float,
    settings: Settings | None = None,
) -> Admission:
    """Decide whether an asset-triggered retrain may run, and record it on its events.

    Safe to re-run for the same run: events already consumed (or suppressed) by this run
    keep their status and give the same answer.
    """
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    ids = _resolve(model, asset_events, url)
    rows = [monitoring.drift_event(i, url=url) for i in ids]
    mine = [r for r in rows if r and r["consumed_by_run_id"] == context.run_id]
    if ids and len(mine) == len(ids):
        admitted = all(r["status"] == "consumed" for r in mine)
        return Admission(
            admitted,
            ids,
            f"events {ids} already {'consumed' if admitted else 'suppressed'} by this run",
        )

    last = monitoring.last_consumed_event(model, url=url)
    cooldown = timedelta(hours=cooldown_hours)
    if (
        last is not None
        and last["consumed_by_run_id"] != context.run_id
        and last["updated_at"] is not None
    ):
        consumed_at = last["updated_at"]
        if consumed_at.tzinfo is None:
            consumed_at = consumed_at.replace(tzinfo=at.tzinfo)
        if at - consumed_at < cooldown:
            reason = (
                f"cooldown: run {last['consumed_by_run_id']} retrained {model} on drift at "
                f"{consumed_at.isoformat()}; at most one drift-triggered retrain per "
                f"{cooldown_hours:g} h (next allowed after {(consumed_at + cooldown).isoformat()})"
            )
            for event_id in ids:
                monitoring.transition_event(
                    event_id,
                    from_statuses=("new", "emitted"),
                    to_status="suppressed",
                    reason=reason,
                    dag_id=context.dag_id,
                    run_id=context.run_id,
                    url=url,
                )
            log.info("drift events %s suppressed: %s", ids, reason)
            return Admission(False, ids, reason)

    for event_id in ids:
        monitoring.transition_event(
            event_id,
            from_statuses=("new", "emitted"),
            to_status="consumed",
            reason=f"retrain {context.key}",
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=url,
        )
    message = f"retraining {model} on drift events {ids}"
    log.info(message)
    return Admission(True, ids, message)


def raise_event(
    model: str, payload: dict[str, Any], *, source: str = "cli", settings: Settings | None = None
) -> int:
    """Insert a ``new`` drift event, as an outside system would (the watcher picks it up)."""
    settings = settings or get_settings()
    return monitoring.create_drift_event(
        model=model, source=source, payload=payload, status="new", url=settings.monitoring_db_url
    )

"""Drift events: raised by the monitor or by outside systems, consumed by retrain runs.

Outside systems report drift either as an Airflow asset event on ``drift://<model>`` (REST
API) or as a row in the monitoring store's ``drift_events`` table, which the
``DriftEventTrigger`` (an AssetWatcher in the triggerer) turns into an asset event. Every
asset event that starts a retrain is resolved back to a drift event row, which records the
run that consumed it — or why it was suppressed or rejected. Nothing is silently dropped.

Life of a row: ``new`` -> ``emitted`` (claimed by the watcher, an asset event is on its
way) -> ``consumed`` (a retrain run took it) or ``suppressed`` (storm protection, with the
reason); ``new`` -> ``rejected`` (unreadable, malformed or for an unknown model, with the
reason). ``driftline events requeue`` puts a rejected or stuck row back to ``new``.

Delivery is at least once, the effect exactly once:

* **Lease.** A row claimed (``emitted``) that no run consumed within
  ``drift.event_lease_seconds`` goes back to ``new`` and is delivered again: the triggerer
  may die between the claim and the asset event, or Airflow may drop the event of a
  trigger it just cancelled.
* **Duplicates.** A run whose events another run already consumed (a lease that ran out
  while the first run was still queued) records them as duplicates in the audit log and
  does not retrain; a run retrains only on events nobody consumed yet.

Storm protection, per model: at most one drift-triggered retrain per ``drift.cooldown_hours``,
counted on the data's clock where an event has one: an event that names its drift ``window``
(the drift monitor's do) is as old as its window's end, any other as the time it is judged.
Two monitor events a day apart of data are a day apart even when a backfill or
`driftline simulate` raises them minutes apart; outside events count in wall-clock time.
The watcher applies it at intake: new rows that arrive while an earlier claim of the model is
still on its way are *merged* into it (``suppressed``, naming the events that carry the
drift), and rows inside the cooldown are ``suppressed`` with the time the next retrain is
allowed — so a storm ends settled within one poll. ``admit_trigger`` applies the same cooldown
to asset events that did not come through the watcher (REST, the drift monitor).

Asset-event extras are validated (:class:`AssetEventExtra`): unknown keys, event ids that
are not this model's or already consumed, and windows outside the data that exists are
rejected with the reason — in the event table and the audit log — and never reach a task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from driftline import monitoring
from driftline.errors import InvalidInput
from driftline.lineage import RunContext
from driftline.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Test hook (fault injection), read by DriftEventTrigger: seconds to sleep after a claim and
# before the asset event is raised, so a test can kill the triggerer inside that gap.
PAUSE_AFTER_CLAIM_ENV = "DRIFTLINE_TEST_PAUSE_AFTER_CLAIM_SECONDS"


class DriftEventPayload(BaseModel):
    """What an outside system may say about drift in a row; unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    reason: str = Field("", max_length=2000)
    share_drifted: float | None = Field(None, ge=0, le=1)
    top_features: list[str] = Field(default_factory=list)
    report_uri: str = ""
    severity: str = ""


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(extra)'}: {error['msg']}"
        for error in exc.errors()
    )


def payload_problem(payload: Any) -> str | None:
    """None for a valid payload, else why it is rejected."""
    if not isinstance(payload, dict):
        return f"payload must be a JSON object, got {type(payload).__name__}"
    try:
        DriftEventPayload.model_validate(payload)
    except ValidationError as exc:
        return _problems(exc)
    return None


class AssetEventExtra(BaseModel):
    """The extra of an asset event on ``drift://<model>`` that did not come from the watcher:
    posted over the REST API, or the drift monitor's ``announce_drift``. Unknown keys are
    refused, so a typo is an error instead of a silently ignored field."""

    model_config = ConfigDict(extra="forbid", strict=False)

    from_rest_api: bool = False  # Airflow adds it to events posted over REST
    model: str | None = None
    reason: str = Field("", max_length=2000)
    severity: str = Field("", max_length=100)
    share_drifted: float | None = Field(None, ge=0, le=1)
    top_features: list[str] = Field(default_factory=list)
    report_uri: str = ""
    drift_event_id: int | None = None
    drift_event_ids: list[int] = Field(default_factory=list)
    window: tuple[datetime, datetime] | None = None
    # the drift monitor's summary
    drift_report_id: int | None = None
    champion_version: str | None = None
    verdict: str | None = None
    prediction_drift: bool = False
    served_prediction_drift: bool = False
    performance_decay: bool = False
    reasons: list[str] = Field(default_factory=list)

    @field_validator("drift_event_ids", mode="before")
    @classmethod
    def _ids_are_ints(cls, value: Any) -> Any:
        # strict about ids: 5 is not a list, "5" and 5.0 are not ids, True is not 1
        if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in value
        ):
            raise ValueError(f"must be a list of integer event ids, got {value!r}")
        return value

    @field_validator("window")
    @classmethod
    def _utc(cls, value: tuple[datetime, datetime] | None) -> tuple[datetime, datetime] | None:
        if value is None:
            return None
        start, end = (v if v.tzinfo else v.replace(tzinfo=UTC) for v in value)
        if start > end:
            raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
        return start, end

    def event_ids(self) -> list[int]:
        ids = list(self.drift_event_ids)
        if self.drift_event_id is not None:
            ids.append(self.drift_event_id)
        return sorted(set(ids))


class WatcherPayload(BaseModel):
    """What DriftEventTrigger puts in its TriggerEvent (Airflow wraps it in ``payload``)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    drift_event_ids: list[int] = Field(min_length=1)
    sources: list[str] = Field(default_factory=list)
    payloads: list[Any] = Field(default_factory=list)


# --- intake: what the watcher does each poll ----------------------------------------------


@dataclass(frozen=True)
class EventPolicy:
    """The parts of a model spec the event path reads, at the time it reads them."""

    poll_seconds: float
    lease_seconds: float
    cooldown_hours: float

    @classmethod
    def of(cls, model: str, settings: Settings | None = None) -> EventPolicy:
        from driftline.specs import load_spec

        drift = load_spec(model, (settings or get_settings()).models_dir).drift
        return cls(drift.event_poll_seconds, drift.event_lease_seconds, drift.cooldown_hours)


@dataclass
class Intake:
    """One poll of the watcher: the rows it claimed (to raise as one asset event) and what
    it did with the others."""

    claimed: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    suppressed: list[int] = field(default_factory=list)
    redelivered: list[int] = field(default_factory=list)


def known_models(settings: Settings | None = None) -> list[str]:
    """Models with a spec file (a broken spec still names its model: its events wait)."""
    from driftline.specs import spec_files

    return sorted(path.stem for path in spec_files((settings or get_settings()).models_dir))


def _reject(row_id: int, reason: str, url: str) -> bool:
    if monitoring.transition_event(
        row_id, from_statuses=("new",), to_status="rejected", reason=reason, url=url
    ):
        log.warning("drift event %s rejected: %s", row_id, reason)
        return True
    return False


def _release_expired_leases(model: str, lease_seconds: float, now: datetime, url: str) -> list[int]:
    """Rows claimed longer than the lease ago and not consumed: back to new."""
    cutoff = now - timedelta(seconds=lease_seconds)
    released = []
    for row in monitoring.drift_event_log(model, statuses=("emitted",), limit=1000, url=url):
        claimed_at = row["updated_at"]
        if claimed_at is not None and claimed_at >= cutoff:
            continue
        reason = (
            f"lease of {lease_seconds:g} s ran out: claimed at "
            f"{claimed_at.isoformat() if claimed_at else '?'}, no run consumed it; delivering again"
        )
        if monitoring.transition_event(
            row["id"],
            from_statuses=("emitted",),
            to_status="new",
            reason=reason,
            claimed_before=cutoff if claimed_at is not None else None,
            url=url,
        ):
            log.warning("drift event %s: %s", row["id"], reason)
            released.append(int(row["id"]))
    return released


def data_time(payload: Any) -> datetime | None:
    """The end of the drift window an event names, or None (it has no data clock)."""
    window = payload.get("window") if isinstance(payload, dict) else None
    if not isinstance(window, list | tuple) or len(window) != 2:
        return None
    try:
        end = window[1] if isinstance(window[1], datetime) else datetime.fromisoformat(window[1])
    except (TypeError, ValueError):
        return None
    return end if end.tzinfo else end.replace(tzinfo=UTC)


def cooldown_reason(
    model: str,
    at: datetime,
    cooldown_hours: float,
    url: str,
    *,
    run_id: str | None = None,
    payloads: list[Any] = (),
) -> str | None:
    """Why a drift-triggered retrain of ``model`` on events with ``payloads``, judged at
    ``at``, may not start; or None. Each side is timed by its data clock when it has one
    (:func:`data_time`), else the candidate by ``at`` and the last retrain by its consumption."""
    if cooldown_hours <= 0:
        return None
    last = monitoring.last_consumed_event(model, url=url)
    if last is None or last["updated_at"] is None or last["consumed_by_run_id"] == run_id:
        return None
    cooldown = timedelta(hours=cooldown_hours)
    last_data = data_time(last["payload"])
    times = [t for t in (data_time(p) for p in payloads) if t is not None]
    if last_data is not None and times:
        since, now, clock, after = last_data, max(times), "of data up to", "for data after"
    else:
        since, now, clock, after = last["updated_at"], at, "at", "after"
    if now - since >= cooldown:
        return None
    return (
        f"cooldown: run {last['consumed_by_run_id']} retrained {model} on drift {clock} "
        f"{since.isoformat()}; at most one drift-triggered retrain per "
        f"{cooldown_hours:g} h (next allowed {after} {(since + cooldown).isoformat()})"
    )


def intake(
    model: str,
    *,
    policy: EventPolicy | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> Intake:
    """Each poll of the watcher of ``model``: release expired leases, reject what cannot be
    delivered, apply storm protection, claim the rest (new -> emitted, a guarded update, so a
    restarted or duplicated trigger cannot claim a row twice).

    Every row is handled on its own: a row that cannot be read or parsed becomes
    ``rejected`` with the reason and the rows after it flow.
    """
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    policy = policy or EventPolicy.of(model, settings)
    now = now or datetime.now(UTC)
    result = Intake(redelivered=_release_expired_leases(model, policy.lease_seconds, now, url))
    known = known_models(settings)

    candidates = []
    for row in monitoring.new_drift_events(url=url):
        if row["model"] not in known:
            reason = f"unknown model {row['model']!r}; known: {', '.join(known) or 'none'}"
            if _reject(row["id"], reason, url):
                result.rejected.append(row["id"])
            continue
        if row["model"] != model:
            continue  # another model's watcher takes it
        problem = (
            f"unreadable row: {row['problem']}"
            if row["problem"]
            else (
                f"malformed payload: {problem}"
                if (problem := payload_problem(row["payload"]))
                else None
            )
        )
        if problem:
            if _reject(row["id"], problem, url):
                result.rejected.append(row["id"])
            continue
        candidates.append(row)
    if not candidates:
        return result

    in_flight = monitoring.drift_event_log(model, statuses=("emitted",), limit=50, url=url)
    if in_flight:
        ids = sorted(int(r["id"]) for r in in_flight)
        reason = (
            f"merged: drift events {ids} of {model} are already on their way to a retrain "
            f"(claimed, not yet consumed); that run covers this event"
        )
    else:
        reason = None
    for row in candidates:
        if not in_flight:
            reason = cooldown_reason(
                model, now, policy.cooldown_hours, url, payloads=[row["payload"]]
            )
        if reason:
            if monitoring.transition_event(
                row["id"], from_statuses=("new",), to_status="suppressed", reason=reason, url=url
            ):
                result.suppressed.append(int(row["id"]))
        elif monitoring.transition_event(
            row["id"],
            from_statuses=("new",),
            to_status="emitted",
            reason="claimed by the watcher; an asset event is on its way",
            url=url,
        ):
            result.claimed.append(row)
    if result.suppressed:
        log.info("drift events %s of %s suppressed: %s", result.suppressed, model, reason)
    return result


def claim_new_events(model: str, *, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The rows one poll of the watcher claims (see :func:`intake`)."""
    return intake(model, settings=settings).claimed


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
        and not row["problem"]
        and payload_problem(row["payload"]) is None
    ]


def newest_event_id(*, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    rows = monitoring.drift_event_log(limit=1, url=settings.monitoring_db_url)
    return int(rows[0]["id"]) if rows else 0


# --- admission: what admit_trigger does for an asset-triggered run --------------------------


@dataclass(frozen=True)
class Admission:
    admitted: bool
    event_ids: list[int]
    message: str
    rejected: list[str] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


def _data_days(settings: Settings) -> tuple[date, date] | None:
    from driftline.offline import list_days

    days = list_days(settings.offline_dir)
    return (days[0], days[-1]) if days else None


def _check_extra(
    model: str, extra: dict[str, Any], context: RunContext, settings: Settings
) -> tuple[list[int], str | None]:
    """Event ids an asset event names and why it is refused (None when it is valid)."""
    url = settings.monitoring_db_url
    if extra.get("from_trigger"):
        try:
            payload = WatcherPayload.model_validate(extra.get("payload"))
        except ValidationError as exc:
            return [], f"watcher payload: {_problems(exc)}"
        if payload.model != model:
            return [], f"watcher payload is for model {payload.model!r}, not {model!r}"
        ids = sorted(set(payload.drift_event_ids))
    else:
        try:
            parsed = AssetEventExtra.model_validate(extra)
        except ValidationError as exc:
            return [], _problems(exc)
        if parsed.model is not None and parsed.model != model:
            return [], f"model: {parsed.model!r} is not {model!r}"
        if parsed.window is not None:
            days = _data_days(settings)
            start, end = parsed.window
            if days is None:
                return [], f"window: no data in {settings.offline_dir} to check it against"
            first = datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC)
            after_last = datetime(days[1].year, days[1].month, days[1].day, tzinfo=UTC)
            after_last += timedelta(days=1)
            if start < first or end > after_last:
                return [], (
                    f"window: [{start.isoformat()}, {end.isoformat()}] is outside the data that "
                    f"exists ({days[0].isoformat()} to {days[1].isoformat()} in "
                    f"{settings.offline_dir})"
                )
        ids = parsed.event_ids()
        for event_id in ids:
            row = monitoring.drift_event(event_id, url=url)
            if row is None:
                return [], f"drift_event_ids: event {event_id} does not exist"
            if row["model"] != model:
                return [], f"drift_event_ids: event {event_id} is for model {row['model']!r}"
            if (
                row["status"] in ("consumed", "suppressed", "rejected")
                and row["consumed_by_run_id"] != context.run_id
            ):
                return [], (
                    f"drift_event_ids: event {event_id} is already {row['status']}"
                    + (f" by run {row['consumed_by_run_id']}" if row["consumed_by_run_id"] else "")
                )
    return ids, None


def _event_row(
    model: str,
    event: dict[str, Any],
    context: RunContext,
    url: str,
    *,
    problem: str | None,
) -> tuple[int, bool]:
    """The drift event row of an asset event that names none (REST), created once: a re-run
    finds it again by its source. Returns (id, created)."""
    source = f"asset-event@{event.get('timestamp')}"
    existing = [
        r for r in monitoring.drift_event_log(model, limit=500, url=url) if r["source"] == source
    ]
    if existing:
        return int(existing[0]["id"]), False
    extra = event.get("extra") or {}
    payload = {k: v for k, v in extra.items() if k != "from_rest_api"}
    if problem:
        return monitoring.create_drift_event(
            model=model,
            source=source,
            payload=payload,
            status="rejected",
            reason=f"asset event extra rejected: {problem}",
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=url,
        ), True
    return monitoring.create_drift_event(
        model=model, source=source, payload=payload, status="emitted", url=url
    ), True


def _audit_event(model: str, action: str, reason: str, context: RunContext, url: str) -> None:
    already = any(
        row["action"] == action and row["run_id"] == context.run_id and row["reason"] == reason
        for row in monitoring.audit_log(model, limit=200, url=url)
    )
    if not already:  # a cleared and re-run admission records nothing twice
        monitoring.append_audit(
            model=model,
            action=action,
            actor=f"airflow:{context.dag_id}",
            reasons=[reason],
            reason=reason,
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=url,
        )


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

    Each asset event is checked on its own: an invalid one is rejected (event table and
    audit log) and the valid ones still count. The run retrains only on events no other
    run consumed yet; events another run already took are recorded as duplicates. Safe to
    re-run for the same run: events already consumed (or suppressed) by this run keep their
    status and give the same answer.
    """
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    ids: list[int] = []
    rejected: list[str] = []
    for event in asset_events:
        extra = event.get("extra") if isinstance(event.get("extra"), dict) else {}
        named, problem = _check_extra(model, extra, context, settings)
        if problem:
            row_id, _ = _event_row(model, event, context, url, problem=problem)
            message = f"asset event at {event.get('timestamp')} rejected: {problem}"
            rejected.append(message)
            log.warning("drift event %s: %s", row_id, message)
            _audit_event(model, "drift_event_rejected", message, context, url)
            continue
        if named:
            ids.extend(named)
        else:
            ids.append(_event_row(model, event, context, url, problem=None)[0])
    ids = sorted(set(ids))
    rows = {i: monitoring.drift_event(i, url=url) for i in ids}
    mine = [i for i in ids if rows[i] and rows[i]["consumed_by_run_id"] == context.run_id]
    duplicates = [
        i
        for i in ids
        if i not in mine and rows[i] and rows[i]["status"] in ("consumed", "suppressed")
    ]
    fresh = [
        i for i in ids if i not in mine and rows[i] and rows[i]["status"] in ("new", "emitted")
    ]
    for event_id in duplicates:
        row = rows[event_id]
        _audit_event(
            model,
            "drift_event_duplicate",
            f"drift event {event_id} delivered again; already {row['status']} by run "
            f"{row['consumed_by_run_id']}: not retraining on it twice",
            context,
            url,
        )
    if mine and not fresh:
        admitted = all(rows[i]["status"] == "consumed" for i in mine)
        return Admission(
            admitted,
            mine,
            f"events {mine} already {'consumed' if admitted else 'suppressed'} by this run",
            rejected,
            duplicates,
        )
    if not fresh:
        parts = []
        if duplicates:
            parts.append(f"events {duplicates} were already taken by another run (duplicates)")
        if rejected:
            parts.append("; ".join(rejected))
        message = "nothing to retrain on: " + ("; ".join(parts) or "no drift events")
        log.info(message)
        return Admission(False, [], message, rejected, duplicates)

    reason = cooldown_reason(
        model,
        at,
        cooldown_hours,
        url,
        run_id=context.run_id,
        payloads=[rows[i]["payload"] for i in fresh],
    )
    status, note = ("suppressed", reason) if reason else ("consumed", f"retrain {context.key}")
    for event_id in fresh:
        monitoring.transition_event(
            event_id,
            from_statuses=("new", "emitted"),
            to_status=status,
            reason=note,
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=url,
        )
    if reason:
        log.info("drift events %s suppressed: %s", fresh, reason)
        return Admission(False, fresh, reason, rejected, duplicates)
    message = f"retraining {model} on drift events {fresh}"
    log.info(message)
    return Admission(True, fresh, message, rejected, duplicates)


# --- outside systems and operators ----------------------------------------------------------


def raise_event(
    model: str, payload: Any, *, source: str = "cli", settings: Settings | None = None
) -> int:
    """Insert a ``new`` drift event, as an outside system would (the watcher picks it up)."""
    settings = settings or get_settings()
    return monitoring.create_drift_event(
        model=model, source=source, payload=payload, status="new", url=settings.monitoring_db_url
    )


REQUEUEABLE = ("rejected", "emitted", "suppressed")


def requeue(
    event_id: int, *, actor: str, reason: str = "", settings: Settings | None = None
) -> dict[str, Any]:
    """Put a rejected, suppressed or stuck (emitted) event back to ``new`` so the watcher
    delivers it again; audited. Raises InvalidInput for an unknown or consumed event."""
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    row = monitoring.drift_event(event_id, url=url)
    if row is None:
        raise InvalidInput(f"drift event {event_id} does not exist in {url.split('?')[0]}")
    if row["status"] not in REQUEUEABLE:
        raise InvalidInput(
            f"drift event {event_id} is {row['status']}"
            + (f" by run {row['consumed_by_run_id']}" if row["consumed_by_run_id"] else "")
            + f"; only {', '.join(REQUEUEABLE)} events can be requeued"
        )
    note = f"requeued by {actor} (was {row['status']}: {row['status_reason']})" + (
        f": {reason}" if reason else ""
    )
    if not monitoring.transition_event(
        event_id, from_statuses=(row["status"],), to_status="new", reason=note, url=url
    ):
        raise InvalidInput(f"drift event {event_id} changed status meanwhile; look again")
    monitoring.append_audit(
        model=row["model"],
        action="drift_event_requeued",
        actor=actor,
        reasons=[note],
        reason=reason or note,
        url=url,
    )
    return monitoring.drift_event(event_id, url=url) or row

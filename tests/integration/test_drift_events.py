"""Drift events against a real monitoring store: storm protection, the watcher's trigger and
the deferrable sensor."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred
from driftline_airflow.sensors import DriftEventSensor
from driftline_airflow.triggers import DriftEventTrigger

from driftline import monitoring
from driftline.events import admit_drift_run, claim_new_events, raise_event
from driftline.lineage import RunContext

MODEL = "fraud_detection"
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _run(run_id: str) -> RunContext:
    return RunContext(dag_id=f"{MODEL}_retrain", run_id=run_id, run_type="asset_triggered")


def _monitor_event() -> dict:
    event_id = monitoring.create_drift_event(
        model=MODEL, source="monitor:test", payload={"share_drifted": 0.6}, status="emitted"
    )
    return {
        "extra": {"drift_event_id": event_id, "share_drifted": 0.6},
        "timestamp": T0.isoformat(),
        "source": f"{MODEL}_drift_monitor",
    }


def test_two_events_inside_the_cooldown_make_one_retrain(driftline_home: Path) -> None:
    first, second = _monitor_event(), _monitor_event()
    admitted = admit_drift_run(MODEL, [first], context=_run("run-a"), at=T0, cooldown_hours=24)
    assert admitted.admitted
    suppressed = admit_drift_run(
        MODEL,
        [second],
        context=_run("run-b"),
        at=datetime.now(UTC) + timedelta(hours=1),
        cooldown_hours=24,
    )
    assert not suppressed.admitted
    first_row = monitoring.drift_event(first["extra"]["drift_event_id"])
    second_row = monitoring.drift_event(second["extra"]["drift_event_id"])
    assert (first_row["status"], first_row["consumed_by_run_id"]) == ("consumed", "run-a")
    assert (second_row["status"], second_row["consumed_by_run_id"]) == ("suppressed", "run-b")
    assert "cooldown: run run-a retrained fraud_detection on drift" in second_row["status_reason"]
    assert "at most one drift-triggered retrain per 24 h" in second_row["status_reason"]
    # after the cooldown a new event retrains again
    third = _monitor_event()
    later = admit_drift_run(
        MODEL,
        [third],
        context=_run("run-c"),
        at=datetime.now(UTC) + timedelta(hours=25),
        cooldown_hours=24,
    )
    assert later.admitted


def _windowed_event(day: datetime) -> dict:
    window = [(day - timedelta(days=7)).isoformat(), day.isoformat()]
    event_id = monitoring.create_drift_event(
        model=MODEL,
        source="monitor:test",
        payload={"share_drifted": 0.6, "window": window},
        status="emitted",
    )
    return {"extra": {"drift_event_id": event_id}, "source": "monitor"}


def test_the_cooldown_counts_on_the_data_clock_of_monitor_events(driftline_home: Path) -> None:
    """A backfill (or `driftline simulate`) raises monitor events for consecutive days within
    minutes: a day of data apart, they are a day apart for the cooldown; half a day, not."""
    day = datetime(2026, 3, 10, tzinfo=UTC)
    now = datetime.now(UTC)
    first = admit_drift_run(
        MODEL, [_windowed_event(day)], context=_run("day-1"), at=now, cooldown_hours=24
    )
    assert first.admitted
    half = admit_drift_run(
        MODEL,
        [_windowed_event(day + timedelta(hours=12))],
        context=_run("half-day"),
        at=now + timedelta(minutes=1),
        cooldown_hours=24,
    )
    assert not half.admitted
    assert "on drift of data up to 2026-03-10T00:00:00+00:00" in half.message
    assert "next allowed for data after 2026-03-11T00:00:00+00:00" in half.message
    next_day = admit_drift_run(
        MODEL,
        [_windowed_event(day + timedelta(days=1))],
        context=_run("day-2"),
        at=now + timedelta(minutes=2),
        cooldown_hours=24,
    )
    assert next_day.admitted, next_day.message
    # an event without a window has no data clock: wall-clock time since the last retrain
    outside = raise_event(MODEL, {"reason": "outside monitor"})
    event = {"extra": {"drift_event_id": outside}, "source": "rest"}
    claimed = admit_drift_run(
        MODEL, [event], context=_run("outside"), at=now + timedelta(hours=1), cooldown_hours=24
    )
    assert not claimed.admitted and "on drift at " in claimed.message


def test_events_arriving_together_collapse_into_one_run(driftline_home: Path) -> None:
    watcher_rows = [raise_event(MODEL, {"reason": "external monitor"}) for _ in range(2)]
    claimed = claim_new_events(MODEL)
    assert [row["id"] for row in claimed] == watcher_rows
    asset_events = [
        {
            "extra": {
                "from_trigger": True,
                "payload": {"model": MODEL, "drift_event_ids": watcher_rows},
            },
            "timestamp": T0.isoformat(),
            "source": "api",
        },
        {
            "extra": {"from_rest_api": True, "reason": "posted by a serving monitor"},
            "timestamp": (T0 + timedelta(seconds=3)).isoformat(),
            "source": "api",
        },
        _monitor_event(),
    ]
    admission = admit_drift_run(
        MODEL, asset_events, context=_run("together"), at=T0, cooldown_hours=24
    )
    assert admission.admitted and len(admission.event_ids) == 4
    rows = [monitoring.drift_event(i) for i in admission.event_ids]
    assert {(r["status"], r["consumed_by_run_id"]) for r in rows} == {("consumed", "together")}
    rest_row = next(r for r in rows if r["source"].startswith("asset-event@"))
    assert rest_row["payload"] == {"reason": "posted by a serving monitor"}
    # clearing and re-running the admission changes nothing and duplicates nothing
    again = admit_drift_run(MODEL, asset_events, context=_run("together"), at=T0, cooldown_hours=24)
    assert again.admitted and again.event_ids == admission.event_ids
    assert len(monitoring.drift_event_log(MODEL)) == 4


def test_watcher_claims_each_row_once_and_rejects_bad_rows(driftline_home: Path) -> None:
    good = raise_event(MODEL, {"share_drifted": 0.4, "top_features": ["amount"]})
    not_an_object = raise_event(MODEL, ["drift", "!"])  # type: ignore[arg-type]
    bad_share = raise_event(MODEL, {"share_drifted": 7})
    unknown = raise_event("churn_model", {"reason": "drift"})
    assert [row["id"] for row in claim_new_events(MODEL)] == [good]
    assert claim_new_events(MODEL) == []  # a second poll (or a restarted trigger) finds nothing
    statuses = {i: monitoring.drift_event(i) for i in (good, not_an_object, bad_share, unknown)}
    assert statuses[good]["status"] == "emitted"
    assert statuses[not_an_object]["status"] == "rejected"
    assert "payload must be a JSON object, got list" in statuses[not_an_object]["status_reason"]
    assert (
        "share_drifted: Input should be less than or equal to 1"
        in statuses[bad_share]["status_reason"]
    )
    assert (
        statuses[unknown]["status_reason"] == "unknown model 'churn_model'; known: fraud_detection"
    )


async def _first_event(trigger: DriftEventTrigger, timeout: float) -> dict:
    async def first() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("trigger stopped without an event")

    return await asyncio.wait_for(first(), timeout)


def test_trigger_outlives_an_unreachable_store(
    driftline_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good_url = f"sqlite:///{driftline_home / 'monitoring.db'}"
    event_id = raise_event(MODEL, {"reason": "store comes back"})
    monkeypatch.setenv(
        "DRIFTLINE_MONITORING_DB_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    trigger = DriftEventTrigger(model=MODEL, poll_interval=0.2)

    async def scenario() -> dict:
        pending = asyncio.ensure_future(_first_event(trigger, timeout=30))
        await asyncio.sleep(1.5)  # several failing polls: the trigger must keep going
        assert not pending.done()
        monkeypatch.setenv("DRIFTLINE_MONITORING_DB_URL", good_url)
        return await pending

    payload = asyncio.run(scenario())
    assert payload["drift_event_ids"] == [event_id]
    assert monitoring.drift_event(event_id, url=good_url)["status"] == "emitted"


def test_trigger_serializes_for_the_triggerer() -> None:
    trigger = DriftEventTrigger(model=MODEL, poll_interval=2.0)
    path, kwargs = trigger.serialize()
    assert path == "driftline_airflow.triggers.DriftEventTrigger"
    assert DriftEventTrigger(**kwargs).serialize() == (path, kwargs)


def test_sensor_defers_and_wakes_only_for_its_model(driftline_home: Path) -> None:
    raise_event(MODEL, {"reason": "before the sensor started"})
    sensor = DriftEventSensor(task_id="wait_for_drift", model=MODEL, poll_interval=0.2)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})
    trigger = deferred.value.trigger
    assert isinstance(trigger, DriftEventTrigger) and trigger.mode == "observe"
    assert deferred.value.method_name == "execute_complete"

    async def scenario() -> dict:
        pending = asyncio.ensure_future(_first_event(trigger, timeout=30))
        raise_event("churn_model", {"reason": "another model"})
        raise_event(MODEL, ["malformed"])  # type: ignore[arg-type]
        await asyncio.sleep(1.0)
        assert not pending.done(), "woke for an event it should ignore"
        wanted = raise_event(MODEL, {"reason": "this one"})
        payload = await pending
        assert payload["drift_event_ids"] == [wanted]
        return payload

    payload = asyncio.run(scenario())
    assert sensor.execute_complete(context={}, event=payload) == payload

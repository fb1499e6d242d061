"""Event-driven retraining against a real scheduler, dag-processor, triggerer and api-server:
the watcher stays the same running trigger across parse cycles; a row in the drift-event
table (behind a poison row) and an asset event over REST each start fraud_detection_retrain;
bad REST extras are rejected with reasons; a triggerer killed between claim and asset event
loses nothing and retrains once; a storm under the spec's real cooldown starts one retrain.
(The drift monitor's own path is the demo's, tests/e2e/test_demo.py.)"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from driftline import monitoring
from driftline.events import PAUSE_AFTER_CLAIM_ENV, raise_event
from driftline.settings import get_settings
from tests.e2e.conftest import (
    MODEL,
    RunningStack,
    assert_decision_is_fair_and_follows_its_evidence,
    wait_for,
)

RETRAIN = f"{MODEL}_retrain"
ASSET = f"drift://{MODEL}"
DAG_IDS = (RETRAIN, f"{MODEL}_drift_monitor")
PARSE_CYCLES = 3
STORM_EVENTS = 50
STORM_COOLDOWN_HOURS = 0.04  # 2.4 minutes: long enough to see, short enough to wait out
STORM_REPEAT = int(os.environ.get("DRIFTLINE_STORM_REPEAT", "1"))


def _known(stack: RunningStack) -> set[str]:
    return {run["dag_run_id"] for run in stack.runs(RETRAIN)}


def _watchers(stack: RunningStack) -> list[tuple[int, int | None]]:
    """(trigger id, triggerer id) of every watcher of the drift asset, from Airflow's DB."""
    database = get_settings().airflow_home / "airflow.db"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60)) as conn:
        return conn.execute(
            "SELECT t.id, t.triggerer_id FROM asset_watcher w JOIN trigger t ON t.id = "
            "w.trigger_id JOIN asset a ON a.id = w.asset_id WHERE a.name = ? ORDER BY t.id",
            (ASSET,),
        ).fetchall()


def _log_size(stack: RunningStack, component: str) -> int:
    path = stack.stack.log_dir / f"{component}.log"
    return path.stat().st_size if path.exists() else 0


def _log_since(stack: RunningStack, component: str, offset: int) -> str:
    with (stack.stack.log_dir / f"{component}.log").open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def _asset_events(stack: RunningStack) -> list[dict[str, Any]]:
    asset_id = stack.asset_id(ASSET)
    return stack.get(f"/api/v2/assets/events?asset_id={asset_id}&limit=100&order_by=-timestamp")[
        "asset_events"
    ]


def _carrying(stack: RunningStack, event_id: int) -> list[dict[str, Any]]:
    """Asset events whose watcher payload names the drift event row."""
    return [
        e
        for e in _asset_events(stack)
        if event_id in ((e.get("extra") or {}).get("payload") or {}).get("drift_event_ids", [])
    ]


def _new_drift_runs(stack: RunningStack, known: set[str]) -> list[dict[str, Any]]:
    return [
        r
        for r in stack.runs(RETRAIN)
        if r["dag_run_id"] not in known and r["run_type"] == "asset_triggered"
    ]


def _set_drift(**values: Any) -> str:
    """Change the running stack's spec; returns the original text to restore."""
    path = Path(get_settings().models_dir) / f"{MODEL}.yaml"
    original = path.read_text()
    raw = yaml.safe_load(original)
    raw["drift"].update(values)
    path.write_text(yaml.safe_dump(raw))
    return original


def _restore_spec(original: str) -> None:
    (Path(get_settings().models_dir) / f"{MODEL}.yaml").write_text(original)


def test_the_watcher_stays_one_running_trigger_across_parse_cycles(
    running_stack: RunningStack,
) -> None:
    first = wait_for(
        "the drift watcher's trigger to run in the triggerer",
        lambda: (rows := _watchers(running_stack)) and rows[0][1] is not None and rows,
        timeout=180,
    )
    assert len(first) == 1, first
    offset = _log_size(running_stack, "triggerer")
    parsed: dict[str, set[str]] = {dag_id: set() for dag_id in DAG_IDS}
    samples = 0
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        for dag_id in DAG_IDS:
            parsed[dag_id].add(
                running_stack.get(f"/api/v2/dags/{dag_id}/details")["last_parsed_time"]
            )
        # the same trigger row, assigned to a triggerer, at every sample
        assert _watchers(running_stack) == first, (samples, _watchers(running_stack), first)
        samples += 1
        if all(len(times) > PARSE_CYCLES for times in parsed.values()):
            break
        time.sleep(3)
    assert all(len(times) > PARSE_CYCLES for times in parsed.values()), parsed
    log = _log_since(running_stack, "triggerer", offset)
    assert "cancelled" not in log.lower(), log[-3000:]


def test_a_row_behind_a_poison_row_starts_a_retrain(running_stack: RunningStack) -> None:
    known = _known(running_stack)
    with monitoring.engine().begin() as conn:  # what a careless outside system writes
        poison = conn.execute(
            sa.text(
                "INSERT INTO drift_events (created_at, model, source, payload, status, "
                "status_reason, updated_at) VALUES ('2026-11-26 10:00:00', :model, 'sql', "
                "'{drift!', 'new', '', '2026-11-26 10:00:00')"
            ),
            {"model": MODEL},
        ).lastrowid
    event_id = raise_event(
        MODEL, {"reason": "serving monitor saw drift", "share_drifted": 0.5}, source="e2e"
    )
    run = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=180)
    finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
    assert finished["state"] == "success", running_stack.task_states(RETRAIN, run["dag_run_id"])
    event = monitoring.drift_event(event_id)
    assert (event["status"], event["consumed_by_run_id"]) == ("consumed", run["dag_run_id"])
    rejected = monitoring.drift_event(poison)
    assert rejected["status"] == "rejected"
    assert rejected["status_reason"].startswith("unreadable row: payload is not JSON")
    states = running_stack.task_states(RETRAIN, run["dag_run_id"])
    assert states["admit_trigger"] == "success" and states["train"] == "success"
    audit = monitoring.audit_log(MODEL)[0]
    assert audit["run_id"] == run["dag_run_id"]
    assert_decision_is_fair_and_follows_its_evidence(audit)


def _post_event(stack: RunningStack, extra: dict[str, Any]) -> dict[str, Any]:
    status, body = stack.stack.api(
        "POST",
        "/api/v2/assets/events",
        {"asset_id": stack.asset_id(ASSET), "extra": extra},
        token=stack.token,
    )
    assert status == 200, body
    return body


def test_an_asset_event_over_rest_starts_a_retrain(running_stack: RunningStack) -> None:
    known = _known(running_stack)
    _post_event(running_stack, {"reason": "posted over REST", "share_drifted": 0.7})
    run = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=120)
    finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
    assert finished["state"] == "success"
    consumed = [
        e for e in monitoring.drift_event_log(MODEL) if e["consumed_by_run_id"] == run["dag_run_id"]
    ]
    assert len(consumed) == 1 and consumed[0]["status"] == "consumed"
    assert consumed[0]["payload"]["reason"] == "posted over REST"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"drift_event_ids": 5}, "drift_event_ids: Value error, must be a list of integer"),
        ({"reason": "drift", "window": ["2019-01-01", "2019-01-02"]}, "outside the data"),
        ({"reason": "drift", "sevrity": "high"}, "sevrity: Extra inputs are not permitted"),
    ],
    ids=["ids-not-a-list", "window-before-the-data", "unknown-key"],
)
def test_a_bad_rest_extra_is_rejected_with_its_reason_and_retrains_nothing(
    running_stack: RunningStack, extra: dict[str, Any], problem: str
) -> None:
    known = _known(running_stack)
    posted = _post_event(running_stack, extra)
    run = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=120)
    finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"], timeout=300)
    states = running_stack.task_states(RETRAIN, run["dag_run_id"])
    # admit_trigger answered (no traceback, no failure) and skipped everything after it
    assert finished["state"] == "success", states
    assert states["admit_trigger"] == "success"
    assert states["build_training_set"] == "skipped" and states["train"] == "skipped"
    (row,) = [
        e for e in monitoring.drift_event_log(MODEL) if e["consumed_by_run_id"] == run["dag_run_id"]
    ]
    assert row["status"] == "rejected" and problem in row["status_reason"], row
    assert row["source"].startswith("asset-event@"), (row, posted)
    audit = next(a for a in monitoring.audit_log(MODEL) if a["run_id"] == run["dag_run_id"])
    assert audit["action"] == "drift_event_rejected" and problem in audit["reason"]


def test_a_triggerer_killed_between_claim_and_asset_event_loses_nothing(
    running_stack: RunningStack,
) -> None:
    stack = running_stack.stack
    known = _known(running_stack)
    offset = _log_size(running_stack, "triggerer")
    stack.stop_component("triggerer")
    # the test hook: the restarted triggerer's watcher sleeps between claim and yield
    stack.restart_component("triggerer", {PAUSE_AFTER_CLAIM_ENV: "900"})
    event_id = raise_event(MODEL, {"reason": "claimed, then the triggerer died"}, source="e2e")
    wait_for(
        f"drift event {event_id} to be claimed",
        lambda: monitoring.drift_event(event_id)["status"] == "emitted",
        timeout=240,
    )
    time.sleep(2)
    stack.kill_component("triggerer")
    killed_at = time.monotonic()
    assert _carrying(running_stack, event_id) == []  # the asset event never came to be
    stack.restart_component("triggerer")

    run = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=300)
    redelivered_after = time.monotonic() - killed_at
    finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
    assert finished["state"] == "success", running_stack.task_states(RETRAIN, run["dag_run_id"])
    event = monitoring.drift_event(event_id)
    assert (event["status"], event["consumed_by_run_id"]) == ("consumed", run["dag_run_id"])
    # delivered once, retrained once — also a while after the lease could have fired again
    time.sleep(60)
    assert len(_carrying(running_stack, event_id)) == 1
    assert [r["dag_run_id"] for r in _new_drift_runs(running_stack, known)] == [run["dag_run_id"]]
    log = _log_since(running_stack, "triggerer", offset)
    assert "test hook: pausing" in log, log[-3000:]
    print(f"\nkilled triggerer: event {event_id} re-delivered, run after {redelivered_after:.0f} s")


def _settled(event_ids: list[int]) -> dict[int, dict[str, Any]] | None:
    rows = {i: monitoring.drift_event(i) for i in event_ids}
    if any(row["status"] in ("new", "emitted") for row in rows.values()):
        return None
    return rows


def _wait_cooldown_over() -> None:
    last = monitoring.last_consumed_event(MODEL)
    if last is not None:
        over = last["updated_at"] + timedelta(hours=STORM_COOLDOWN_HOURS, seconds=5)
        time.sleep(max(0.0, (over - datetime.now(UTC)).total_seconds()))


@pytest.mark.parametrize("attempt", range(STORM_REPEAT))
def test_a_storm_under_the_real_cooldown_starts_one_retrain(
    running_stack: RunningStack, attempt: int
) -> None:
    original = _set_drift(cooldown_hours=STORM_COOLDOWN_HOURS)
    try:
        _wait_cooldown_over()  # an earlier test's retrain must not count as this storm's
        known = _known(running_stack)
        started = time.monotonic()
        storm = []
        for i in range(STORM_EVENTS):  # 50 rows over ~40 s: many watcher polls
            storm.append(raise_event(MODEL, {"reason": f"storm {i}"}, source="e2e-storm"))
            time.sleep(0.8)
        rows = wait_for(
            "every storm event to be consumed or suppressed",
            lambda: _settled(storm),
            timeout=max(1.0, 120 - (time.monotonic() - started)),
        )
        settled_after = time.monotonic() - started
        (run,) = _new_drift_runs(running_stack, known)
        consumed = [i for i, r in rows.items() if r["status"] == "consumed"]
        suppressed = [i for i, r in rows.items() if r["status"] == "suppressed"]
        assert len(consumed) + len(suppressed) == STORM_EVENTS, rows
        assert consumed and all(
            rows[i]["consumed_by_run_id"] == run["dag_run_id"] for i in consumed
        )
        reasons = [rows[i]["status_reason"] for i in suppressed]
        assert all(r.startswith(("merged: ", "cooldown: ")) for r in reasons), reasons
        merged = sum(r.startswith("merged: ") for r in reasons)
        finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
        assert finished["state"] == "success"

        # inside the cooldown: suppressed, no run
        inside = raise_event(MODEL, {"reason": "inside the cooldown"}, source="e2e-storm")
        row = wait_for(
            "the event inside the cooldown to settle", lambda: _settled([inside]), timeout=60
        )[inside]
        assert row["status"] == "suppressed" and row["status_reason"].startswith("cooldown: ")
        assert len(_new_drift_runs(running_stack, known)) == 1

        # after the cooldown: a run
        _wait_cooldown_over()
        after = raise_event(MODEL, {"reason": "after the cooldown"}, source="e2e-storm")
        second = running_stack.wait_new_run(
            RETRAIN, known | {run["dag_run_id"]}, "asset_triggered", timeout=180
        )
        assert running_stack.wait_finished(RETRAIN, second["dag_run_id"])["state"] == "success"
        assert monitoring.drift_event(after)["consumed_by_run_id"] == second["dag_run_id"]
        print(
            f"\nstorm {attempt}: {STORM_EVENTS} events -> 1 run, {len(consumed)} consumed, "
            f"{merged} merged, {len(suppressed) - merged} suppressed by the cooldown; "
            f"settled {settled_after:.0f} s after the first"
        )
    finally:
        _restore_spec(original)

"""Event-driven retraining against a real scheduler, triggerer and api-server:
a row in the drift-event table, an asset event over REST, and the drift monitor itself each
start fraud_detection_retrain as an asset-triggered run that consumes its event."""

from __future__ import annotations

import json
from datetime import timedelta

from driftline import monitoring, offline
from driftline.datagen import generate
from driftline.events import raise_event
from driftline.settings import get_settings
from tests.conftest import WORLD
from tests.e2e.conftest import MODEL, RunningStack

RETRAIN = f"{MODEL}_retrain"
MONITOR = f"{MODEL}_drift_monitor"
ASSET = f"drift://{MODEL}"


def _known(stack: RunningStack) -> set[str]:
    return {run["dag_run_id"] for run in stack.runs(RETRAIN)}


def test_a_row_in_the_drift_event_table_starts_a_retrain(running_stack: RunningStack) -> None:
    known = _known(running_stack)
    event_id = raise_event(
        MODEL, {"reason": "serving monitor saw drift", "share_drifted": 0.5}, source="e2e"
    )
    run = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=180)
    finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
    assert finished["state"] == "success", running_stack.task_states(RETRAIN, run["dag_run_id"])
    event = monitoring.drift_event(event_id)
    assert (event["status"], event["consumed_by_run_id"]) == ("consumed", run["dag_run_id"])
    states = running_stack.task_states(RETRAIN, run["dag_run_id"])
    assert states["admit_trigger"] == "success" and states["train"] == "success"
    audit = monitoring.audit_log(MODEL)[0]
    assert audit["run_id"] == run["dag_run_id"] and audit["action"] in ("promoted", "rejected")


def test_an_asset_event_over_rest_starts_a_retrain(running_stack: RunningStack) -> None:
    known = _known(running_stack)
    asset_id = running_stack.asset_id(ASSET)
    status, body = running_stack.stack.api(
        "POST",
        "/api/v2/assets/events",
        {"asset_id": asset_id, "extra": {"reason": "posted over REST", "share_drifted": 0.7}},
        token=running_stack.token,
    )
    assert status == 200, body
    run = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=120)
    finished = running_stack.wait_finished(RETRAIN, run["dag_run_id"])
    assert finished["state"] == "success"
    consumed = [
        e for e in monitoring.drift_event_log(MODEL) if e["consumed_by_run_id"] == run["dag_run_id"]
    ]
    assert len(consumed) == 1 and consumed[0]["status"] == "consumed"
    assert consumed[0]["payload"]["reason"] == "posted over REST"


def test_drift_monitor_detects_shift_and_retrains_through_the_asset(
    running_stack: RunningStack,
) -> None:
    settings = get_settings()
    generate(offline_dir=settings.offline_dir, days=2, scenario="covariate_shift", **WORLD)
    as_of = offline.list_days(settings.offline_dir)[-1] + timedelta(days=1)
    known = _known(running_stack)
    status, body = running_stack.stack.api(
        "POST",
        f"/api/v2/dags/{MONITOR}/dagRuns",
        {"logical_date": None, "conf": {"as_of": as_of.isoformat()}},
        token=running_stack.token,
    )
    assert status == 200, body
    monitor_run = running_stack.wait_finished(MONITOR, body["dag_run_id"])
    assert monitor_run["state"] == "success", running_stack.task_states(MONITOR, body["dag_run_id"])
    assert running_stack.task_states(MONITOR, body["dag_run_id"])["announce_drift"] == "success"

    report = monitoring.drift_report_log(MODEL)[0]
    assert report["verdict"] == "drift" and report["run_id"] == body["dag_run_id"]
    events = running_stack.get(
        f"/api/v2/assets/events?asset_id={running_stack.asset_id(ASSET)}&order_by=-timestamp&limit=1"
    )
    extra = events["asset_events"][0]["extra"]
    assert extra["verdict"] == "drift" and "amount" in extra["top_features"]
    assert extra["drift_report_id"] == report["id"]

    retrain = running_stack.wait_new_run(RETRAIN, known, "asset_triggered", timeout=120)
    finished = running_stack.wait_finished(RETRAIN, retrain["dag_run_id"])
    assert finished["state"] == "success"
    event = monitoring.drift_event(extra["drift_event_id"])
    # the monitor run, its event and the retrain decision are linked in the monitoring store
    assert event["report_id"] == report["id"]
    assert (event["status"], event["consumed_by_run_id"]) == ("consumed", retrain["dag_run_id"])
    decision = monitoring.audit_log(MODEL)[0]
    assert decision["run_id"] == retrain["dag_run_id"]
    print(
        json.dumps({"report": report["id"], "event": event["id"], "decision": decision["action"]})
    )

"""Event-driven retraining against a real scheduler, triggerer and api-server: a row in the
drift-event table and an asset event over REST each start fraud_detection_retrain as an
asset-triggered run that consumes its event. (The drift monitor's own path is the demo's,
tests/e2e/test_demo.py.)"""

from __future__ import annotations

from driftline import monitoring
from driftline.events import raise_event
from tests.e2e.conftest import MODEL, RunningStack

RETRAIN = f"{MODEL}_retrain"
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

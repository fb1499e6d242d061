"""`make demo` against the running stack: the whole loop passes, and breaking one link of it
(drift thresholds no drift can reach) makes the demo exit non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from driftline import monitoring, registry
from driftline.demo import STEPS, Demo
from driftline.settings import get_settings
from tests.e2e.conftest import (
    MODEL,
    RunningStack,
    assert_decision_is_fair_and_follows_its_evidence,
)


def test_demo_runs_the_whole_loop(running_stack: RunningStack) -> None:
    said: list[str] = []
    demo = Demo(running_stack.stack, say=said.append)
    assert demo.run(), "\n".join(said)
    assert [step.ok for step in demo.steps] == [True] * STEPS
    table = "\n".join(said)
    for kind in ("drift report", "drift event", "decision", "validation", "quarantine"):
        assert kind in table

    # the monitor run, its drift event and the retrain decision are linked in the store
    report = monitoring.drift_report_log(MODEL)[0]
    event = next(e for e in monitoring.drift_event_log(MODEL) if e["report_id"] == report["id"])
    assert event["status"] == "consumed"
    decision = next(
        a for a in monitoring.audit_log(MODEL) if a["run_id"] == event["consumed_by_run_id"]
    )
    assert decision["reasons"]
    assert_decision_is_fair_and_follows_its_evidence(decision)

    # notifications reached the webhook: drift, the decision, the blocked batch
    webhook = running_stack.webhook
    assert webhook.events("drift_detected")
    notified = {"promoted": "promotion", "rejected": "rejection", "inconclusive": "rejection"}
    assert webhook.events(notified[decision["action"]])
    failures = webhook.events("failure")
    assert any(
        f["task_id"] == "validate_data" and "validation failed" in (f["error"] or "")
        for f in failures
    )


def test_demo_fails_when_a_link_of_the_loop_is_broken(running_stack: RunningStack) -> None:
    spec_path = Path(get_settings().models_dir) / f"{MODEL}.yaml"
    original = spec_path.read_text()
    raw = yaml.safe_load(original)
    raw["drift"].update(
        numeric_threshold=1000,
        categorical_threshold=1000,
        prediction_threshold=1000,
        max_metric_drop=10,
    )
    spec_path.write_text(yaml.safe_dump(raw))
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "driftline.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        spec_path.write_text(original)
    assert result.returncode != 0
    assert "[FAIL] drift detected" in result.stdout, result.stdout[-3000:]
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion

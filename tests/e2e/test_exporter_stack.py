"""`make up` runs the Prometheus exporter as one of its components: recorded, health-checked,
reading the stack's own monitoring store, restarted alone when it dies, stopped by down."""

from __future__ import annotations

import os
import signal
import urllib.request

from driftline import monitoring
from driftline.exporter import is_decision
from driftline.stack import component_health, up
from tests.e2e.conftest import MODEL, RunningStack, wait_for


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def test_the_exporter_serves_the_stacks_monitoring_store(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    assert stack.component_state("exporter") == "running"
    assert stack.exporter_healthy()

    def read() -> str | None:
        page = _metrics(stack.exporter_url)
        return page if "driftline_exporter_store_up 1.0" in page else None

    text = wait_for("the exporter to read the store", read, timeout=30)
    # `make up`'s first retrain decided about the first champion: its decision is exported
    decisions = [
        row["action"]
        for row in monitoring.audit_log(MODEL, url=stack.settings.monitoring_db_url)
        if is_decision(row["action"])
    ]
    exported = [
        line
        for line in text.splitlines()
        if line.startswith("driftline_last_decision_timestamp_seconds{")
        and f'model="{MODEL}"' in line
    ]
    assert len(exported) == 1 and decisions, (exported, decisions)
    assert any(f'decision="{action}"' in exported[0] for action in decisions), exported
    health = {row["component"]: row for row in component_health(stack.settings)}
    assert health["exporter"]["process"] == "running"
    assert health["exporter"]["health"] == "healthy"


def test_up_restarts_a_dead_exporter_alone(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    before = stack.recorded()["processes"]
    os.killpg(before["exporter"], signal.SIGKILL)
    wait_for(
        "the exporter's group to die",
        lambda: stack.component_state("exporter") == "dead",
        timeout=30,
        interval=0.5,
    )
    messages: list[str] = []
    up(
        port=stack.port,
        mlflow_port=stack.mlflow_port,
        exporter_port=stack.exporter_port,
        extra_env=stack.extra_env,
        say=messages.append,
    )
    assert "but exporter is not running (exporter: dead); restarting only that" in "\n".join(
        messages
    )
    after = stack.recorded()["processes"]
    assert after["exporter"] != before["exporter"]
    assert {k: v for k, v in after.items() if k != "exporter"} == {
        k: v for k, v in before.items() if k != "exporter"
    }
    assert stack.exporter_healthy()
    assert "driftline_exporter_store_up" in _metrics(stack.exporter_url)

"""The running stack: a dead component is noticed and restarted alone; secrets stay private.

Seen before: after the scheduler's process group was SIGKILLed, `make up` answered "already
up" and only `make down` + `make up` brought the scheduler back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from driftline.stack import process_identity, up
from tests.e2e.conftest import RunningStack, wait_for


def test_passwords_are_private_and_never_in_the_logs(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    assert stack.passwords_file.stat().st_mode & 0o777 == 0o600
    passwords = json.loads(stack.passwords_file.read_text())
    assert sorted(passwords) == ["admin", "operator"]
    for log in stack.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        for user, password in passwords.items():
            assert password not in text, f"the {user} password appears in {log}"


def test_up_restarts_only_a_dead_component(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    before = stack.recorded()["processes"]
    os.killpg(before["scheduler"], signal.SIGKILL)
    wait_for(
        "the scheduler's group to die",
        lambda: stack.component_state("scheduler") == "dead",
        timeout=30,
        interval=0.5,
    )
    status = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "status"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "scheduler not running: `make up` restarts only what is dead" in status.stdout

    messages: list[str] = []
    up(
        port=stack.port,
        mlflow_port=stack.mlflow_port,
        exporter_port=stack.exporter_port,
        extra_env=stack.extra_env,
        say=messages.append,
    )
    said = "\n".join(messages)
    assert "but scheduler is not running (scheduler: dead); restarting only that" in said
    after = stack.recorded()["processes"]
    assert after["scheduler"] != before["scheduler"]
    assert {k: v for k, v in after.items() if k != "scheduler"} == {
        k: v for k, v in before.items() if k != "scheduler"
    }
    recorded = stack.recorded()["identity"]["scheduler"]
    assert recorded["start_time"] == process_identity(after["scheduler"])["start_time"]
    assert (stack.health() or {}).get("scheduler", {}).get("status") == "healthy"

    status = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "status"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    scheduler_line = next(
        line for line in status.stdout.splitlines() if line.strip().startswith("scheduler")
    )
    assert "running" in scheduler_line and "healthy" in scheduler_line, status.stdout

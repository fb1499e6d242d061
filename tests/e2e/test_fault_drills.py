"""Fault drills on the running stack: the scheduler's process group SIGKILLed while `train`
runs, then started again. The run completes with exactly one registered version, and the
champion is the same in the monitoring store and in MLflow."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from driftline import monitoring, registry
from tests.e2e.conftest import MODEL, RunningStack, wait_for

RETRAIN = f"{MODEL}_retrain"
# Airflow resets the task instances of a scheduler whose heartbeat is older than
# [scheduler] scheduler_health_check_threshold (30 s) when the next scheduler starts
DEAD_SCHEDULER_SECONDS = 35


def _restart_scheduler(running: RunningStack) -> int:
    """Start the scheduler the way the stack does, recorded with its identity."""
    return running.stack.restart_component("scheduler")


def _task(running: RunningStack, run_id: str, task_id: str) -> dict:
    return running.get(f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances/{task_id}")


def test_scheduler_sigkilled_while_train_runs_the_run_completes_with_one_version(
    running_stack: RunningStack,
) -> None:
    known = {run["dag_run_id"] for run in running_stack.runs(RETRAIN)}
    status, run = running_stack.stack.api(
        "POST",
        f"/api/v2/dags/{RETRAIN}/dagRuns",
        {"logical_date": None, "conf": {"dry_run": True, "reason": "scheduler kill drill"}},
        token=running_stack.token,
    )
    assert status == 200 and run["dag_run_id"] not in known, run
    run_id = run["dag_run_id"]

    wait_for(
        "train to run",
        lambda: _task(running_stack, run_id, "train")["state"] == "running",
        timeout=600,
        interval=1,
    )
    scheduler = running_stack.stack.recorded()["processes"]["scheduler"]
    os.killpg(scheduler, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for("the scheduler to die", lambda: not _alive(scheduler), timeout=30, interval=0.5)
    time.sleep(DEAD_SCHEDULER_SECONDS)
    _restart_scheduler(running_stack)

    finished = running_stack.wait_finished(RETRAIN, run_id, timeout=900)
    recovered_in = time.monotonic() - killed_at
    states = running_stack.task_states(RETRAIN, run_id)
    assert finished["state"] == "success", states
    assert states["train"] == "success" and states["keep_champion"] == "success", states
    train = _task(running_stack, run_id, "train")

    made = registry.client().search_model_versions(
        f"name='{MODEL}' and tags.airflow_run_id='{run_id}'"
    )
    assert len(made) == 1, [v.version for v in made]
    assert (
        monitoring.read_state(MODEL).champion_version
        == registry.alias_version(MODEL, registry.CHAMPION)
        is not None
    )
    print(
        f"scheduler kill drill: train try {train['try_number']}, run finished "
        f"{recovered_in:.0f} s after the kill"
    )


def _alive(pid: int) -> bool:
    """Is the process still running? The stack's processes are this test's children: a
    killed one stays a zombie (and its group signalable) until it is reaped here."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the kernel for its state
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"
    return reaped == 0

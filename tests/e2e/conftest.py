"""A running driftline stack for end-to-end tests: Airflow's api-server, scheduler,
dag-processor and triggerer as real processes on a free port, in a temporary state
directory; stopped by their recorded process groups even when a test fails."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.datagen import generate
from driftline.feature_store import apply_repo
from driftline.settings import REPO_ROOT, get_settings
from driftline.stack import Stack, free_port
from tests.conftest import WORLD, isolate_environment

MODEL = "fraud_detection"


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RunningStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.token = stack.token("admin")

    def get(self, path: str) -> Any:
        status, body = self.stack.api("GET", path, token=self.token)
        assert status == 200, (path, status, body)
        return body

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=50")["dag_runs"]

    def wait_new_run(
        self, dag_id: str, known: set[str], run_type: str, timeout: float = 180
    ) -> dict:
        return wait_for(
            f"a new {run_type} run of {dag_id}",
            lambda: next(
                (
                    r
                    for r in self.runs(dag_id)
                    if r["dag_run_id"] not in known and r["run_type"] == run_type
                ),
                None,
            ),
            timeout,
        )

    def wait_finished(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        def finished() -> dict | None:
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        return wait_for(f"{dag_id} run {run_id} to finish", finished, timeout, interval=3)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def asset_id(self, name: str) -> int:
        assets = self.get(f"/api/v2/assets?name_pattern={name}")["assets"]
        return next(a["id"] for a in assets if a["name"] == name)


@pytest.fixture(scope="package")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("stack") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        # a spec without cooldown, so each event of the tests starts its own retrain
        models = home / "models"
        models.mkdir()
        raw = yaml.safe_load((REPO_ROOT / "include" / "models" / f"{MODEL}.yaml").read_text())
        raw["drift"].update(cooldown_hours=0, event_poll_seconds=2)
        (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(raw))
        patch.setenv("DRIFTLINE_MODELS_DIR", str(models))
        # six weeks of data ending three days ago: the DAGs' default as-of time is "now", and
        # the scenario days a test appends must not lie in the future
        today = datetime.now(UTC).date() - timedelta(days=2)
        generate(offline_dir=get_settings().offline_dir, days=42, today=today, **WORLD)
        apply_repo()

        stack = Stack(
            settings=get_settings(),
            port=free_port(),
            extra_env={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"},
        )
        stack.migrate()
        stack.start()
        try:
            stack.wait_healthy(timeout=300)
            running = RunningStack(stack)
            wait_for(
                "the DAGs to be parsed",
                lambda: (
                    {d["dag_id"] for d in running.get("/api/v2/dags?limit=100")["dags"]}
                    >= {f"{MODEL}_retrain", f"{MODEL}_drift_monitor", "feature_materialization"}
                ),
                timeout=180,
            )
            yield running
        finally:
            stack.stop()
            logs = Path(stack.log_dir)
            if logs.is_dir():
                print(f"stack logs kept in {logs}")

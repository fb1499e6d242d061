"""A running driftline stack for end-to-end tests, started the way `make up` starts it
(`driftline.stack.up`): real api-server, scheduler, dag-processor, triggerer, MLflow UI and
scoring-service processes on free ports, in a temporary state directory, with a webhook receiver for the
notifications. Everything is stopped by recorded process groups, even when a test fails."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from driftline.settings import REPO_ROOT
from driftline.stack import Stack, free_port, up
from tests.conftest import WORLD, isolate_environment

MODEL = "fraud_detection"
ACTIONS = {"promote": "promoted", "reject": "rejected", "inconclusive": "inconclusive"}


def assert_decision_is_fair_and_follows_its_evidence(audit: dict[str, Any]) -> None:
    """The audited action is what the promotion policy decides from the evaluation the run
    recorded, and that evaluation compared both models only on rows after both trained.

    Either outcome can be right for a given world; this makes the test fail on a wrong one:
    an action that does not follow from the recorded evidence, or evidence that is unfair.
    """
    from driftline.evaluation import read_evaluation
    from driftline.lineage import RunContext, run_dir
    from driftline.policy import decide
    from driftline.settings import get_settings
    from driftline.specs import load_spec_file

    settings = get_settings()
    context = RunContext(dag_id=audit["dag_id"], run_id=audit["run_id"])
    evaluation = read_evaluation(run_dir(settings.runs_dir, audit["model"], context))
    spec = load_spec_file(settings.models_dir / f"{audit['model']}.yaml")
    decision = decide(spec.promotion, evaluation.evidence())
    assert audit["action"] == ACTIONS[decision.outcome], (audit, decision)
    assert audit["challenger_version"] == evaluation.challenger_version
    if evaluation.champion_version is not None and decision.outcome != "inconclusive":
        start = datetime.fromisoformat(evaluation.comparison_window[0])
        trained = [datetime.fromisoformat(u) for u in evaluation.trained_until.values() if u]
        assert len(trained) == 2 and all(until <= start for until in trained), evaluation


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Webhook:
    """A local HTTP receiver that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def events(self, event: str) -> list[dict[str, Any]]:
        return [body for body in self.received if body.get("event") == event]


class RunningStack:
    def __init__(self, stack: Stack, webhook: Webhook) -> None:
        self.stack = stack
        self.webhook = webhook
        self.token = stack.token("admin")

    def get(self, path: str) -> Any:
        status, body = self.stack.api("GET", path, token=self.token)
        assert status == 200, (path, status, body)
        return body

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=100")["dag_runs"]

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
    webhook = Webhook()
    webhook.thread.start()
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("stack") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        # a spec without cooldown, so each event of the tests starts its own retrain (the
        # storm test sets a cooldown of minutes for its duration), and a short lease
        models = home / "models"
        models.mkdir()
        raw = yaml.safe_load((REPO_ROOT / "include" / "models" / f"{MODEL}.yaml").read_text())
        raw["drift"].update(cooldown_hours=0, event_poll_seconds=2, event_lease_seconds=45)
        (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(raw))
        patch.setenv("DRIFTLINE_MODELS_DIR", str(models))
        connection = {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": webhook.port,
            "schema": "http",
            "extra": {"endpoint": "/hooks/driftline"},
        }
        stack = None
        try:
            stack = up(
                port=free_port(),
                mlflow_port=free_port(),
                exporter_port=free_port(),
                serve_port=free_port(),
                world=WORLD,
                # the first retrain is as of the day after the newest data (one clock), so
                # its 28-day window starts on day 9: past the world's warm-up week
                days=44,
                extra_env={"AIRFLOW_CONN_DRIFTLINE_WEBHOOK": json.dumps(connection)},
            )
            yield RunningStack(stack, webhook)
        finally:
            if stack is not None:  # a failed `up` stops what it started itself
                stack.stop()
            webhook.server.shutdown()

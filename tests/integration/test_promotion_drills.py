"""Fault drills for promotion, against real processes: a real `mlflow server` (SQLite backend
in a temp dir, on a free port), a real monitoring store, and the retrain's promote stage
(`driftline.retrain.promote`, what the DAG's `promote` task calls) in its own process.

The promoter is stopped at the worst moment — after its claim and intent are recorded,
before MLflow's aliases move — by `DRIFTLINE_FAULT_PAUSE_AFTER_INTENT`, then SIGKILLed, or
the MLflow server is stopped under it. Each drill ends with the champion identical in the
monitoring store and in MLflow, and no version registered by the promotion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline import monitoring, promotion, registry
from driftline.lineage import RunContext
from driftline.stack import free_port
from tests.e2e.conftest import wait_for

MODEL = "fraud_detection"
DAG_ID = "fraud_detection_retrain"

# the promote stage in a process of its own, exiting with its error's kind like a task would
PROMOTE = """
import sys
from driftline import retrain
from driftline.errors import DriftlineError
from driftline.lineage import RunContext
try:
    print(retrain.promote(sys.argv[1], sys.argv[2],
                          context=RunContext(dag_id=sys.argv[3], run_id=sys.argv[4])))
except DriftlineError as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.root / "mlflow-server.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # no background job runners (a dozen processes) for a registry-only server
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        wait_for("the MLflow server", self.healthy, timeout=180, interval=1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=3) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def server(driftline_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    root = driftline_home / "mlflow-server"
    root.mkdir()
    mlflow = MlflowServer(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.uri)
    monkeypatch.delenv(promotion.LEASE_VARIABLE, raising=False)
    monkeypatch.delenv(promotion.FAULT_PAUSE_VARIABLE, raising=False)
    mlflow.start()
    try:
        yield mlflow
    finally:
        mlflow.stop()


def _register(count: int) -> list[str]:
    """``count`` versions, each from its own run, as `train` registers them."""
    import mlflow

    registry.configure()
    client = registry.client()
    client.create_registered_model(MODEL)
    versions = []
    for _ in range(count):
        with mlflow.start_run() as run:
            pass
        version = client.create_model_version(
            MODEL,
            source=f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            tags={"validation": "passed"},
        )
        versions.append(str(version.version))
    return versions


def _decision(home: Path, challenger: str, champion: str | None) -> Path:
    """The run directory of a retrain whose decide step chose to promote."""
    directory = home / "runs" / MODEL / "drill"
    directory.mkdir(parents=True)
    (directory / "decision.json").write_text(
        json.dumps(
            {
                "promote": True,
                "outcome": "promote",
                "reasons": ["drill: the policy promotes"],
                "challenger_version": challenger,
                "champion_version": champion,
                "challenger_metrics": {"pr_auc": 0.9},
                "champion_metrics": {"pr_auc": 0.8},
            }
        )
    )
    return directory


def _promote_process(directory: Path, run_id: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PROMOTE, MODEL, str(directory), DAG_ID, run_id],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_intent(process: subprocess.Popen) -> dict:
    def pending() -> dict | None:
        if process.poll() is not None:
            raise AssertionError(f"the promoter exited early: {process.communicate()}")
        found = monitoring.pending_intents(MODEL)
        return found[0] if found else None

    return wait_for("the promoter's intent", pending, timeout=120, interval=0.5)


def _both_stores() -> tuple[str | None, str | None]:
    return (
        monitoring.read_state(MODEL).champion_version,
        registry.alias_version(MODEL, registry.CHAMPION),
    )


def _versions() -> int:
    return len(registry.client().search_model_versions(f"name='{MODEL}'"))


def test_promoter_sigkilled_after_its_claim_is_undone_by_reconcile_then_the_retry_promotes(
    server: MlflowServer, driftline_home: Path
) -> None:
    v1, v2 = _register(2)
    promotion.promote(
        MODEL, v1, expected_champion=None, context=RunContext(run_id="first"), reasons=["first"]
    )
    directory = _decision(driftline_home, v2, v1)

    promoter = _promote_process(directory, "killed", DRIFTLINE_FAULT_PAUSE_AFTER_INTENT="300")
    intent = _wait_for_intent(promoter)
    promoter.send_signal(signal.SIGKILL)
    assert promoter.wait(timeout=30) == -signal.SIGKILL
    assert (intent["from_version"], intent["to_version"]) == (v1, v2)
    assert _both_stores() == (v2, v1)  # the wedge the intent makes recoverable

    started = time.monotonic()
    reconcile = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "reconcile", "--lease-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reconcile_seconds = time.monotonic() - started
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert "undone" in reconcile.stdout and f"v{v1} is still served" in reconcile.stdout
    assert _both_stores() == (v1, v1)
    undone = monitoring.audit_log(MODEL)[0]
    assert (undone["action"], undone["champion_after"], undone["run_id"]) == (
        "undone",
        v1,
        "killed",
    )

    # Airflow's retry of the killed task: the same run, a fresh process, no pause
    retry = _promote_process(directory, "killed")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, out + err
    assert _both_stores() == (v2, v2)
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == v1
    assert monitoring.pending_intents(MODEL) == []
    assert _versions() == 2
    print(f"reconcile took {reconcile_seconds:.1f} s")


def test_promoter_sigkilled_after_its_claim_is_finished_by_its_own_retry_at_once(
    server: MlflowServer, driftline_home: Path
) -> None:
    v1, v2 = _register(2)
    promotion.promote(
        MODEL, v1, expected_champion=None, context=RunContext(run_id="first"), reasons=["first"]
    )
    directory = _decision(driftline_home, v2, v1)
    promoter = _promote_process(directory, "killed", DRIFTLINE_FAULT_PAUSE_AFTER_INTENT="300")
    _wait_for_intent(promoter)
    promoter.send_signal(signal.SIGKILL)
    promoter.wait(timeout=30)

    # another run within the lease is told to retry later, and changes nothing
    other = _decision_copy(directory, driftline_home / "other")
    blocked = _promote_process(other, "another-run")
    _, err = blocked.communicate(timeout=300)
    assert blocked.returncode == 4 and "PromotionInFlight" in err, err
    assert _both_stores() == (v2, v1)

    retry = _promote_process(directory, "killed")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, out + err
    assert _both_stores() == (v2, v2)
    actions = [row["action"] for row in monitoring.audit_log(MODEL, limit=2)]
    assert actions == ["promoted", "undone"]
    assert _versions() == 2


def _decision_copy(directory: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    (target / "decision.json").write_text((directory / "decision.json").read_text())
    return target


def test_mlflow_stopped_after_the_claim_the_retry_finishes_the_promotion(
    server: MlflowServer, driftline_home: Path
) -> None:
    v1, v2 = _register(2)
    promotion.promote(
        MODEL, v1, expected_champion=None, context=RunContext(run_id="first"), reasons=["first"]
    )
    directory = _decision(driftline_home, v2, v1)

    promoter = _promote_process(directory, "mlflow-down", DRIFTLINE_FAULT_PAUSE_AFTER_INTENT="8")
    _wait_for_intent(promoter)
    server.stop()
    out, err = promoter.communicate(timeout=300)
    assert promoter.returncode == 3, out + err  # Unavailable: Airflow retries the task
    assert "MLflow registry unreachable" in err
    # MLflow could not be read, so nothing was guessed: the intent waits for whoever is next
    assert [i["to_version"] for i in monitoring.pending_intents(MODEL)] == [v2]

    server.start()
    retry = _promote_process(directory, "mlflow-down")
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, out + err
    assert _both_stores() == (v2, v2)
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == v1
    assert monitoring.pending_intents(MODEL) == []
    promoted = monitoring.audit_log(MODEL)[0]
    assert (promoted["action"], promoted["champion_after"]) == ("promoted", v2)
    assert _versions() == 2


def test_mlflow_stopped_after_the_claim_and_a_later_run_undoes_it(
    server: MlflowServer, driftline_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2, v3 = _register(3)
    promotion.promote(
        MODEL, v1, expected_champion=None, context=RunContext(run_id="first"), reasons=["first"]
    )
    directory = _decision(driftline_home, v2, v1)
    promoter = _promote_process(
        directory,
        "mlflow-down",
        DRIFTLINE_FAULT_PAUSE_AFTER_INTENT="8",
        DRIFTLINE_PROMOTION_LEASE_SECONDS="5",
    )
    _wait_for_intent(promoter)
    server.stop()
    promoter.communicate(timeout=300)
    assert promoter.returncode == 3
    server.start()
    time.sleep(5)  # the lease runs out

    # the next run's promotion (its challenger v3, evaluated against v1) settles first
    monkeypatch.setenv(promotion.LEASE_VARIABLE, "5")
    result = promotion.promote(
        MODEL,
        v3,
        expected_champion=v1,
        context=RunContext(dag_id=DAG_ID, run_id="next-run"),
        reasons=["next run"],
    )
    assert result.champion_after == v3
    assert _both_stores() == (v3, v3)
    actions = [row["action"] for row in monitoring.audit_log(MODEL, limit=2)]
    assert actions == ["promoted", "undone"]
    assert _versions() == 3

"""Canary rollouts end to end: the real retrain DAG starts one, the real rollout DAG (under
`airflow dags test`) ramps, promotes or aborts it, on a real Feast store (online store
materialized), a real MLflow registry with models trained by driftline's training code, and
the real scoring service (`driftline serve` under uvicorn) answering HTTP requests: the
traffic of every step goes through the service, which routes each card by the canary's
stable hash and writes the prediction log the rollout DAG judges. The tests run in order
and share one state.

The spec is a canary copy of the shipped one: steps 20 % -> 50 % -> 100 %, steps of 3 s,
``promotion.min_improvement: 0`` so that a retrain on the same data (the same model again)
passes the policy and becomes a candidate whose live quality equals the champion's. The
candidate that must be aborted is known to be bad: the same training code on the same rows
with the labels shuffled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from driftline import monitoring, offline, predlog, registry, retrain, rollout
from driftline.datagen import generate
from driftline.feature_store import apply_repo, materialize_window
from driftline.lineage import RunContext, run_dir
from driftline.serving import routing
from driftline.settings import REPO_ROOT, get_settings
from driftline.specs import load_spec
from driftline.stack import SERVE, free_port
from driftline.stack import Stack as Services
from driftline.status import render
from driftline.status import status as collect_status
from driftline.training_set import TRAINING_FILE
from tests.airflow_env import airflow_env, migrated_database, run_airflow
from tests.conftest import EARLY_START, SMALL, isolate_environment
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.airflow

MODEL = "fraud_detection"
RETRAIN = f"{MODEL}_retrain"
ROLLOUT = f"{MODEL}_rollout"
AS_OF = "2026-02-10"
STEP_SECONDS = 3.0
BATCH = 500
REQUEST_FIELDS = ("amount", "hour", "distance_from_home_km", "merchant_category", "channel")


class Stack:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.last_run_id = ""
        self.pool: pd.DataFrame | None = None
        self.run_directory: Path | None = None
        self.service: Services | None = None
        self.client: httpx.Client | None = None

    def dags_test(
        self, dag_id: str, conf: dict | None = None, logical_date: str | None = None, **env: str
    ) -> tuple[str, dict[str, str], str]:
        """Run a DAG once; returns (run state, task states, combined output)."""
        logical_date = logical_date or datetime.now(UTC).isoformat()
        result = run_airflow(
            ["dags", "test", dag_id, logical_date, "--conf", json.dumps(conf or {})],
            {**self.env, **env},
            check=False,
        )
        with sqlite3.connect(self.home / "airflow" / "airflow.db") as db:
            run_id, state = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                (dag_id,),
            ).fetchone()
            tasks = dict(
                db.execute(
                    "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                    (dag_id, run_id),
                ).fetchall()
            )
        self.last_run_id = run_id
        return state, tasks, result.stdout + result.stderr

    def retrain(self, reason: str) -> tuple[str, dict[str, str], str]:
        return self.dags_test(RETRAIN, {"end_date": AS_OF, "reason": reason}, AS_OF)

    def start_service(self) -> None:
        """`driftline serve` as `make up` runs it (the stack's ``serve`` component)."""
        self.service = Services(settings=get_settings(), port=free_port(), serve_port=free_port())
        self.service.start((SERVE,))
        self.service.wait_serving(timeout=180)
        self.client = httpx.Client(base_url=self.service.serve_url or "", timeout=60)

    def routing(self) -> tuple[str | None, float]:
        served = self.client.get("/v1/models").json()["models"][0]
        return (served["loaded"]["candidate"] or {}).get("version"), served["rollout_share"]

    def serve(self) -> pd.DataFrame:
        """Send every transaction of the pool to the running service (batches of BATCH rows),
        once it routes the current step's share to the candidate; check each answer's arm
        against the canary contract; wait until the service has logged every answer, then
        until the step has lasted its minutes. Returns the logged rows."""
        state = monitoring.open_rollout(MODEL)
        assert state is not None and state["step_started_at"] is not None
        share, candidate = float(state["share"]), state["candidate_version"]
        wait_for(
            f"the service to route {share:.0%} to v{candidate}",
            lambda: self.routing() == (candidate, share),
            timeout=60,
            interval=0.5,
        )
        rows = [
            {
                "card_id": int(row.card_id),
                "merchant_id": int(row.merchant_id),
                **{name: getattr(row, name) for name in REQUEST_FIELDS},
                "hour": int(row.hour),
                "transaction_id": str(row.transaction_id),
                "event_timestamp": row.event_timestamp.isoformat(),
            }
            for row in self.pool.itertuples()
        ]
        answers = []
        for begin in range(0, len(rows), BATCH):
            response = self.client.post(
                f"/v1/models/{MODEL}/score/batch", json={"rows": rows[begin : begin + BATCH]}
            )
            assert response.status_code == 200, response.text[:500]
            answers += response.json()["results"]
        expected = [
            "candidate" if routing.stable_fraction(MODEL, row["card_id"]) < share else "champion"
            for row in rows
        ]
        assert [a["arm"] for a in answers] == expected
        assert {a["version"] for a in answers if a["arm"] == "candidate"} == {candidate}
        wanted = {a["request_id"] for a in answers}

        def logged() -> tuple[pd.DataFrame] | None:
            frame = predlog.read(get_settings().offline_dir, MODEL, start=state["step_started_at"])
            frame = frame[frame["request_id"].isin(wanted)]
            return (frame,) if len(frame) == len(wanted) else None

        (frame,) = wait_for("the service's prediction log", logged, timeout=60, interval=0.5)
        lasted = (datetime.now(UTC) - state["step_started_at"]).total_seconds()
        time.sleep(max(0.0, STEP_SECONDS + 0.5 - lasted))
        return frame


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, airflow_db_template: Path) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("rollout") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        models = home / "models"
        models.mkdir()
        raw = yaml.safe_load((REPO_ROOT / "include" / "models" / f"{MODEL}.yaml").read_text())
        raw["promotion"]["min_improvement"] = 0.0
        raw["rollout"] = {
            "mode": "canary",
            "steps": [0.2, 0.5, 1.0],
            "step_minutes": STEP_SECONDS / 60,
            "guards": {
                "max_error_rate": 0.02,
                # a row's latency is its batch's, the same for both arms; a loaded machine
                # must not make both arms "over it" (a wait, not a ramp)
                "max_p99_latency_ms": 5000,
                "max_score_psi": 0.2,
                # the arms are different cards: PR-AUC of one model differs by chance
                "max_pr_auc_drop": 0.25,
                "min_requests": 200,
                "min_labeled_positives": 10,
            },
        }
        (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(raw))
        patch.setenv("DRIFTLINE_MODELS_DIR", str(models))
        patch.delenv("DRIFTLINE_FAULT_PAUSE_AFTER_INTENT", raising=False)
        patch.setenv("DRIFTLINE_SERVE_POLL_SECONDS", "1")
        generate(offline_dir=home / "offline", days=50, start=EARLY_START, **SMALL)
        apply_repo()
        newest = offline.list_days(home / "offline")[-1]
        start = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
        materialize_window(start, start + timedelta(days=1))
        migrated_database(airflow_db_template, home / "airflow")
        stack = Stack(home, airflow_env(home / "airflow"))
        try:
            yield stack
        finally:
            if stack.client is not None:
                stack.client.close()
            if stack.service is not None:
                stack.service.stop()


def _audit_actions(limit: int = 10) -> list[str]:
    return [row["action"] for row in monitoring.audit_log(MODEL, limit=limit)][::-1]


def _share_tag(version: str) -> str | None:
    return registry.version_info(MODEL, version).tags.get(rollout.SHARE_TAG)


def test_a_passing_challenger_in_canary_mode_becomes_the_candidate(stack: Stack) -> None:
    state, tasks, output = stack.retrain("first champion")
    assert state == "success", output[-3000:]
    assert tasks["promote"] == "success" and tasks["start_rollout"] == "skipped"  # no champion
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    stack.start_service()

    state, tasks, output = stack.retrain("same data again: a candidate as good as the champion")
    assert state == "success", output[-3000:]
    assert tasks["start_rollout"] == "success"
    assert tasks["promote"] == "skipped" and tasks["keep_champion"] == "skipped"
    candidate = registry.alias_version(MODEL, registry.CHALLENGER)
    assert registry.alias_version(MODEL, registry.CANDIDATE) == candidate != champion
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert _share_tag(candidate) == "0.2"
    started = monitoring.audit_log(MODEL)[0]
    assert started["action"] == "rollout_started"
    assert (started["metrics"]["share"], started["metrics"]["step"]) == (0.2, 0)
    assert (started["challenger_version"], started["champion_before"]) == (candidate, champion)
    directory = run_dir(
        get_settings().runs_dir, MODEL, RunContext(dag_id=RETRAIN, run_id=stack.last_run_id)
    )
    stack.run_directory = directory
    stack.pool = pd.read_parquet(directory / TRAINING_FILE)


def test_a_healthy_candidate_ramps_through_every_step_and_is_promoted(stack: Stack) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    candidate = registry.alias_version(MODEL, registry.CANDIDATE)

    stack.serve()
    state, tasks, output = stack.dags_test(ROLLOUT)
    assert state == "success", output[-3000:]
    assert (tasks["ramp"], tasks["abort"], tasks["hold"]) == ("success", "skipped", "skipped")
    assert _share_tag(candidate) == "0.5"
    step = monitoring.audit_log(MODEL)[0]
    assert (step["action"], step["metrics"]["share"], step["metrics"]["step"]) == (
        "rollout_step",
        0.5,
        1,
    )
    held = {c["guard"]: c["state"] for c in step["metrics"]["checks"]}
    assert held == {
        "max_error_rate": "held",
        "max_p99_latency_ms": "held",
        "max_score_psi": "held",
        "max_pr_auc_drop": "held",  # judged: labels of these transactions have matured
    }

    stack.serve()
    state, tasks, output = stack.dags_test(ROLLOUT)
    assert state == "success", output[-3000:]
    assert tasks["ramp"] == "success"
    assert registry.alias_version(MODEL, registry.CHAMPION) == candidate
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == champion
    assert registry.alias_version(MODEL, registry.CANDIDATE) is None
    assert _share_tag(candidate) is None
    assert monitoring.read_state(MODEL).champion_version == candidate
    assert _audit_actions(4) == ["rollout_started", "rollout_step", "promoted", "rollout_completed"]
    completed = monitoring.audit_log(MODEL)[0]
    assert (completed["metrics"]["share"], completed["metrics"]["step"]) == (1.0, 2)
    assert completed["champion_after"] == candidate
    assert monitoring.open_rollout(MODEL) is None
    wait_for(
        "the service to serve the promoted version alone",
        lambda: stack.routing() == (None, 0.0) and _served_champion(stack) == candidate,
        timeout=60,
        interval=0.5,
    )

    # with nothing open the DAG's first task ends the run (it returns nothing to go on with)
    context = RunContext(dag_id=ROLLOUT, run_id="idle", triggered_by="test")
    assert rollout.check(MODEL, at=datetime.now(UTC), context=context)["action"] == "none"


def _start(version: str, run_id: str) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    result = rollout.start(
        MODEL,
        version,
        champion=champion,
        context=RunContext(dag_id=RETRAIN, run_id=run_id, triggered_by="test"),
        reasons=[f"test rollout of v{version}"],
    )
    assert result.action == "rollout_started", result.message


def _served_champion(stack: Stack) -> str | None:
    served = stack.client.get("/v1/models").json()["models"][0]
    return (served["loaded"]["champion"] or {}).get("version")


def _trained_on_shuffled_labels(stack: Stack) -> str:
    """A version known to be worse: driftline's training code on the same rows as the
    champion's, with the labels shuffled (its scores carry no signal)."""
    directory = stack.run_directory.parent / "shuffled-labels"
    shutil.copytree(stack.run_directory, directory)
    frame = pd.read_parquet(directory / TRAINING_FILE)
    label = load_spec(MODEL).label
    frame[label] = np.random.default_rng(7).permutation(frame[label].to_numpy())
    frame.to_parquet(directory / TRAINING_FILE)
    context = RunContext(dag_id=RETRAIN, run_id="shuffled-labels", triggered_by="test")
    return retrain.train(MODEL, str(directory), context=context)["version"]


def test_a_candidate_that_breaks_a_guard_is_aborted(stack: Stack) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    bad = _trained_on_shuffled_labels(stack)
    _start(bad, "abort-drill")
    logged = stack.serve()
    assert set(logged["status"]) == {"ok"}  # it answers every request; its scores are wrong
    assert set(logged.loc[logged["arm"] == "candidate", "version"]) == {bad}
    state, tasks, output = stack.dags_test(ROLLOUT)
    assert state == "success", output[-3000:]
    assert (tasks["abort"], tasks["ramp"]) == ("success", "skipped")
    assert registry.alias_version(MODEL, registry.CANDIDATE) is None
    assert _share_tag(bad) is None
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert monitoring.read_state(MODEL).champion_version == champion
    aborted = monitoring.audit_log(MODEL)[0]
    assert aborted["action"] == "rollout_aborted"
    assert (aborted["metrics"]["share"], aborted["metrics"]["step"]) == (0.0, -1)
    broken = {c["guard"] for c in aborted["metrics"]["checks"] if c["state"] == "broken"}
    # no signal: its scores sit around the base rate, far from the champion's, and rank
    # the matured labels no better than chance
    assert broken == {"max_score_psi", "max_pr_auc_drop"}, aborted["metrics"]["checks"]
    assert (
        "aborted at 20% (step 1 of 3): max_score_psi: PSI of the candidate's"
        in (aborted["reasons"][0])
    )
    assert f"champion v{champion} untouched" in aborted["reasons"][0]
    assert "notification" in output and '"event": "rollout_aborted"' in output
    wait_for(
        "the service to stop routing to the aborted candidate",
        lambda: stack.routing() == (None, 0.0) and _served_champion(stack) == champion,
        timeout=60,
        interval=0.5,
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_pause_resume_and_abort_from_the_cli(stack: Stack) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    previous = registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION)
    _start(previous, "cli-drill")

    paused = _cli("rollout", "pause", "--model", MODEL, "--reason", "watching a dashboard")
    assert paused.returncode == 0, paused.stderr
    assert "paused by user:" in paused.stdout and "at 20%" in paused.stdout
    stack.serve()
    state, tasks, output = stack.dags_test(ROLLOUT)
    assert state == "success" and tasks["hold"] == "success", output[-3000:]
    assert _share_tag(previous) == "0.2"  # paused: every guard held, and still no ramp
    shown = _cli("rollout", "status", "--model", MODEL)
    assert shown.returncode == 0, shown.stderr
    assert f"v{previous} vs champion v{champion}  paused  share 20%" in shown.stdout
    assert "[held] max_error_rate" in shown.stdout
    shown = render(collect_status(MODEL))  # what `driftline status` prints per model
    assert f"rollout #{monitoring.open_rollout(MODEL)['id']}" in shown
    assert f"live (last hour) v{previous} candidate" in shown

    resumed = _cli("rollout", "resume", "--model", MODEL)
    assert resumed.returncode == 0 and "active by user:" in resumed.stdout, resumed.stderr
    aborted = _cli("rollout", "abort", "--model", MODEL, "--reason", "on-call says no")
    assert aborted.returncode == 0, aborted.stderr
    assert "aborted at 20%" in aborted.stdout and "on-call says no" in aborted.stdout
    assert registry.alias_version(MODEL, registry.CANDIDATE) is None
    assert _share_tag(previous) is None
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert _audit_actions(4)[-4:] == [
        "rollout_started",
        "rollout_paused",
        "rollout_resumed",
        "rollout_aborted",
    ]
    again = _cli("rollout", "abort", "--model", MODEL, "--reason", "twice")
    assert again.returncode == 2 and "has no rollout in progress" in again.stderr


# a ramp in a process of its own: judged, then stopped after its claim, before MLflow moves
RAMPER = """
import sys
from datetime import UTC, datetime
from driftline import rollout
from driftline.lineage import RunContext
context = RunContext(dag_id="fraud_detection_rollout", run_id="killed-ramp", triggered_by="test")
judged = rollout.check(sys.argv[1], at=datetime.now(UTC), context=context)
assert judged["action"] == "ramp", judged
print("judged", flush=True)
rollout.advance(sys.argv[1], judged, context=context)
"""


def test_a_ramp_killed_between_the_stores_is_undone_or_finished_by_the_next_run(
    stack: Stack,
) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    previous = registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION)
    _start(previous, "kill-drill")
    stack.serve()
    ramper = subprocess.Popen(
        [sys.executable, "-c", RAMPER, MODEL],
        env={
            **os.environ,
            "DRIFTLINE_FAULT_PAUSE_AFTER_INTENT": "120",
            "DRIFTLINE_PROMOTION_LEASE_SECONDS": "0",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(
            "the ramp's claim",
            lambda: (monitoring.open_rollout(MODEL) or {}).get("pending_action") == "rollout_step",
            timeout=120,
            interval=0.5,
        )
    finally:
        os.killpg(ramper.pid, signal.SIGKILL)
        ramper.wait(timeout=30)
    # killed between the stores: the store has the step in flight, MLflow the old share
    assert monitoring.open_rollout(MODEL)["step"] == 0
    assert _share_tag(previous) == "0.2"

    state, tasks, output = stack.dags_test(ROLLOUT)
    assert state == "success", output[-3000:]
    assert tasks["ramp"] == "success"  # undone, judged again on the same period, ramped
    assert _audit_actions(3)[-3:] == ["rollout_started", "undone", "rollout_step"]
    undone = monitoring.audit_log(MODEL, limit=2)[1]
    assert "was interrupted before MLflow's rollout_share moved" in undone["reasons"][0]
    assert _share_tag(previous) == "0.5" and monitoring.open_rollout(MODEL)["share"] == 0.5

    # the other half: MLflow took the new share, the process died before the store did
    rollout.abort(MODEL, reason="end of the first drill", actor="test")
    _start(previous, "finish-drill")
    started = monitoring.open_rollout(MODEL)
    assert monitoring.change_rollout(
        started["id"],
        pending=None,
        values={
            "pending_action": "rollout_step",
            "pending": {
                "step": 1,
                "share": 0.5,
                "period_end": datetime.now(UTC).isoformat(),
                "actor": "killed-ramp",
            },
            "lease_until": datetime.now(UTC),
        },
    )
    registry.set_tags(MODEL, previous, {rollout.SHARE_TAG: 0.5})
    state, tasks, output = stack.dags_test(ROLLOUT)
    assert state == "success", output[-3000:]
    after = monitoring.open_rollout(MODEL)
    assert (after["step"], after["share"], after["pending_action"]) == (1, 0.5, None)
    assert _audit_actions(2) == ["rollout_started", "rollout_step"]
    assert tasks["hold"] == "success"  # the new step has only begun: too few requests
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    rollout.abort(MODEL, reason="end of drill", actor="test")
    assert registry.alias_version(MODEL, registry.CANDIDATE) is None

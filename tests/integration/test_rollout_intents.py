"""Rollout changes as intents, on a real MLflow SQLite registry and a real monitoring store.

As in ``test_promotion_intents.py``, a dead process is reproduced by the state it leaves:
the change in flight recorded with its claim, MLflow moved or not. The killed ramp of a
real process under the real DAG is in ``test_rollout_dag.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftline import monitoring, promotion, registry, rollout
from driftline.lineage import RunContext
from driftline.promotion import ChampionMoved

MODEL = "fraud_detection"
RETRAIN = f"{MODEL}_retrain"


@pytest.fixture
def versions(driftline_home: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Three registered versions; v1 is champion."""
    monkeypatch.setenv(promotion.LEASE_VARIABLE, "0")  # every change in flight is stale
    client = registry.client()
    client.create_registered_model(MODEL)
    source = driftline_home / "model"
    source.mkdir()
    found = [str(client.create_model_version(MODEL, source=str(source)).version) for _ in range(3)]
    promotion.promote(
        MODEL,
        found[0],
        expected_champion=None,
        context=RunContext(dag_id=RETRAIN, run_id="first"),
        reasons=["first champion"],
    )
    return found


def _start(version: str, run_id: str, champion: str | None) -> rollout.RolloutResult:
    return rollout.start(
        MODEL,
        version,
        champion=champion,
        context=RunContext(dag_id=RETRAIN, run_id=run_id, triggered_by="test"),
        reasons=[f"v{version} passed the policy"],
    )


def _tag(version: str) -> str | None:
    return registry.version_info(MODEL, version).tags.get(rollout.SHARE_TAG)


def test_a_second_passing_challenger_is_held_back_while_a_rollout_is_open(
    versions: list[str],
) -> None:
    v1, v2, v3 = versions
    assert _start(v2, "run-2", v1).action == "rollout_started"
    held = _start(v3, "run-3", v1)
    assert held.action == "held"
    assert f"the canary rollout of v{v2} is in progress (step 1 of 4, 5%, active)" in held.message
    assert registry.alias_version(MODEL, registry.CANDIDATE) == v2
    assert registry.alias_version(MODEL, registry.CHAMPION) == v1
    assert _tag(v3) is None and _tag(v2) == "0.05"
    assert registry.version_info(MODEL, v3).tags["decision"] == "held"
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["challenger_version"], audit["champion_after"]) == (
        "held",
        v3,
        v1,
    )
    # the same run again: nothing new; the candidate itself again: nothing to do
    assert _start(v3, "run-3", v1).action == "held"
    assert [r["action"] for r in monitoring.audit_log(MODEL, limit=2)] == [
        "held",
        "rollout_started",
    ]
    assert _start(v2, "run-2", v1).action == "noop"


def test_a_rollout_against_a_moved_champion_is_refused(versions: list[str]) -> None:
    v1, v2, v3 = versions
    with pytest.raises(ChampionMoved, match="compare-and-set refused"):
        _start(v3, "stale", v2)
    assert registry.alias_version(MODEL, registry.CANDIDATE) is None
    assert monitoring.open_rollout(MODEL) is None
    assert monitoring.audit_log(MODEL)[0]["action"] == "aborted"
    assert registry.alias_version(MODEL, registry.CHAMPION) == v1


def _dead_start(version: str, champion: str) -> int:
    """What a start killed right after its claim leaves: the rollout with its start in flight."""
    rollout_id = monitoring.begin_rollout(
        model=MODEL,
        candidate=version,
        champion=champion,
        steps=[0.05, 0.25, 0.5, 1.0],
        step_minutes=30,
        pending={"run_key": f"{RETRAIN}/killed", "actor": "killed-starter", "reasons": []},
        lease_seconds=0,
        actor="killed-starter",
        dag_id=RETRAIN,
        run_id="killed",
    )
    assert rollout_id is not None
    return rollout_id


def test_a_start_killed_before_the_alias_moved_is_undone(versions: list[str]) -> None:
    v1, v2, _ = versions
    _dead_start(v2, v1)
    registry.set_tags(MODEL, v2, {rollout.SHARE_TAG: 0.05})  # the tag went, the alias did not
    (settled,) = rollout.settle(MODEL, actor="next-check")
    assert settled.outcome == "undone"
    assert monitoring.open_rollout(MODEL) is None
    assert monitoring.rollout_log(MODEL)[0]["status"] == "undone"
    assert _tag(v2) is None and registry.alias_version(MODEL, registry.CANDIDATE) is None
    undone = monitoring.audit_log(MODEL)[0]
    assert (undone["action"], undone["metrics"]["share"], undone["metrics"]["step"]) == (
        "undone",
        0.0,
        -1,
    )
    # nothing is left in the way of the next start
    assert _start(v2, "again", v1).action == "rollout_started"


def test_a_start_killed_after_the_alias_moved_is_finished(versions: list[str]) -> None:
    v1, v2, _ = versions
    _dead_start(v2, v1)
    registry.set_tags(MODEL, v2, {rollout.SHARE_TAG: 0.05})
    registry.set_alias(MODEL, registry.CANDIDATE, v2)
    (settled,) = rollout.settle(MODEL, actor="next-check")
    assert settled.outcome == "finished"
    state = monitoring.open_rollout(MODEL)
    assert (state["status"], state["pending_action"]) == ("active", None)
    assert state["step_started_at"] is not None
    started = monitoring.audit_log(MODEL)[0]
    assert (started["action"], started["actor"]) == ("rollout_started", "killed-starter")


def test_an_abort_killed_between_the_stores_is_finished_by_the_next_caller(
    versions: list[str],
) -> None:
    v1, v2, _ = versions
    _start(v2, "run-2", v1)
    state = monitoring.open_rollout(MODEL)
    assert monitoring.change_rollout(
        state["id"],
        pending=None,
        values={
            "pending_action": "rollout_aborted",
            "pending": {"actor": "killed-abort", "abort_reason": "max_score_psi broke"},
            "lease_until": datetime.now(UTC),
        },
    )
    (settled,) = rollout.settle(MODEL, actor="next-check")
    assert settled.outcome == "finished"
    assert registry.alias_version(MODEL, registry.CANDIDATE) is None and _tag(v2) is None
    aborted = monitoring.audit_log(MODEL)[0]
    assert aborted["action"] == "rollout_aborted" and "max_score_psi broke" in aborted["reasons"][0]
    assert registry.alias_version(MODEL, registry.CHAMPION) == v1


def test_a_completion_that_never_reached_mlflow_is_undone_and_judged_again(
    versions: list[str],
) -> None:
    v1, v2, _ = versions
    _start(v2, "run-2", v1)
    state = monitoring.open_rollout(MODEL)
    assert monitoring.change_rollout(
        state["id"],
        pending=None,
        values={
            "pending_action": "rollout_completed",
            "pending": {"run_key": "x/killed", "actor": "killed-completer"},
            "lease_until": datetime.now(UTC),
        },
    )
    (settled,) = rollout.settle(MODEL, actor="next-check")
    assert settled.outcome == "undone"
    state = monitoring.open_rollout(MODEL)
    assert (state["status"], state["pending_action"], state["share"]) == ("active", None, 0.05)
    assert registry.alias_version(MODEL, registry.CHAMPION) == v1
    assert registry.alias_version(MODEL, registry.CANDIDATE) == v2


def test_a_ramp_retried_by_its_own_run_settles_its_dead_attempt_and_ramps_at_once(
    versions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ramp task's first attempt was killed after its claim, before MLflow's tag moved;
    Airflow retries it in the same run. The retry does not wait out the lease its own dead
    attempt holds: it undoes that attempt and ramps. Another run, within the lease, does
    nothing."""
    monkeypatch.setenv(promotion.LEASE_VARIABLE, "300")
    v1, v2, _ = versions
    _start(v2, "run-2", v1)
    state = monitoring.open_rollout(MODEL)
    ramp = RunContext(dag_id=f"{MODEL}_rollout", run_id="scheduled-1", triggered_by="scheduled")
    end = datetime.now(UTC).isoformat()
    assert monitoring.change_rollout(
        state["id"],
        pending=None,
        step=0,
        values={
            "pending_action": "rollout_step",
            "pending": {"run_key": ramp.key, "actor": "scheduled", "step": 1, "share": 0.25},
            "lease_until": datetime.now(UTC) + timedelta(seconds=300),
        },
    )
    judged = {
        "rollout_id": state["id"],
        "step": 0,
        "candidate": v2,
        "action": rollout.RAMP,
        "reasons": ["every guard held"],
        "verdict": {"period": [state["step_started_at"].isoformat(), end], "checks": []},
    }
    other = RunContext(dag_id=f"{MODEL}_rollout", run_id="scheduled-2", triggered_by="scheduled")
    assert rollout.advance(MODEL, judged, context=other).action == "noop"
    assert monitoring.open_rollout(MODEL)["pending_action"] == "rollout_step"

    retried = rollout.advance(MODEL, judged, context=ramp)
    assert (retried.action, retried.share) == ("rollout_step", 0.25), retried.message
    state = monitoring.open_rollout(MODEL)
    assert (state["step"], state["share"], state["pending_action"]) == (1, 0.25, None)
    assert _tag(v2) == "0.25"
    assert [r["action"] for r in monitoring.audit_log(MODEL, limit=3)][::-1] == [
        "rollout_started",
        "undone",
        "rollout_step",
    ]

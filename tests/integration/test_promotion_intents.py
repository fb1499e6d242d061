"""Promotion as a recoverable operation, on a real MLflow SQLite registry and a real
monitoring store in a temp directory.

A dead promoter is reproduced by the state it leaves: the claim and intent recorded in one
transaction (``monitoring.begin_promotion``, the first thing ``promote`` writes), MLflow's
aliases moved or not. The drills in ``test_promotion_drills.py`` kill real processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from driftline import monitoring, promotion, registry
from driftline.errors import Conflict, InvalidInput, Unavailable
from driftline.lineage import RunContext
from driftline.promotion import ChampionMoved, PromotionInFlight, rollback_plan

MODEL = "fraud_detection"


@pytest.fixture
def versions(driftline_home: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Four registered versions with a passed validation, no champion yet."""
    monkeypatch.delenv(promotion.LEASE_VARIABLE, raising=False)
    client = registry.client()
    client.create_registered_model(MODEL)
    source = driftline_home / "model"
    source.mkdir()
    return [
        str(
            client.create_model_version(
                MODEL, source=str(source), tags={"validation": "passed"}
            ).version
        )
        for _ in range(4)
    ]


def _promote(version: str, expected: str | None, run_id: str) -> promotion.PromotionResult:
    return promotion.promote(
        MODEL,
        version,
        expected_champion=expected,
        context=RunContext(dag_id="fraud_detection_retrain", run_id=run_id),
        reasons=[f"test promotion of v{version}"],
    )


def _served() -> str | None:
    return registry.alias_version(MODEL, registry.CHAMPION)


def _stored() -> str | None:
    return monitoring.read_state(MODEL).champion_version


def _dead_promoter(frm: str | None, to: str, run_id: str, *, lease: float = 0.0) -> int:
    """What a promoter killed right after its claim leaves: claim + pending intent."""
    intent = monitoring.begin_promotion(
        model=MODEL,
        expected=frm,
        new=to,
        action="promoted",
        actor="killed-promoter",
        previous_before=registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION),
        previous_after=frm,
        lease_seconds=lease,
        reasons=["killed mid-promotion"],
        dag_id="fraud_detection_retrain",
        run_id=run_id,
    )
    assert intent is not None
    return intent


def test_a_promotion_records_an_intent_and_ends_it_done(versions: list[str]) -> None:
    v1, v2, *_ = versions
    _promote(v1, None, "run-1")
    result = _promote(v2, v1, "run-2")
    assert (result.champion_before, result.champion_after) == (v1, v2)
    assert _served() == _stored() == v2
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == v1
    intents = monitoring.intent_log(MODEL)
    assert [(i["from_version"], i["to_version"], i["status"]) for i in intents] == [
        (v1, v2, "done"),
        (None, v1, "done"),
    ]
    assert monitoring.pending_intents(MODEL) == []
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["champion_after"], audit["run_id"]) == ("promoted", v2, "run-2")


def test_killed_before_the_aliases_moved_the_next_promotion_undoes_it(
    versions: list[str],
) -> None:
    v1, v2, v3, _ = versions
    _promote(v1, None, "run-1")
    _dead_promoter(v1, v2, "killed-run")
    # the store says v2, MLflow serves v1: before intents this wedged every later promotion
    assert (_stored(), _served()) == (v2, v1)

    result = _promote(v3, v1, "next-run")
    assert result.champion_after == v3
    assert _served() == _stored() == v3
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == v1
    undone, promoted = monitoring.audit_log(MODEL, limit=2)[::-1]
    assert undone["action"] == "undone" and undone["champion_after"] == v1
    assert "v1 is still served" in undone["reasons"][0].replace(f"v{v1}", "v1")
    assert promoted["action"] == "promoted" and promoted["champion_after"] == v3
    assert [i["status"] for i in monitoring.intent_log(MODEL, limit=3)] == [
        "done",
        "undone",
        "done",
    ]


def test_the_task_retry_resolves_its_own_intent_at_once_and_promotes(
    versions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2, *_ = versions
    _promote(v1, None, "run-1")
    _dead_promoter(v1, v2, "same-run", lease=3600)  # lease still running
    monkeypatch.setenv(promotion.LEASE_VARIABLE, "3600")

    # another run must wait for the lease: in flight is a retryable conflict
    with pytest.raises(PromotionInFlight) as in_flight:
        _promote(versions[2], v1, "other-run")
    assert isinstance(in_flight.value, Conflict) and in_flight.value.retryable
    assert in_flight.value.exit_code == 4
    assert "killed-promoter" in str(in_flight.value)

    # the same run's retry knows its previous attempt is over
    result = _promote(v2, v1, "same-run")
    assert result.champion_after == v2
    assert _served() == _stored() == v2


def test_alias_applied_but_answer_lost_is_finished_not_reported_as_nothing_moved(
    versions: list[str],
) -> None:
    v1, v2, *_ = versions
    _promote(v1, None, "run-1")
    _dead_promoter(v1, v2, "lost-answer")
    # MLflow applied both moves; the promoter never heard back
    registry.set_alias(MODEL, registry.PREVIOUS_CHAMPION, v1)
    registry.set_alias(MODEL, registry.CHAMPION, v2)

    (settled, in_sync) = promotion.settle(MODEL, actor="reconcile-test")
    assert settled.outcome == "finished" and settled.served == v2
    assert in_sync.outcome == "in_sync"
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["champion_after"]) == ("promoted", v2)
    assert "MLflow already serves" in audit["reasons"][0]
    assert registry.version_info(MODEL, v2).tags["decision"] == "promoted"
    assert _stored() == v2


def test_an_alias_moved_by_hand_during_an_intent_is_followed(versions: list[str]) -> None:
    v1, v2, v3, _ = versions
    _promote(v1, None, "run-1")
    _dead_promoter(v1, v2, "overtaken")
    registry.set_alias(MODEL, registry.CHAMPION, v3)

    (settled, _) = promotion.settle(MODEL, actor="reconcile-test")
    assert settled.outcome == "followed_mlflow"
    assert _stored() == _served() == v3
    assert monitoring.audit_log(MODEL)[0]["champion_after"] == v3


def test_a_store_wedged_before_intents_existed_adopts_what_mlflow_serves(
    versions: list[str],
) -> None:
    v1, v2, v3, _ = versions
    _promote(v1, None, "run-1")
    # the old code's wedge: a claim without an intent, MLflow never moved
    assert monitoring.compare_and_set_champion(model=MODEL, expected=v1, new=v2, actor="old")
    result = _promote(v3, v1, "after-upgrade")
    assert _served() == _stored() == v3 == result.champion_after
    reconciled = monitoring.audit_log(MODEL, limit=2)[1]
    assert (reconciled["action"], reconciled["champion_before"], reconciled["champion_after"]) == (
        "reconciled",
        v2,
        v1,
    )


def test_a_promotion_against_a_moved_champion_is_a_conflict(versions: list[str]) -> None:
    v1, v2, v3, _ = versions
    _promote(v1, None, "run-1")
    _promote(v2, v1, "run-2")
    with pytest.raises(ChampionMoved, match="compare-and-set refused") as moved:
        _promote(v3, v1, "stale-run")
    assert moved.value.exit_code == 4 and not moved.value.retryable
    assert _served() == _stored() == v2
    assert monitoring.audit_log(MODEL)[0]["action"] == "aborted"


def test_reconcile_command_resolves_a_stale_intent_and_says_what_is_served(
    versions: list[str],
) -> None:
    v1, v2, *_ = versions
    _promote(v1, None, "run-1")
    _dead_promoter(v1, v2, "killed-run", lease=3600)
    busy = _cli("reconcile", "--model", MODEL)
    assert busy.returncode == 4, busy.stdout + busy.stderr
    assert "in flight" in busy.stdout + busy.stderr
    assert _stored() == v2  # left alone within its lease

    done = _cli("reconcile", "--model", MODEL, "--lease-seconds", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"v{v1} is still served" in done.stdout
    assert _served() == _stored() == v1
    again = _cli("reconcile", "--model", MODEL)
    assert again.returncode == 0 and "in sync" in again.stdout


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rollback_walks_the_history_back_and_never_reserves_a_rolled_back_version(
    versions: list[str],
) -> None:
    v1, v2, v3, v4 = versions
    _promote(v1, None, "run-1")
    _promote(v2, v1, "run-2")
    _promote(v3, v2, "run-3")

    first = promotion.rollback(MODEL, reason="v3 misbehaves", actor="user:oncall")
    assert (first.champion_before, first.champion_after) == (v3, v2)
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == v1
    assert "rolled_back_at" in registry.version_info(MODEL, v3).tags

    second = promotion.rollback(MODEL, reason="v2 too", actor="user:oncall")
    assert (second.champion_before, second.champion_after) == (v2, v1)
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) is None

    with pytest.raises(InvalidInput, match="first champion on record"):
        promotion.rollback(MODEL, reason="and again", actor="user:oncall")
    assert _served() == _stored() == v1

    # a new champion after the rollbacks: rolling it back returns to v1, never to v2 or v3
    _promote(v4, v1, "run-4")
    third = promotion.rollback(MODEL, reason="v4 misbehaves", actor="user:oncall")
    assert third.champion_after == v1
    assert [row["action"] for row in monitoring.audit_log(MODEL, limit=3)] == [
        "rollback",
        "promoted",
        "rollback",
    ]


def test_rollback_plan_refuses_when_every_earlier_champion_was_rolled_back() -> None:
    def change(action: str, frm: str | None, to: str) -> dict:
        return {"action": action, "from_version": frm, "to_version": to}

    history = [
        change("promoted", None, "1"),
        change("promoted", "1", "2"),
        change("rollback", "2", "1"),
        change("manual_promote", "1", "2"),  # a human re-promotes 2 on purpose
        change("promoted", "2", "3"),
    ]
    assert rollback_plan("3", history, []).target == "2"
    history.append(change("rollback", "3", "2"))
    plan = rollback_plan("2", history, [])
    assert (plan.target, plan.after) == ("1", None)
    # a champion whose only predecessor was rolled back
    plan = rollback_plan("1", [change("promoted", None, "2"), change("rollback", "2", "1")], [])
    assert plan.target is None and "first champion on record" in plan.refusal
    plan = rollback_plan(
        "4",
        [
            change("promoted", None, "2"),
            change("promoted", "2", "3"),
            change("rollback", "3", "2"),
            change("manual_promote", "2", "3"),
            change("manual_promote", "3", "4"),
        ],
        [],
    )
    assert plan.target == "3"
    # no history (a store from before intents): MLflow's previous_champion is the way back
    assert rollback_plan("5", [], ["4", "5"]).target == "4"


def test_unreachable_mlflow_and_store_are_unavailable(
    driftline_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline.stack import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Unavailable, match=r"MLflow registry unreachable at http://127\.0\.0\.1"):
        registry.alias_version(MODEL, registry.CHAMPION)

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(Unavailable, match="monitoring store unreachable"):
        monitoring.read_state(MODEL, url)
    # an engine that was reachable once and is not any more: the error handler converts
    monitoring._migrated.add(url)
    try:
        with pytest.raises(Unavailable, match="monitoring store unreachable") as down:
            monitoring.read_state(MODEL, url)
        assert down.value.exit_code == 3 and down.value.retryable
    finally:
        monitoring._migrated.discard(url)
        monitoring._engines.pop(url, None)


def test_cli_exit_codes_follow_the_error_kind(
    versions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline.stack import free_port

    unknown = _cli("promote", "--version", "999", "--reason", "typo")
    assert unknown.returncode == 2, unknown.stderr  # InvalidInput
    assert unknown.stderr.strip() == f"driftline: error: model '{MODEL}' has no version 999"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = _cli("promote", "--version", versions[0], "--reason", "while MLflow is down")
    assert down.returncode == 3, down.stderr  # Unavailable
    assert "MLflow registry unreachable at http://127.0.0.1" in down.stderr
    assert monitoring.read_state(MODEL).champion_version is None  # nothing claimed

"""Delivery of drift events against a real monitoring store: poison rows, the lease that
re-delivers a lost claim, duplicates that never retrain twice, storm protection at intake,
validation of asset-event extras, and the operator's requeue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from driftline import monitoring
from driftline.errors import InvalidInput
from driftline.events import EventPolicy, admit_drift_run, intake, raise_event, requeue
from driftline.lineage import RunContext
from driftline.settings import REPO_ROOT

MODEL = "fraud_detection"
OTHER = "second_model"
POLICY = EventPolicy(poll_seconds=1, lease_seconds=60, cooldown_hours=0.05)  # 3 minutes


@pytest.fixture
def two_models(driftline_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = driftline_home / "models"
    models.mkdir()
    raw = yaml.safe_load((REPO_ROOT / "include" / "models" / f"{MODEL}.yaml").read_text())
    (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(raw))
    (models / f"{OTHER}.yaml").write_text(yaml.safe_dump({**raw, "name": OTHER}))
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(models))
    return models


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, two_models: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The monitoring store on SQLite (embedded) and on PostgreSQL (production profile)."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    from tests.production.conftest import create_databases, drop_databases, pg_url, require_services

    require_services()
    name = f"driftline_events_{uuid.uuid4().hex[:8]}"
    create_databases([name])
    monkeypatch.setenv("DRIFTLINE_MONITORING_DB_URL", pg_url(name))
    try:
        yield "postgresql"
    finally:
        monitoring._engines.pop(pg_url(name)).dispose()
        drop_databases([name])


def _run(run_id: str) -> RunContext:
    return RunContext(dag_id=f"{MODEL}_retrain", run_id=run_id, run_type="asset_triggered")


def _watcher_event(ids: list[int], at: datetime) -> dict:
    return {
        "extra": {"from_trigger": True, "payload": {"model": MODEL, "drift_event_ids": ids}},
        "timestamp": at.isoformat(),
        "source": "api",
    }


def _rest_event(extra: dict, at: datetime) -> dict:
    return {"extra": {"from_rest_api": True, **extra}, "timestamp": at.isoformat(), "source": "api"}


def _insert_raw(payload: str, updated_at: str, model: str = MODEL) -> int:
    """A row as a careless outside system writes it, bypassing driftline's types."""
    with monitoring.engine().begin() as conn:
        return int(
            conn.execute(
                sa.text(
                    "INSERT INTO drift_events (created_at, model, source, payload, status, "
                    "status_reason, updated_at) VALUES ('2026-11-26 10:00:00', :model, 'sql', "
                    ":payload, 'new', '', :updated_at)"
                ),
                {"model": model, "payload": payload, "updated_at": updated_at},
            ).lastrowid
        )


def test_a_poison_row_is_rejected_and_the_rows_after_it_flow(two_models: Path) -> None:
    not_json = _insert_raw("{not json", "2026-11-26 10:00:00")
    bad_time = _insert_raw('{"reason": "x"}', "half past ten")
    good = raise_event(MODEL, {"reason": "after the poison"})
    other = raise_event(OTHER, {"reason": "another model"})

    result = intake(MODEL, policy=POLICY)
    assert [row["id"] for row in result.claimed] == [good]
    assert sorted(result.rejected) == [not_json, bad_time]
    rejected = monitoring.drift_event(not_json)
    assert rejected["status"] == "rejected"
    assert rejected["status_reason"].startswith("unreadable row: payload is not JSON")
    assert "'{not json'" in rejected["status_reason"]
    assert (
        "updated_at is not a timestamp: 'half past ten'"
        in (monitoring.drift_event(bad_time)["status_reason"])
    )
    # the other model's watcher is not blocked either, and reads lists without raising
    assert [row["id"] for row in intake(OTHER, policy=POLICY).claimed] == [other]
    assert len(monitoring.drift_event_log()) == 4


def test_a_claim_nobody_consumed_is_delivered_again_after_its_lease(store: str) -> None:
    event_id = raise_event(MODEL, {"reason": "lost by a dead triggerer"})
    now = datetime.now(UTC)
    assert [r["id"] for r in intake(MODEL, policy=POLICY, now=now).claimed] == [event_id]
    # inside the lease: nothing to deliver, the claim is on its way
    inside = intake(MODEL, policy=POLICY, now=now + timedelta(seconds=30))
    assert inside.claimed == [] and inside.redelivered == []
    # the lease ran out: back to new and claimed again in the same poll
    later = intake(MODEL, policy=POLICY, now=now + timedelta(seconds=61))
    assert later.redelivered == [event_id]
    assert [r["id"] for r in later.claimed] == [event_id]
    assert monitoring.drift_event(event_id)["status"] == "emitted"


def test_an_event_delivered_twice_retrains_once_and_the_duplicate_is_recorded(
    store: str,
) -> None:
    event_id = raise_event(MODEL, {"reason": "storm of one"})
    intake(MODEL, policy=POLICY)
    t0 = datetime.now(UTC)
    first = admit_drift_run(
        MODEL, [_watcher_event([event_id], t0)], context=_run("run-1"), at=t0, cooldown_hours=0
    )
    assert first.admitted and first.event_ids == [event_id]
    # the same event again (a lease ran out while run-1 was queued): no second retrain
    second = admit_drift_run(
        MODEL,
        [_watcher_event([event_id], t0 + timedelta(minutes=6))],
        context=_run("run-2"),
        at=t0 + timedelta(minutes=6),
        cooldown_hours=0,
    )
    assert not second.admitted and second.duplicates == [event_id]
    assert "already taken by another run (duplicates)" in second.message
    row = monitoring.drift_event(event_id)
    assert (row["status"], row["consumed_by_run_id"]) == ("consumed", "run-1")
    audit = [a for a in monitoring.audit_log(MODEL) if a["action"] == "drift_event_duplicate"]
    assert [(a["run_id"], a["reason"]) for a in audit] == [
        (
            "run-2",
            f"drift event {event_id} delivered again; already consumed by run run-1: "
            "not retraining on it twice",
        )
    ]
    # re-running run-2's admission records nothing twice
    admit_drift_run(
        MODEL,
        [_watcher_event([event_id], t0 + timedelta(minutes=6))],
        context=_run("run-2"),
        at=t0 + timedelta(minutes=6),
        cooldown_hours=0,
    )
    assert (
        len([a for a in monitoring.audit_log(MODEL) if a["action"] == "drift_event_duplicate"]) == 1
    )


def test_a_storm_at_intake_is_merged_then_suppressed_by_the_cooldown(store: str) -> None:
    t0 = datetime.now(UTC)
    first_batch = [raise_event(MODEL, {"reason": f"storm {i}"}) for i in range(20)]
    claimed = intake(MODEL, policy=POLICY, now=t0).claimed
    assert [r["id"] for r in claimed] == first_batch
    # more rows while the claim is on its way: merged into it
    late = [raise_event(MODEL, {"reason": f"late {i}"}) for i in range(30)]
    merged = intake(MODEL, policy=POLICY, now=t0 + timedelta(seconds=2))
    assert merged.claimed == [] and merged.suppressed == late
    assert monitoring.drift_event(late[0])["status_reason"].startswith(
        f"merged: drift events {first_batch} of {MODEL} are already on their way"
    )
    run = admit_drift_run(
        MODEL,
        [_watcher_event(first_batch, t0)],
        context=_run("storm"),
        at=t0 + timedelta(seconds=3),
        cooldown_hours=POLICY.cooldown_hours,
    )
    assert run.admitted and run.event_ids == first_batch
    # inside the cooldown: suppressed with the time the next retrain is allowed
    inside = raise_event(MODEL, {"reason": "inside the cooldown"})
    assert intake(MODEL, policy=POLICY, now=datetime.now(UTC) + timedelta(minutes=1)).suppressed
    reason = monitoring.drift_event(inside)["status_reason"]
    assert reason.startswith(f"cooldown: run storm retrained {MODEL} on drift at ")
    assert "at most one drift-triggered retrain per 0.05 h (next allowed after" in reason
    # after the cooldown: claimed, a run may start
    after = raise_event(MODEL, {"reason": "after the cooldown"})
    result = intake(MODEL, policy=POLICY, now=datetime.now(UTC) + timedelta(minutes=4))
    assert [r["id"] for r in result.claimed] == [after]
    counts = monitoring.event_counts(MODEL)
    assert {status: c["count"] for status, c in counts.items()} == {
        "consumed": 20,
        "suppressed": 31,
        "emitted": 1,
    }
    # another model's storm protection is its own
    other = raise_event(OTHER, {"reason": "unrelated"})
    assert [r["id"] for r in intake(OTHER, policy=POLICY).claimed] == [other]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"drift_event_ids": 5}, "drift_event_ids: Value error, must be a list of integer"),
        ({"drift_event_ids": ["7"]}, "must be a list of integer event ids, got ['7']"),
        ({"window": ["2019-01-01", "2019-01-02"]}, "is outside the data that exists"),
        ({"window": ["2026-01-05", "2026-01-02"]}, "window: Value error, start"),
        ({"window": ["yesterday", "today"]}, "window.0: Input should be a valid datetime"),
        ({"reason": "drift", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"model": OTHER}, f"model: {OTHER!r} is not {MODEL!r}"),
    ],
)
def test_an_invalid_rest_extra_skips_the_run_with_the_reason_recorded(
    two_models: Path, offline_copy: Path, extra: dict, problem: str
) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    admission = admit_drift_run(
        MODEL, [_rest_event(extra, at)], context=_run("bad"), at=at, cooldown_hours=0
    )
    assert not admission.admitted and admission.event_ids == []
    assert problem in admission.message, admission.message
    (row,) = monitoring.drift_event_log(MODEL)
    assert row["status"] == "rejected" and row["consumed_by_run_id"] == "bad"
    assert problem in row["status_reason"]
    (audit,) = [a for a in monitoring.audit_log(MODEL) if a["action"] == "drift_event_rejected"]
    assert problem in audit["reason"] and audit["run_id"] == "bad"


def test_rest_extras_may_only_name_this_models_unconsumed_events(
    two_models: Path, offline_copy: Path
) -> None:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    others = raise_event(OTHER, {"reason": "not yours"})
    taken = raise_event(MODEL, {"reason": "taken"})
    intake(MODEL, policy=POLICY)
    assert admit_drift_run(
        MODEL, [_watcher_event([taken], at)], context=_run("first"), at=at, cooldown_hours=0
    ).admitted
    cases = (
        ([others], f"event {others} is for model {OTHER!r}"),
        ([taken], f"event {taken} is already consumed by run first"),
        ([999], "event 999 does not exist"),
    )
    for n, (ids, problem) in enumerate(cases, start=1):
        admission = admit_drift_run(
            MODEL,
            [_rest_event({"drift_event_ids": ids}, at + timedelta(seconds=n))],
            context=_run(f"run-{ids[0]}"),
            at=at,
            cooldown_hours=0,
        )
        assert not admission.admitted and problem in admission.message
    # a valid window inside the data, and a valid event: admitted
    good = _rest_event(
        {"reason": "ok", "window": ["2026-01-10", "2026-01-11T00:00:00+00:00"]},
        at + timedelta(seconds=10),
    )
    admission = admit_drift_run(MODEL, [good], context=_run("good"), at=at, cooldown_hours=0)
    assert admission.admitted, admission.message


def test_requeue_puts_a_rejected_event_back_and_audits_it(store: str) -> None:
    bad = raise_event(MODEL, {"share_drifted": 3})
    intake(MODEL, policy=POLICY)
    assert monitoring.drift_event(bad)["status"] == "rejected"
    row = requeue(bad, actor="user:ops", reason="payload fixed upstream")
    assert row["status"] == "new" and "requeued by user:ops (was rejected" in row["status_reason"]
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["actor"], audit["reason"]) == (
        "drift_event_requeued",
        "user:ops",
        "payload fixed upstream",
    )
    good = raise_event(MODEL, {"reason": "fine"})
    intake(MODEL, policy=POLICY)
    admit_drift_run(
        MODEL,
        [_watcher_event([good], datetime.now(UTC))],
        context=_run("r"),
        at=datetime.now(UTC),
        cooldown_hours=0,
    )
    with pytest.raises(InvalidInput, match=f"drift event {good} is consumed by run r"):
        requeue(good, actor="user:ops")
    with pytest.raises(InvalidInput, match="drift event 4242 does not exist"):
        requeue(4242, actor="user:ops")


def test_the_drift_monitors_own_extra_passes_validation(
    two_models: Path, offline_copy: Path
) -> None:
    from driftline.drift import DriftResult

    at = datetime(2026, 1, 21, 3, tzinfo=UTC)
    result = DriftResult(
        model=MODEL,
        champion_version="3",
        window_start=datetime(2026, 1, 20, tzinfo=UTC).isoformat(),
        window_end=datetime(2026, 1, 21, tzinfo=UTC).isoformat(),
        current_rows=5000,
        reference_rows=20000,
        columns={"amount": {"drifted": True, "score": 0.3, "threshold": 0.1}},
        share_drifted=0.4,
        prediction={"drifted": True},
        performance={"decayed": False},
        verdict="drift",
        reasons=["amount drifted"],
        report_uri="runs:/abc/drift/drift_report.html",
        report_id=None,
    )
    result.event_id = monitoring.create_drift_event(
        model=MODEL, source="monitor:test", payload=result.event_extra(), status="emitted"
    )
    event = {
        "extra": result.event_extra(),
        "timestamp": at.isoformat(),
        "source": f"{MODEL}_drift_monitor",
    }
    admission = admit_drift_run(MODEL, [event], context=_run("monitor"), at=at, cooldown_hours=0)
    assert admission.admitted and admission.event_ids == [result.event_id], admission.message

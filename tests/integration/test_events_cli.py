"""The operator's view of the drift-event queue, against a real monitoring store:
`driftline events` lists events by status with their reasons, `driftline events requeue`
puts a rejected or stuck one back (audited), `driftline status` counts them with their age."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from driftline import monitoring
from driftline.cli import app
from driftline.errors import DriftlineError
from driftline.events import EventPolicy, intake, raise_event
from driftline.status import events_by_status

MODEL = "fraud_detection"
POLICY = EventPolicy(poll_seconds=1, lease_seconds=60, cooldown_hours=1)


def _cli(*args: str) -> tuple[int, str]:
    """The command as `driftline` runs it: main() turns an error's kind into its exit code."""
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, DriftlineError):
        return result.exception.exit_code, f"{result.output}driftline: error: {result.exception}"
    return result.exit_code, result.output


def _queue() -> dict[str, int]:
    """One event in each interesting state."""
    rejected = raise_event(MODEL, {"share_drifted": 9})
    claimed = raise_event(MODEL, {"reason": "first"})
    intake(MODEL, policy=POLICY)
    merged = raise_event(MODEL, {"reason": "second"})
    intake(MODEL, policy=POLICY)
    waiting = raise_event(MODEL, {"reason": "not polled yet"})
    return {"rejected": rejected, "emitted": claimed, "suppressed": merged, "new": waiting}


def test_events_lists_by_status_with_reasons(driftline_home: Path) -> None:
    ids = _queue()
    code, out = _cli("events", "--status", "rejected")
    assert code == 0, out
    assert f"{ids['rejected']:>6}  {MODEL}" in out and "rejected" in out
    assert "malformed payload: share_drifted: Input should be less than or equal to 1" in out
    assert f"{ids['emitted']:>6}  " not in out
    code, out = _cli("events", "--status", "suppressed", "--json")
    (row,) = json.loads(out)
    assert row["id"] == ids["suppressed"] and row["reason"].startswith("merged: drift events")
    code, out = _cli("events", "--status", "emitted", "--status", "new", "--json")
    assert {r["id"] for r in json.loads(out)} == {ids["emitted"], ids["new"]}
    code, out = _cli("events", "--status", "lost")
    assert code == 2 and "--status 'lost' is not one of new, emitted" in out


def test_requeue_puts_rejected_and_stuck_events_back_audited(driftline_home: Path) -> None:
    ids = _queue()
    code, out = _cli("events", "requeue", "--id", str(ids["rejected"]), "--reason", "fixed")
    assert code == 0, out
    assert f"drift event {ids['rejected']} of {MODEL} is new again" in out
    assert monitoring.drift_event(ids["rejected"])["status"] == "new"
    code, out = _cli("events", "requeue", "--id", str(ids["emitted"]))
    assert code == 0 and monitoring.drift_event(ids["emitted"])["status"] == "new"
    audit = [a for a in monitoring.audit_log(MODEL) if a["action"] == "drift_event_requeued"]
    assert [a["reason"] for a in audit][-1] == "fixed" and len(audit) == 2
    assert all(a["actor"].startswith("user:") for a in audit)
    code, out = _cli("events", "requeue", "--id", "999")
    assert code == 2 and "drift event 999 does not exist" in out


def test_status_counts_events_by_status_with_the_age_of_the_oldest(driftline_home: Path) -> None:
    ids = _queue()
    with monitoring.engine().begin() as conn:  # an event claimed 3 hours ago and never consumed
        conn.execute(
            monitoring.drift_events.update()
            .where(monitoring.drift_events.c.id == ids["emitted"])
            .values(updated_at=datetime.now(UTC) - timedelta(hours=3, minutes=1))
        )
        conn.execute(
            sa.text(
                "INSERT INTO drift_events (created_at, model, source, payload, status, "
                "status_reason, updated_at) VALUES ('x', :m, 'sql', '[', 'new', '', 'y')"
            ),
            {"m": MODEL},
        )
    counts = events_by_status(MODEL)
    assert {s: c["count"] for s, c in counts.items()} == {
        "new": 2,
        "emitted": 1,
        "suppressed": 1,
        "rejected": 1,
    }
    assert counts["emitted"]["oldest_age"] == "3h"
    code, out = _cli("events", "--json")  # the unreadable row is listed, not a traceback
    assert code == 0 and any("payload is not JSON" in r["reason"] for r in json.loads(out))


def test_status_shows_the_event_counts(driftline_home: Path) -> None:
    _queue()
    code, out = _cli("status", "--model", MODEL)
    assert code == 0, out
    line = next(line for line in out.splitlines() if line.strip().startswith("drift events:"))
    assert "new 1 (oldest " in line and "emitted 1 (oldest " in line
    assert "suppressed 1" in line and "rejected 1" in line
    code, out = _cli("status", "--model", MODEL, "--json")
    (entry,) = json.loads(out)
    assert entry["drift_events_by_status"]["emitted"]["count"] == 1

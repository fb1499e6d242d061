"""A monitoring store with known rows, and what the exporter must make of them.

Written through driftline.monitoring (the same calls the DAGs make), so the exporter's tests
read rows shaped exactly as production writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from driftline import monitoring

MODEL = "fraud_detection"
OTHER = "churn"
EVENTS = {"new": 3, "emitted": 2, "consumed": 4, "suppressed": 1, "rejected": 1}
COLUMNS = {
    "amount": {"score": 0.3125, "method": "wasserstein", "threshold": 0.1, "drifted": True},
    "channel": {"score": 0.046875, "method": "jensenshannon", "threshold": 0.1, "drifted": False},
}
PREDICTION = {
    "score": 0.0625,
    "method": "psi",
    "threshold": 0.2,
    "drifted": False,
    "served": {
        "rows": 1300,
        "versions": {"5": 1000, "6": 300},
        "arms": {"champion": 1000, "candidate": 300},
        "compared_version": "5",
        "compared_rows": 1000,
        "score": 0.4375,
        "method": "psi",
        "threshold": 0.2,
        "drifted": True,
    },
}


@dataclass
class KnownStore:
    url: str
    times: dict[str, float] = field(default_factory=dict)


def _report(url: str, model: str, *, verdict: str, columns: dict, prediction: dict) -> int:
    day = datetime(2026, 3, 1, tzinfo=UTC)
    return monitoring.record_drift_report(
        url=url,
        model=model,
        champion_version="5",
        window_start=day,
        window_end=day.replace(day=2),
        current_rows=5000,
        reference_rows=20000,
        share_drifted=0.5 if verdict == "drift" else 0.0,
        columns=columns,
        prediction=prediction,
        performance={"decayed": False},
        verdict=verdict,
        reasons=["data drift: 1 of 2 features drifted"] if verdict == "drift" else [],
        report_uri="runs:/x/drift/drift_report.html",
    )


def _audit(url: str, model: str, action: str, version: str | None, **metrics: float) -> float:
    row_id = monitoring.append_audit(
        url=url,
        model=model,
        action=action,
        actor="test",
        challenger_version=version,
        metrics=metrics,
        reasons=[action],
    )
    row = next(r for r in monitoring.audit_log(model, url=url) if r["id"] == row_id)
    created = row["created_at"]
    return (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()


def write_known_rows(url: str) -> KnownStore:
    """Two models' reports, events in every status, decisions and a canary's history."""
    known = KnownStore(url)
    # an older report with other values: only the newest counts
    _report(
        url,
        MODEL,
        verdict="no_drift",
        columns={"amount": {**COLUMNS["amount"], "score": 0.01, "drifted": False}},
        prediction={**PREDICTION, "score": 0.01, "served": {"rows": 0, "versions": {}}},
    )
    _report(url, MODEL, verdict="drift", columns=COLUMNS, prediction=PREDICTION)
    _report(
        url,
        OTHER,
        verdict="no_drift",
        columns={"tenure": {"score": 0.02, "method": "wasserstein", "threshold": 0.1}},
        prediction={"score": 0.01, "method": "psi", "threshold": 0.2, "drifted": False},
    )
    for status, count in EVENTS.items():
        for _ in range(count):
            monitoring.create_drift_event(
                url=url, model=MODEL, source="test", payload={"reason": "x"}, status=status
            )
    _audit(url, MODEL, "promoted", "2")
    _audit(url, MODEL, "rejected", "3")
    _audit(url, MODEL, "rollout_started", "4", share=0.05, step=0)
    _audit(url, MODEL, "rollout_step", "4", share=0.25, step=1)
    known.times["first_abort"] = _audit(url, MODEL, "rollout_aborted", "4", share=0.0, step=-1)
    known.times["retrain"] = _audit(url, MODEL, "rollout_started", "6", share=0.05, step=0)
    known.times["decision"] = _audit(url, MODEL, "rollout_step", "6", share=0.5, step=2)
    # not decisions, and not retrains: they change neither series
    _audit(url, MODEL, "dry_run", "7")
    _audit(url, MODEL, "failed", "7")
    _audit(url, MODEL, "drift_event_suppressed", None)
    _audit(url, OTHER, "manual_promote", "1")
    known.times["other_decision"] = _audit(url, OTHER, "rollback", None)
    return known

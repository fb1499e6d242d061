"""`driftline status` shows a decision's evidence: comparison window, interval, slices."""

from __future__ import annotations

from driftline.status import render


def test_decision_evidence_is_rendered() -> None:
    entry = {
        "model": "fraud_detection",
        "aliases": {"champion": {"version": None}},
        "decisions": [
            {
                "at": "2026-11-26 10:40",
                "action": "inconclusive",
                "version": "2",
                "champion_before": "1",
                "champion_after": "1",
                "actor": "asset:drift://fraud_detection (1 event(s))",
                "run_id": "r",
                "reasons": ["inconclusive: no fair comparison"],
                "comparison_window": ["2026-11-15T00:00:00+00:00", "2026-11-19T00:00:00+00:00"],
                "interval": {
                    "metric": "pr_auc",
                    "gain": 0.031,
                    "low": 0.012,
                    "high": 0.05,
                    "level": 0.9,
                    "resamples": 1000,
                },
                "slices": [
                    {"column": "channel", "value": "online", "challenger": {"roc_auc": 0.9}},
                    {"column": "channel", "value": "chip", "challenger": None},
                ],
            }
        ],
        "drift_events_by_status": {},
        "open_drift_events": [],
        "recent_drift_events": [],
        "last_drift_report": None,
    }
    text = render([entry])
    assert "inconclusive" in text
    assert "compared on [2026-11-15T00:00:00+00:00, 2026-11-19T00:00:00+00:00)" in text
    assert "pr_auc gain +0.0310, 90% interval [+0.0120, +0.0500]" in text
    assert "slices: channel=online, channel=chip (not judged)" in text

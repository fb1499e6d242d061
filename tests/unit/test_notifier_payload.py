"""What a notification says: the kept-champion branch reports the decision it carried out."""

from __future__ import annotations

from typing import Any

import pytest
from driftline_airflow.notifiers import DriftlineNotifier


class _TaskInstance:
    dag_id, run_id, task_id = "fraud_detection_retrain", "manual__1", "keep_champion"

    def __init__(self, result: Any) -> None:
        self.result = result

    def xcom_pull(self, task_ids: str) -> Any:
        return self.result


@pytest.mark.parametrize(
    ("action", "event"),
    [("rejected", "rejection"), ("inconclusive", "inconclusive"), ("dry_run", "rejection")],
)
def test_a_kept_champion_is_notified_as_what_was_decided(action: str, event: str) -> None:
    ti = _TaskInstance({"action": action, "version": "3"})
    payload = DriftlineNotifier(event="rejection").payload({"ti": ti})
    assert payload["event"] == event
    assert payload["result"]["action"] == action
    assert (payload["dag_id"], payload["task_id"]) == (ti.dag_id, ti.task_id)


def test_a_promotion_and_a_failure_keep_their_event() -> None:
    ti = _TaskInstance({"action": "inconclusive"})
    assert DriftlineNotifier(event="promotion").payload({"ti": ti})["event"] == "promotion"
    failed = DriftlineNotifier(event="failure").payload({"ti": ti, "exception": ValueError("x")})
    assert (failed["event"], failed["result"], failed["error"]) == ("failure", None, "x")

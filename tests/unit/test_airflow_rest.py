"""The REST client `make demo` and `driftline simulate` share, against a scripted stack."""

from __future__ import annotations

from typing import Any

import pytest

from driftline import airflow_rest
from driftline.airflow_rest import AirflowRest
from driftline.errors import DriftlineError, Unavailable


class ScriptedStack:
    """Answers requests from a list, in order; records the token of each."""

    url = "http://localhost:1"

    def __init__(self, answers: list[tuple[int, Any] | Exception]) -> None:
        self.answers = answers
        self.tokens: list[str | None] = []
        self.issued = 0

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        self.tokens.append(token)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def token(self, user: str = "admin") -> str:
        self.issued += 1
        return f"token-{self.issued}"


class StepFailed(DriftlineError):
    pass


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(airflow_rest.time, "sleep", lambda seconds: None)


def test_a_busy_metadata_db_is_retried_and_an_expired_token_renewed() -> None:
    stack = ScriptedStack([(500, "database is locked"), (401, "expired"), (200, {"ok": 1})])
    rest = AirflowRest(stack, token="old")
    assert rest.api("GET", "/api/v2/dags") == {"ok": 1}
    assert stack.tokens == ["old", "old", "token-1"]


def test_failures_are_the_callers_kind_and_say_what_answered() -> None:
    rest = AirflowRest(ScriptedStack([(404, {"detail": "no such dag"})]), error=StepFailed)
    with pytest.raises(StepFailed, match=r"GET /api/v2/dags/x answered 404: .*no such dag"):
        rest.api("GET", "/api/v2/dags/x")
    rest = AirflowRest(ScriptedStack([ConnectionRefusedError("refused")]))
    with pytest.raises(Unavailable, match="http://localhost:1 failed: refused"):
        rest.api("GET", "/api/v2/dags")
    rest = AirflowRest(ScriptedStack([(503, "down")] * 4))
    with pytest.raises(Unavailable, match="answered 503"):
        rest.api("GET", "/api/v2/dags")


def test_finished_waits_for_a_final_state_and_new_run_skips_known_ones() -> None:
    run = {"dag_run_id": "r1", "state": "running", "run_type": "manual"}
    stack = ScriptedStack([(200, run), (200, {**run, "state": "failed"})])
    assert AirflowRest(stack).finished("d", "r1")["state"] == "failed"

    known = {"dag_run_id": "old", "run_type": "asset_triggered"}
    manual = {"dag_run_id": "m", "run_type": "manual"}
    fresh = {"dag_run_id": "new", "run_type": "asset_triggered"}
    stack = ScriptedStack(
        [(200, {"dag_runs": [manual, known]}), (200, {"dag_runs": [fresh, known]})]
    )
    rest = AirflowRest(stack)
    assert rest.new_run("d", {"old"}, "asset_triggered") == fresh


def test_a_wait_that_never_ends_times_out_naming_what_it_waited_for() -> None:
    rest = AirflowRest(ScriptedStack([]), error=StepFailed, timeout=0.01)
    with pytest.raises(StepFailed, match="timed out after 0 s waiting for the retrain"):
        rest.wait("the retrain", lambda: None)

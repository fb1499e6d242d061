"""`make up` serves: the stack's scoring service answers with the registry's champion, shows
in the component health, and follows the champion alias when it moves."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from driftline import offline, registry
from driftline.settings import get_settings
from driftline.stack import SERVE, component_health
from tests.e2e.conftest import MODEL, RunningStack, wait_for


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_stack_serves_the_registry_champion(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    rows = {row["component"]: row for row in component_health()}
    assert rows[SERVE]["process"] == "running"
    assert rows[SERVE]["health"] in ("ok", "degraded"), rows[SERVE]
    settings = get_settings()
    newest = offline.list_days(settings.offline_dir)[-1]
    transaction = offline.read_table(settings.offline_dir, "transactions", [newest]).to_pylist()[0]
    body = {
        key: transaction[key]
        for key in ("card_id", "merchant_id", "amount", "hour", "distance_from_home_km")
    }
    body |= {
        "merchant_category": transaction["merchant_category"],
        "channel": transaction["channel"],
        "event_timestamp": transaction["event_timestamp"].isoformat(),
    }
    champion = registry.alias_version(MODEL, registry.CHAMPION)

    def served_champion() -> dict[str, Any] | None:
        answer = _post(f"{stack.serve_url}/v1/models/{MODEL}/score", body)
        return answer if answer["version"] == champion else None

    answer = wait_for("the service to serve the champion", served_champion, timeout=30)
    assert answer["arm"] == "champion"
    assert 0.0 <= answer["score"] <= 1.0


def test_airflow_signs_task_tokens_with_a_full_length_key(running_stack: RunningStack) -> None:
    """By now `up` has run a retrain: every task got a token from the execution API. With
    Airflow's own 16-byte key PyJWT warned on each one (InsecureKeyLengthWarning)."""
    log = (running_stack.stack.log_dir / "api-server.log").read_text()
    assert "Task started" in log  # tokens were issued and checked
    assert "InsecureKeyLengthWarning" not in log

"""The scoring service in the production profile: Feast features read from Redis through the
SQL registry on PostgreSQL, the champion loaded from the closed MLflow server with the
workers' account."""

from __future__ import annotations

from typing import Any

import httpx

from driftline import offline, registry
from driftline.settings import get_settings
from driftline.stack import SERVE, component_health
from tests.e2e.conftest import wait_for
from tests.production.conftest import Production

MODEL = "fraud_detection"


def test_the_service_scores_with_redis_features_and_the_closed_registry(
    production: Production,
) -> None:
    settings = get_settings()
    assert settings.feast_redis and settings.feast_yaml.name == "feature_store.production.yaml"
    rows = {row["component"]: row for row in component_health()}
    assert rows[SERVE]["process"] == "running", rows
    newest = offline.list_days(settings.offline_dir)[-1]
    transaction = offline.read_table(settings.offline_dir, "transactions", [newest]).to_pylist()[-1]
    body = {
        key: transaction[key]
        for key in (
            "card_id",
            "merchant_id",
            "amount",
            "hour",
            "distance_from_home_km",
            "merchant_category",
            "channel",
        )
    } | {"event_timestamp": transaction["event_timestamp"].isoformat()}
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    with httpx.Client(base_url=production.stack.serve_url or "", timeout=30) as client:

        def answered() -> dict[str, Any] | None:
            response = client.post(f"/v1/models/{MODEL}/score", json=body)
            answer = response.json()
            return answer if response.status_code == 200 and answer["version"] == champion else None

        answer = wait_for("the champion served from Redis features", answered, timeout=60)
        # the newest day was materialized into Redis by `up`: every Feast value is there
        assert answer["absent_features"] == {}, answer
        assert client.get("/health").json()["models"][MODEL]["registry_error"] is None

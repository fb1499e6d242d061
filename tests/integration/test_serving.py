"""The scoring service through real HTTP: `driftline serve` started as the stack's ``serve``
component (uvicorn, a free port), the real Feast online store filled by driftline's
materialize, the real MLflow registry holding versions trained by driftline's retrain stages
on a small generated world.

Versions: v1 is the champion of a full retrain (build, validate, train, evaluate, promote);
v2, v3 and v4 are retrained by the train stage on v1's training set (new versions, the same
data). v4's artifact is then corrupted, so it cannot be loaded.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from driftline import offline, predlog, registry, retrain, training
from driftline.datagen import generate
from driftline.feature_store import apply_repo, get_store, materialize_window
from driftline.lineage import RunContext
from driftline.settings import get_settings
from driftline.specs import load_spec
from driftline.stack import (
    SERVE,
    Stack,
    _group_alive,
    component_health,
    free_port,
    port_is_free,
)
from tests.conftest import EARLY_START, SMALL, isolate_environment
from tests.e2e.conftest import wait_for
from tests.prometheus import running_prometheus

MODEL = "fraud_detection"
AS_OF = datetime(2026, 2, 10, tzinfo=UTC)
POLL_SECONDS = 2.0
REQUEST_FEATURES = ["amount", "hour", "distance_from_home_km", "merchant_category", "channel"]


@dataclass
class World:
    home: Path
    stack: Stack
    client: httpx.Client
    # the online store holds the newest row of each entity up to here (materialization end)
    online_as_of: datetime
    newest_day: pd.DataFrame  # the transactions of the newest day

    def score(self, row: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"/v1/models/{MODEL}/score", json=row)

    def batch(self, rows: list[dict[str, Any]]) -> httpx.Response:
        return self.client.post(f"/v1/models/{MODEL}/score/batch", json={"rows": rows})

    def served(self) -> dict[str, Any]:
        return self.client.get("/v1/models").json()["models"][0]

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series of /metrics (0 when absent)."""
        text = self.client.get("/metrics").text
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _request(row: pd.Series, event_timestamp: datetime) -> dict[str, Any]:
    return {
        "card_id": int(row.card_id),
        "merchant_id": int(row.merchant_id),
        **{name: row[name] for name in REQUEST_FEATURES},
        "hour": int(row.hour),
        "transaction_id": str(row.transaction_id),
        "event_timestamp": event_timestamp.isoformat(),
    }


def _wait_serving(world: World, alias: str, version: str | None, timeout: float = 60) -> None:
    def loaded() -> bool:
        current = world.served()["loaded"][alias]
        return (current or {}).get("version") == version

    wait_for(f"{alias} v{version} to be served", loaded, timeout, interval=0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("serving") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        patch.setenv("DRIFTLINE_SERVE_POLL_SECONDS", str(POLL_SECONDS))
        settings = get_settings()
        generate(offline_dir=settings.offline_dir, days=50, start=EARLY_START, **SMALL)
        apply_repo()
        first = retrain.run_all(MODEL, as_of=AS_OF, context=RunContext(run_id="v1"))
        assert registry.alias_version(MODEL, registry.CHAMPION) == "1", first["decision"]
        for name in ("v2", "v3", "v4"):
            retrain.train(MODEL, first["run_dir"], context=RunContext(run_id=name))
        _corrupt(MODEL, "4")
        newest = offline.list_days(settings.offline_dir)[-1]
        start = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
        materialize_window(start, start + timedelta(days=1))
        newest_day = offline.read_table(settings.offline_dir, "transactions", [newest]).to_pandas()

        stack = Stack(settings=settings, port=free_port(), serve_port=free_port())
        try:
            stack.start((SERVE,))
            stack.wait_serving(timeout=180)
            with httpx.Client(base_url=stack.serve_url, timeout=30) as client:
                yield World(home, stack, client, start + timedelta(days=1), newest_day)
        finally:
            stack.stop()


def _corrupt(model: str, version: str) -> None:
    """Overwrite the version's booster file with bytes XGBoost cannot read."""
    client = registry.client()
    source = client.get_model_version(model, version).source
    model_id = source.removeprefix("models:/")
    location = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    boosters = [p for p in location.rglob("model.*") if p.is_file()]
    assert boosters, f"no booster file under {location}"
    for path in boosters:
        path.write_text("this is not an XGBoost model")


def test_the_stack_runs_the_service_as_a_component(world: World) -> None:
    rows = {row["component"]: row for row in component_health(world.stack.settings)}
    assert rows[SERVE]["process"] == "running"
    assert rows[SERVE]["health"] == "ok", world.client.get("/health").json()
    assert world.client.get("/ready").json()["ready"] is True


def test_scores_equal_the_offline_path_for_the_same_entities_and_time(world: World) -> None:
    """Parity. The online store holds, per entity, the newest row materialization loaded
    (window ending at ``online_as_of``); Feast's point-in-time join at that same instant
    returns that row for every entity that has a row inside the window. So rows of the
    newest day, asked at ``online_as_of``, must score the same both ways; asked 8 days later,
    every Feast value is past its view's TTL on both paths (missing -> NaN)."""
    spec = load_spec(MODEL)
    sample = world.newest_day.drop_duplicates("card_id").head(60)
    later = world.online_as_of + timedelta(days=8)
    moments = [world.online_as_of] * 40 + [later] * 20
    rows = [
        _request(row, moment) for (_, row), moment in zip(sample.iterrows(), moments, strict=True)
    ]
    response = world.batch(rows)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert {r["version"] for r in results} == {"1"}

    entity = pd.DataFrame(
        {
            "card_id": [r["card_id"] for r in rows],
            "merchant_id": [r["merchant_id"] for r in rows],
            "event_timestamp": pd.to_datetime([r["event_timestamp"] for r in rows], utc=True),
            **{name: [r[name] for r in rows] for name in REQUEST_FEATURES},
        }
    )
    store = get_store()
    joined = store.get_historical_features(
        entity_df=entity, features=store.get_feature_service(spec.feature_service)
    ).to_df()
    joined = entity[["card_id", "event_timestamp"]].merge(joined, on=["card_id", "event_timestamp"])
    offline_scores = training.predict(registry.load_booster(MODEL, "1"), joined, spec)
    served_scores = np.array([r["score"] for r in results])
    np.testing.assert_allclose(served_scores, offline_scores, rtol=0, atol=1e-7)

    feast_names = [ref.split(":")[1] for ref in spec.feast_features]
    # every entity of the newest day is in the online store (a null value is a value)
    assert all(not result["absent_features"] for result in results[:40])
    for result in results[40:]:
        assert set(result["absent_features"]) == set(feast_names), result
        assert set(result["absent_features"].values()) == {"expired"}
    assert joined.tail(20)[feast_names].isna().all().all()
    # the single-row endpoint answers the same as the batch
    single = world.score(rows[0]).json()
    assert single["score"] == pytest.approx(results[0]["score"], abs=1e-9)


def test_an_alias_moved_under_load_fails_no_request_and_switches_within_a_poll_and_a_load(
    world: World,
) -> None:
    rate, seconds, move_at = 50, 10.0, 3.0
    rows = [_request(row, world.online_as_of) for _, row in world.newest_day.head(200).iterrows()]
    answers: list[tuple[float, float, int, str | None]] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        sent = time.monotonic()
        try:
            response = world.client.post(f"/v1/models/{MODEL}/score", json=rows[index % 200])
            status = response.status_code
            version = response.json().get("version") if status == 200 else None
        except httpx.HTTPError:
            status, version = -1, None
        with lock:
            answers.append((sent, time.monotonic(), status, version))

    moved = 0.0
    with ThreadPoolExecutor(max_workers=16) as pool:
        begin = time.monotonic()
        for index in range(int(rate * seconds)):
            due = begin + index / rate  # open loop: requests leave on schedule, answered or not
            if not moved and due - begin >= move_at:
                registry.set_alias(MODEL, registry.CHAMPION, "2")
                moved = time.monotonic()
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(send, index)
    try:
        failed = [a for a in answers if a[2] != 200]
        assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
        assert len(answers) == int(rate * seconds)
        first_new = min(done for sent, done, _, version in answers if version == "2")
        switch = first_new - moved
        load = world.served()["loaded"]["champion"]["load_seconds"]
        bound = POLL_SECONDS + load + 1.0
        print(
            f"alias moved -> v2 served after {switch:.2f} s (load {load:.2f} s, bound {bound:.2f})"
        )
        assert switch <= bound, (switch, load)
        late = [a for a in answers if a[0] > first_new and a[3] != "2"]
        assert not late, f"requests sent after v2 served were answered by v1: {late[:5]}"
    finally:
        registry.set_alias(MODEL, registry.CHAMPION, "1")
        _wait_serving(world, "champion", "1")


def test_a_version_that_cannot_be_loaded_leaves_the_previous_one_serving(world: World) -> None:
    row = _request(world.newest_day.iloc[0], world.online_as_of)
    failures_before = world.metric(
        "driftline_serving_model_load_failures_total", model=MODEL, alias="champion"
    )
    registry.set_alias(MODEL, registry.CHAMPION, "4")
    try:

        def failed() -> list[dict]:
            health = world.client.get("/health").json()
            return health["models"][MODEL]["load_failures"]

        failures = wait_for("the load failure in /health", failed, timeout=60, interval=0.5)
        assert failures[0]["alias"] == "champion" and failures[0]["version"] == "4", failures
        health = world.client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["models"][MODEL]["champion"] == "1"
        for _ in range(20):
            response = world.score(row)
            assert response.status_code == 200, response.text
            assert response.json()["version"] == "1"
        assert world.served()["registry_aliases"]["champion"] == "4"
        assert (
            world.metric("driftline_serving_model_load_failing", model=MODEL, alias="champion") == 1
        )
        assert (
            world.metric(
                "driftline_serving_model_load_failures_total", model=MODEL, alias="champion"
            )
            >= failures_before + 1
        )
        assert world.metric("driftline_serving_loaded_version", model=MODEL, alias="champion") == 1
    finally:
        registry.set_alias(MODEL, registry.CHAMPION, "1")
    wait_for(
        "the failure to clear",
        lambda: not world.client.get("/health").json()["models"][MODEL]["load_failures"],
        timeout=30,
        interval=0.5,
    )


GOOD = {
    "card_id": 7,
    "merchant_id": 3,
    "amount": 42.5,
    "hour": 13,
    "distance_from_home_km": 3.2,
    "merchant_category": "grocery",
    "channel": "chip",
}


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        ({"amount": "42.5"}, "amount", '"42.5"'),  # wrong dtype
        ({"hour": 7.5}, "hour", "7.5"),  # a float for an int64 feature
        ({"merchant_category": "casino"}, "merchant_category", '"casino"'),  # undeclared
        ({"amount": -3.0}, "amount", "-3.0"),  # out of validation.ranges
        ({"hour": 24}, "hour", "24"),
        ({"merchant_id": None}, "merchant_id", None),  # missing entity key
        ({"colour": "red"}, "colour", '"red"'),  # not a field of the spec
    ],
)
def test_a_bad_request_is_422_naming_the_field_and_value(
    world: World, change: dict[str, Any], field: str, value: str | None
) -> None:
    before = world.metric("driftline_serving_errors_total", model=MODEL, reason="invalid")
    body = {**GOOD, **change}
    if change.get(field, "") is None:
        del body[field]
    response = world.score(body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"{field}:" in detail, detail
    if value is not None:
        assert f"(got {value})" in detail, detail
    else:
        assert "Field required" in detail, detail
    assert [e["field"] for e in response.json()["errors"]] == [field]
    after = world.metric("driftline_serving_errors_total", model=MODEL, reason="invalid")
    assert after == before + 1


def test_batches_are_checked_row_by_row_and_limited(world: World) -> None:
    response = world.batch([GOOD, {**GOOD, "amount": 0}])
    assert response.status_code == 422
    assert "rows[1].amount" in response.json()["detail"], response.text
    limit = get_settings().serve_max_batch
    response = world.batch([GOOD] * (limit + 1))
    assert response.status_code == 413
    assert f"limit of {limit} rows" in response.json()["detail"]
    assert "DRIFTLINE_SERVE_MAX_BATCH" in response.json()["detail"]
    response = world.client.post("/v1/models/fraud_detecton/score", json=GOOD)
    assert response.status_code == 404
    assert "fraud_detection" in response.json()["detail"]


def _contract_fraction(model: str, key: object) -> float:
    """The canary contract's stable hash, written out here independently of the service."""
    return int.from_bytes(hashlib.sha256(f"{model}:{key}".encode()).digest()[:8], "big") / 2**64


def test_canary_routing_follows_the_stable_hash_and_is_logged(world: World) -> None:
    share = 0.3
    registry.set_tags(MODEL, "3", {"rollout_share": share})
    registry.set_alias(MODEL, "candidate", "3")
    try:
        _wait_serving(world, "candidate", "3")
        assert world.served()["rollout_share"] == share
        cards = list(range(400))
        rows = [{**GOOD, "card_id": card, "transaction_id": f"route-{card}"} for card in cards]
        results = world.batch(rows).json()["results"]
        again = world.batch(rows[:100]).json()["results"]
        expected = [
            "candidate" if _contract_fraction(MODEL, c) < share else "champion" for c in cards
        ]
        assert [r["arm"] for r in results] == expected
        assert [r["arm"] for r in again] == expected[:100]  # the same card, the same arm
        assert {r["version"] for r in results if r["arm"] == "candidate"} == {"3"}
        assert {r["version"] for r in results if r["arm"] == "champion"} == {"1"}
        observed = expected.count("candidate") / len(cards)
        assert abs(observed - share) < 0.07, observed

        wanted = {r["request_id"]: r for r in results}

        def logged() -> tuple[pd.DataFrame] | None:
            frame = predlog.read(get_settings().offline_dir, MODEL)
            frame = frame[frame["request_id"].isin(wanted)]
            return (frame,) if len(frame) == len(wanted) else None

        (frame,) = wait_for("the routed rows in the prediction log", logged, 15, interval=0.5)
        for row in frame.itertuples():
            answer = wanted[row.request_id]
            assert (row.arm, row.version, row.status) == (answer["arm"], answer["version"], "ok")
            assert row.score == pytest.approx(answer["score"])
            assert row.transaction_id == f"route-{row.card_id}"
    finally:
        registry.set_alias(MODEL, "candidate", None)
    _wait_serving(world, "candidate", None)
    response = world.score(
        {**GOOD, "card_id": next(c for c in range(400) if expected[c] == "candidate")}
    )
    assert response.json()["arm"] == "champion"


def test_a_real_prometheus_counts_exactly_the_requests_scored(world: World, tmp_path: Path) -> None:
    """A real Prometheus scraping the service: after a known number of good and bad
    requests, PromQL returns the request and error counts, the latency histogram's count and
    the loaded version, by model, version and arm."""
    version = world.served()["loaded"]["champion"]["version"]
    ok = {"model": MODEL, "version": version, "arm": "champion"}
    ok_requests = {**ok, "endpoint": "score", "outcome": "ok"}
    target = world.stack.serve_url.removeprefix("http://")
    with running_prometheus(tmp_path / "prometheus", {"driftline-serving": [target]}) as prom:
        prom.wait_for_targets()

        def scraped(name: str, labels: dict[str, str]) -> float:
            """The value Prometheus holds once it has caught up with the service's /metrics."""
            selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
            direct = world.metric(name, **labels)
            return prom.wait_for(
                f"{name}{{{selector}}} = {direct}",
                lambda: prom.value(f"{name}{{{selector}}}") == direct and direct,
                timeout=30,
            )

        before = {
            "requests": world.metric("driftline_serving_requests_total", **ok_requests),
            "latency": world.metric(
                "driftline_serving_request_seconds_count", **ok, endpoint="score"
            ),
            "invalid": world.metric(
                "driftline_serving_errors_total", model=MODEL, reason="invalid"
            ),
        }
        for _, row in world.newest_day.head(30).iterrows():
            response = world.score(_request(row, world.online_as_of))
            assert response.status_code == 200, response.text
        for _ in range(4):
            assert world.score({**GOOD, "hour": 24}).status_code == 422

        requests = scraped("driftline_serving_requests_total", ok_requests)
        assert requests == before["requests"] + 30
        latency = scraped("driftline_serving_request_seconds_count", {**ok, "endpoint": "score"})
        assert latency == before["latency"] + 30
        invalid = scraped("driftline_serving_errors_total", {"model": MODEL, "reason": "invalid"})
        assert invalid == before["invalid"] + 4
        loaded = prom.value(f'driftline_serving_loaded_version{{model="{MODEL}",alias="champion"}}')
        assert loaded == float(version)
        # the alert rule's error ratio over what was just scored: no scoring error
        failed = prom.query(
            f'driftline_serving_errors_total{{model="{MODEL}",reason=~"features|scoring"}}'
        )
        assert sum(sample["value"] for sample in failed) == 0, failed


def test_metrics_still_answer_once_the_process_that_started_the_service_is_gone(
    world: World,
) -> None:
    """`make up` starts the service and exits. Feast's import (in that process, as in this
    one) points PROMETHEUS_MULTIPROC_DIR at a temporary directory of its own and removes it
    at exit: a service that inherited the variable answered /metrics with a 500 from then
    on. Removing this process's directory, as its exit would, must leave /metrics whole."""
    import shutil

    import feast.metrics

    own = feast.metrics._prometheus_mp_dir
    assert own and Path(own).is_dir()
    response = world.score(_request(world.newest_day.iloc[0], world.online_as_of))
    assert response.status_code == 200, response.text
    shutil.rmtree(own)
    try:
        metrics = world.client.get("/metrics")
        assert metrics.status_code == 200, metrics.text[:300]
        assert world.metric("driftline_serving_requests_total", model=MODEL) > 0
    finally:
        Path(own).mkdir()


def test_stopping_the_stack_stops_the_service(world: World) -> None:
    pgid = world.stack.recorded()["processes"][SERVE]
    assert world.stack.stop() == [SERVE]
    assert world.stack.component_state(SERVE) == "not recorded"
    assert not _group_alive(pgid)  # no process of its group runs (zombies are being reaped)
    assert port_is_free(world.stack.serve_port or 0)

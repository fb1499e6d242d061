"""The whole loop on the production profile: PostgreSQL, Redis and an MLflow tracking
server, with real processes; racing promotions; faults."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from driftline import monitoring, registry, retrain
from driftline.demo import Demo
from driftline.errors import Unavailable
from driftline.feature_store import get_store
from driftline.lineage import RunContext
from driftline.settings import get_settings
from tests.e2e.conftest import wait_for
from tests.production.conftest import Production, pg_url

MODEL = "fraud_detection"
RETRAIN = f"{MODEL}_retrain"


def _finished(production: Production, run_id: str, what: str, *, timeout: float) -> str:
    """Wait for the run to end; its final state."""

    def ended() -> str | None:
        rows = production.sql("airflow", "SELECT state FROM dag_run WHERE run_id=%s", run_id)
        return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

    return wait_for(what, ended, timeout=timeout, interval=3)


def _runs(production: Production) -> list[dict]:
    token = production.stack.token("admin")
    status, body = production.stack.api(
        "GET", f"/api/v2/dags/{RETRAIN}/dagRuns?order_by=-run_after&limit=50", token=token
    )
    assert status == 200, body
    return body["dag_runs"]


def test_the_loop_runs_on_postgres_redis_and_an_mlflow_server(production: Production) -> None:
    settings = get_settings()
    assert settings.mlflow_tracking_uri.startswith("http://")
    # `up` triggered the first retrain through the api-server's REST API; it finished on PostgreSQL
    first = production.sql(
        "airflow", "SELECT run_id, state FROM dag_run WHERE dag_id = %s ORDER BY id", RETRAIN
    )
    assert first and first[0][1] == "success"

    said: list[str] = []
    assert Demo(production.stack, say=said.append).run(), "\n".join(said)

    # the model version, over HTTP from the tracking server
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    version = registry.version_info(MODEL, champion)
    assert version.tags["validation"] == "passed" and version.tags["decision"] == "promoted"
    # ... from a closed server: without the workers' account the alias does not move
    anonymous = urllib.request.Request(
        f"{settings.mlflow_tracking_uri}/api/2.0/mlflow/registered-models/alias",
        method="POST",
        data=json.dumps({"name": MODEL, "alias": registry.CHAMPION, "version": "1"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(anonymous, timeout=30)
    assert refused.value.code == 401
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    # online features, served from Redis under this run's Feast project
    store = get_store()
    assert store.config.online_store.type == "redis"
    online = store.get_online_features(
        features=["card_features:card_txn_count_24h", "merchant_features:merchant_txn_count_7d"],
        entity_rows=[{"card_id": card, "merchant_id": card % 100} for card in range(50)],
    ).to_dict()
    assert sum(v is not None for v in online["card_txn_count_24h"]) > 10
    assert sum(v is not None for v in online["merchant_txn_count_7d"]) > 10
    # audit rows and the drift chain, in the monitoring store's PostgreSQL database
    actions = [
        row[0]
        for row in production.sql("monitoring", "SELECT action FROM promotion_audit ORDER BY id")
    ]
    assert actions[0] == "promoted" and len(actions) >= 2
    chain = production.sql(
        "monitoring",
        "SELECT e.status, e.consumed_by_run_id, r.verdict FROM drift_events e JOIN drift_reports r ON r.id = e.report_id",
    )
    assert ("consumed", chain[-1][1], "drift") == chain[-1]


def test_an_outside_writers_row_starts_a_retrain(production: Production) -> None:
    """The drift-event writer role (INSERT on three columns of drift_events, nothing else)
    is enough for an outside system to start a retrain through the watcher."""
    import psycopg

    from tests.production.conftest import PG

    known = {run["dag_run_id"] for run in _runs(production)}
    with psycopg.connect(
        host=PG["host"],
        port=PG["port"],
        user=production.roles["writer"],
        dbname=production.databases["monitoring"],
        autocommit=True,
    ) as writer:
        writer.execute(
            "INSERT INTO drift_events (model, source, payload) VALUES (%s, %s, %s)",
            (
                MODEL,
                "outside-monitor",
                json.dumps({"reason": "outside monitor", "share_drifted": 0.5}),
            ),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("UPDATE drift_events SET status = 'consumed'")

    def started() -> dict | None:
        return next(
            (
                run
                for run in _runs(production)
                if run["dag_run_id"] not in known and run["run_type"] == "asset_triggered"
            ),
            None,
        )

    run = wait_for("a retrain started by the writer's row", started, timeout=240, interval=2)
    state = _finished(production, run["dag_run_id"], "the run to finish", timeout=600)
    assert state == "success"
    consumed = production.sql(
        "monitoring",
        "SELECT status, consumed_by_run_id FROM drift_events WHERE source = 'outside-monitor'",
    )
    assert consumed == [("consumed", run["dag_run_id"])]


def test_two_racing_promotions_one_wins_the_other_is_refused(production: Production) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    validated = {
        str(v.version)
        for v in registry.client().search_model_versions(
            f"name='{MODEL}' and tags.validation='passed'"
        )
    } - {champion}
    while len(validated) < 2:
        result = retrain.run_all(
            MODEL,
            as_of=_newest_as_of(),
            context=RunContext(run_id=f"race-{len(validated)}", dry_run=True),
        )
        validated.add(result["decision"]["challenger_version"])
    first, second = sorted(validated, key=int)[:2]

    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.cli",
                "promote",
                "--version",
                version,
                "--reason",
                f"race {version}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in (first, second)
    ]
    outcomes = [(racer.wait(timeout=300), *racer.communicate()) for racer in racers]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 4], outcomes  # the loser's compare-and-set lost: Conflict
    loser_error = next(err for code, _, err in outcomes if code == 4)
    assert "compare-and-set refused" in loser_error
    winner = first if outcomes[0][0] == 0 else second
    assert registry.alias_version(MODEL, registry.CHAMPION) == winner
    audit = monitoring.audit_log(MODEL, limit=2)
    assert sorted(row["action"] for row in audit) == ["aborted", "manual_promote"]
    aborted = next(row for row in audit if row["action"] == "aborted")
    assert "compare-and-set refused" in aborted["reasons"][0]
    # put the champion back for the next tests
    subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "promote",
            "--version",
            champion,
            "--reason",
            "restore",
        ],
        check=True,
    )


def _newest_as_of():
    from datetime import UTC, datetime, timedelta

    from driftline import offline

    newest = offline.list_days(get_settings().offline_dir)[-1]
    return datetime(newest.year, newest.month, newest.day, tzinfo=UTC) + timedelta(days=1)


def test_promotion_with_the_mlflow_server_down_moves_nothing_and_is_audited(
    production: Production,
) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    result = retrain.run_all(
        MODEL, as_of=_newest_as_of(), context=RunContext(run_id="fault-candidate", dry_run=True)
    )
    directory, candidate = result["run_dir"], result["decision"]["challenger_version"]
    import json
    from pathlib import Path

    decision = Path(directory) / "decision.json"
    payload = json.loads(decision.read_text())
    payload.update(promote=True, outcome="promote")
    decision.write_text(json.dumps(payload))
    champion_state = monitoring.read_state(MODEL).champion_version

    production.stack.stop_component("mlflow-ui")
    try:
        # a dead MLflow server is an outage (Unavailable: Airflow retries), never bad input
        with pytest.raises(Unavailable):
            retrain.promote(MODEL, directory, context=RunContext(run_id="fault-promote"))
    finally:
        production.stack.restart_mlflow()
        wait_for(
            "the MLflow server", lambda: _healthy(get_settings().mlflow_tracking_uri), timeout=120
        )
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert monitoring.read_state(MODEL).champion_version == champion_state == champion
    audit = monitoring.audit_log(MODEL)[0]
    assert audit["action"] == "failed" and audit["run_id"] == "fault-promote"
    assert "MLflow" in audit["reasons"][0] or "Connection" in audit["reasons"][0]

    # the retry, with the server back, promotes completely
    retrain.promote(MODEL, directory, context=RunContext(run_id="fault-promote"))
    assert registry.alias_version(MODEL, registry.CHAMPION) == candidate
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == champion


def test_mlflow_server_stopped_during_a_retrain_task_retries(production: Production) -> None:
    known = {run["dag_run_id"] for run in _runs(production)}
    token = production.stack.token("admin")
    status, run = production.stack.api(
        "POST",
        f"/api/v2/dags/{RETRAIN}/dagRuns",
        {"logical_date": None, "conf": {"dry_run": True, "reason": "fault drill"}},
        token=token,
    )
    assert status == 200 and run["dag_run_id"] not in known

    def train_running() -> bool:
        rows = production.sql(
            "airflow",
            "SELECT state FROM task_instance WHERE dag_id=%s AND run_id=%s AND task_id='train'",
            RETRAIN,
            run["dag_run_id"],
        )
        return bool(rows) and rows[0][0] == "running"

    wait_for("train to start", train_running, timeout=300, interval=0.5)
    production.stack.stop_component("mlflow-ui")
    try:

        def retrying() -> bool:
            rows = production.sql(
                "airflow",
                "SELECT state, try_number FROM task_instance WHERE dag_id=%s AND run_id=%s AND task_id='train'",
                RETRAIN,
                run["dag_run_id"],
            )
            return bool(rows) and rows[0][0] in ("up_for_retry", "failed")

        wait_for("train to fail and wait for its retry", retrying, timeout=300, interval=1)
    finally:
        production.stack.restart_mlflow()
    state = _finished(production, run["dag_run_id"], "the run to finish", timeout=600)
    assert state == "success"
    tries = production.sql(
        "airflow",
        "SELECT try_number FROM task_instance WHERE dag_id=%s AND run_id=%s AND task_id='train'",
        RETRAIN,
        run["dag_run_id"],
    )[0][0]
    assert tries >= 2
    versions = registry.client().search_model_versions(
        f"name='{MODEL}' and tags.airflow_run_id='{run['dag_run_id']}'"
    )
    assert len(versions) == 1  # the retry registered one version, not two


def _task(production: Production, run_id: str, task_id: str) -> tuple[str, int, int | None]:
    rows = production.sql(
        "airflow",
        "SELECT state, try_number, pid FROM task_instance "
        "WHERE dag_id=%s AND run_id=%s AND task_id=%s",
        RETRAIN,
        run_id,
        task_id,
    )
    return rows[0] if rows else ("none", 0, None)


def test_a_celery_worker_killed_mid_task_has_its_task_retried_by_the_other(
    production: Production,
) -> None:
    import psutil

    stack = production.stack
    workers = stack.celery_workers()
    assert len(workers) == 2 and all(stack.component_state(w) == "running" for w in workers)
    token = stack.token("admin")
    status, run = stack.api(
        "POST",
        f"/api/v2/dags/{RETRAIN}/dagRuns",
        {"logical_date": None, "conf": {"dry_run": True, "reason": "worker crash drill"}},
        token=token,
    )
    assert status == 200, run
    run_id = run["dag_run_id"]

    def train_pid() -> int | None:
        state, _, pid = _task(production, run_id, "train")
        return pid if state == "running" and pid else None

    pid = wait_for("train to run on a worker", train_pid, timeout=300, interval=0.5)
    groups = stack.recorded()["processes"]
    owner = next(
        name
        for name in workers
        if pid in {child.pid for child in psutil.Process(groups[name]).children(recursive=True)}
    )
    survivor = next(name for name in workers if name != owner)
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    stack.kill_component(owner)  # the worker machine dies: its group and the task with it
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    try:
        state = _finished(
            production, run_id, "the run to finish on the surviving worker", timeout=900
        )
        assert stack.component_state(owner) != "running"
        assert stack.component_state(survivor) == "running"
        train = _task(production, run_id, "train")
        assert (state, train[0]) == ("success", "success"), production.sql(
            "airflow",
            "SELECT task_id, state, try_number FROM task_instance WHERE run_id=%s",
            run_id,
        )
        assert train[1] >= 2  # the killed try, then the retry on the survivor
        versions = registry.client().search_model_versions(
            f"name='{MODEL}' and tags.airflow_run_id='{run_id}'"
        )
        assert len(versions) == 1  # one version, whichever try registered it
    finally:
        stack.restart_component(owner)


def _healthy(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def test_check_names_the_service_and_the_setting(production: Production) -> None:
    import os

    env = {
        **os.environ,
        "DRIFTLINE_MONITORING_DB_URL": pg_url("driftline_test_no_such_db"),
        "DRIFTLINE_FEAST_REDIS": "127.0.0.1:1,db=0",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://no_such_role@127.0.0.1:5432/postgres",
    }
    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3  # Unavailable
    err = result.stderr
    assert (
        "monitoring store (DRIFTLINE_MONITORING_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432/driftline_test_no_such_db)"
        in err
    )
    assert 'database "driftline_test_no_such_db" does not exist' in err
    assert "Feast online store (Redis) (DRIFTLINE_FEAST_REDIS=127.0.0.1:1,db=0)" in err
    assert (
        "Airflow metadata database (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in err
        and 'role "no_such_role" does not exist' in err
    )
    # the healthy stack passes the same check
    healthy = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert healthy.returncode == 0, healthy.stderr

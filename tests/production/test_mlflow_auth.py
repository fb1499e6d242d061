"""The production profile's MLflow tracking server is closed (issue 12, item 1).

A real ``mlflow server --app-name basic-auth``, started by the same script compose runs
(``deploy/mlflow/start-mlflow.sh``), on a unique PostgreSQL database that holds both the
tracking store and the auth tables; its secrets are generated here. Without credentials, with
a wrong password, or as another (non-admin) account, registering a version or moving an alias
is refused; with the workers' account, made the way airflow-init makes it (``driftline
mlflow-account``), driftline's own registry operations work: log and register a model as
``train`` does, load it back, and promote it through the compare-and-set.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftline.settings import REPO_ROOT
from driftline.stack import free_port
from tests.conftest import isolate_environment
from tests.e2e.conftest import wait_for
from tests.production.conftest import create_databases, drop_databases, pg_url, require_services

MODEL = "fraud_detection"
START_SCRIPT = REPO_ROOT / "deploy" / "mlflow" / "start-mlflow.sh"


@dataclass
class ClosedMlflow:
    uri: str
    admin_password: str
    database: str
    log: Path

    def request(
        self, method: str, path: str, body: dict | None = None, auth: tuple[str, str] | None = None
    ) -> int:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        request = urllib.request.Request(
            self.uri + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code


def _password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def closed_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClosedMlflow]:
    require_services()
    home = tmp_path / "state"
    home.mkdir()
    isolate_environment(monkeypatch, home)
    database = f"driftline_test_{uuid.uuid4().hex[:10]}_mlflow"
    port = free_port()
    server = ClosedMlflow(
        f"http://127.0.0.1:{port}", _password(), database, tmp_path / "mlflow.log"
    )
    create_databases([database])
    process = None
    try:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_BACKEND_STORE_URI": pg_url(database, "psycopg2"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": server.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
            "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
            "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # no background job runners (a dozen processes) for a registry-only server
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        process = subprocess.Popen(
            [
                "bash",
                str(START_SCRIPT),
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=server.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"mlflow server exited: {server.log.read_text()[-3000:]}")
            try:
                return server.request("GET", "/health") == 200
            except OSError:  # not listening yet
                return False

        wait_for("the basic-auth MLflow server", healthy, timeout=300, interval=1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        yield server
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        drop_databases([database])


def _mlflow_account(server: ClosedMlflow, username: str, password: str) -> None:
    """What airflow-init runs once the MLflow server is healthy."""
    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "mlflow-account"],
        env={
            **os.environ,
            "MLFLOW_AUTH_ADMIN_PASSWORD": server.admin_password,
            "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": password,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _train_like(features: int = 3) -> str:
    """A tiny booster logged and registered the way ``train`` does it (artifacts through the
    server), plus the challenger alias; returns the version."""
    import mlflow
    import numpy as np
    import xgboost

    from driftline import registry

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(200, features)), rng.integers(0, 2, 200)
    booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(x, label=y), num_boost_round=3)
    with mlflow.start_run(experiment_id=registry.experiment_id(MODEL)):
        logged = mlflow.xgboost.log_model(booster, name="model", model_format="json")
    version = mlflow.register_model(logged.model_uri, MODEL, tags={"validation": "passed"})
    registry.set_alias(MODEL, registry.CHALLENGER, str(version.version))
    return str(version.version)


def test_without_the_workers_account_nothing_is_registered_and_no_alias_moves(
    closed_mlflow: ClosedMlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline import registry
    from driftline.errors import InvalidInput
    from driftline.lineage import RunContext
    from driftline.promotion import promote

    server = closed_mlflow
    workers = ("driftline", _password())
    _mlflow_account(server, *workers)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", workers[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", workers[1])

    # before the first registration: no champion (the auth app says 403 for a missing model)
    assert registry.alias_version(MODEL, registry.CHAMPION) is None
    started = time.monotonic()
    v1 = _train_like()
    result = promote(
        MODEL, v1, expected_champion=None, context=RunContext(run_id="r1"), reasons=["first"]
    )
    assert result.champion_after == v1, result
    assert registry.alias_version(MODEL, registry.CHAMPION) == v1
    assert registry.load_booster(MODEL, v1).num_boosted_rounds() == 3
    print(f"register + promote as the workers' account: {time.monotonic() - started:.1f} s")

    # a second account, made by the admin, the way a person would get one: reads, no writes
    outsider = ("someone", _password())
    assert (
        server.request(
            "POST",
            "/api/2.0/mlflow/users/create",
            {"username": outsider[0], "password": outsider[1]},
            auth=("admin", server.admin_password),
        )
        == 200
    )
    alias = {"name": MODEL, "alias": registry.CHAMPION, "version": "1"}
    new_version = {"name": MODEL, "source": "mlflow-artifacts:/elsewhere/model"}
    create_model = {"name": "fraud_detection_lookalike"}
    for who, expected in (
        (None, 401),
        ((workers[0], "not-the-password"), 401),
        (outsider, 403),
    ):
        assert server.request("POST", "/api/2.0/mlflow/registered-models/alias", alias, who) == (
            expected
        ), who
        assert (
            server.request("POST", "/api/2.0/mlflow/model-versions/create", new_version, who)
            == expected
        ), who
        assert (
            server.request("DELETE", "/api/2.0/mlflow/registered-models/alias", alias, who)
            == expected
        ), who
    # anonymous: not even a new registered model (an account may create its own, so 200 there)
    assert server.request("POST", "/api/2.0/mlflow/registered-models/create", create_model) == 401
    # a Host header the server does not serve (DNS rebinding) is refused before auth
    request = urllib.request.Request(
        server.uri + "/api/2.0/mlflow/registered-models/search", headers={"Host": "evil.example"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403

    # nothing of that moved the registry
    assert registry.alias_version(MODEL, registry.CHAMPION) == v1
    assert len(registry.client().search_model_versions(f"name='{MODEL}'")) == 1

    # driftline without credentials: a configuration error naming the variables, not a retry
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(InvalidInput, match="MLFLOW_TRACKING_USERNAME"):
        registry.alias_version(MODEL, registry.CHAMPION)


def test_mlflow_account_rotates_the_workers_password(closed_mlflow: ClosedMlflow) -> None:
    server = closed_mlflow
    first, second = _password(), _password()
    _mlflow_account(server, "driftline", first)
    _mlflow_account(server, "driftline", second)  # airflow-init again after .env changed
    current = "/api/2.0/mlflow/users/get?username=driftline"
    assert server.request("GET", current, auth=("driftline", second)) == 200
    assert server.request("GET", current, auth=("driftline", first)) == 401

"""The production profile's Airflow auth manager: FAB, with the roles of issue 12, item 2.

A real ``airflow api-server`` with ``FabAuthManager`` on a unique, migrated PostgreSQL
database; the Operator role and the ``admin`` / ``operator`` accounts made by the script
airflow-init runs (``deploy/airflow/init-auth.sh``), with passwords generated here. Tokens
come from FAB's ``POST /auth/token``. The operator lists DAGs, triggers a run, clears it,
pauses and unpauses the DAG; it gets 403 on connections, variables, pools, config and users,
and on deleting a run or a DAG. The admin reads connections and users.

The DAG is a one-task probe written here: FAB's permissions do not depend on what a DAG does,
and parsing driftline's DAGs would only add minutes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driftline.settings import REPO_ROOT
from driftline.stack import free_port
from tests.e2e.conftest import wait_for
from tests.production.conftest import create_databases, drop_databases, pg_url, require_services

INIT_AUTH = REPO_ROOT / "deploy" / "airflow" / "init-auth.sh"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
DAG_ID = "auth_probe"
ASSET = "drift://auth_probe"
CHROMIUM = "/usr/bin/chromium"
PROBE_DAG = f"""
from datetime import datetime, timezone

from airflow.sdk import Asset, dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False)
def {DAG_ID}():
    @task(outlets=[Asset("{ASSET}")])
    def noop() -> None:
        pass

    noop()


{DAG_ID}()
"""


@dataclass
class FabAirflow:
    url: str
    passwords: dict[str, str]
    log: Path

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")[:300]

    def token(self, user: str, password: str | None = None) -> str:
        status, answer = self.call(
            "POST",
            "/auth/token",
            body={"username": user, "password": password or self.passwords[user]},
        )
        assert status == 201, (status, answer)
        return answer["access_token"]


def _airflow(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"airflow {args[0]}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def fab_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabAirflow]:
    require_services()
    root = tmp_path_factory.mktemp("fab")
    (root / "dags").mkdir()
    (root / "dags" / f"{DAG_ID}.py").write_text(PROBE_DAG)
    database = f"driftline_test_{uuid.uuid4().hex[:10]}_airflow"
    port = free_port()
    # one password starts with "-", as a generated one may (argparse must not take it for an option)
    passwords = {"admin": secrets.token_urlsafe(18), "operator": "-" + secrets.token_urlsafe(18)}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(database, "psycopg2"),
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        "AIRFLOW_ADMIN_PASSWORD": passwords["admin"],
        "AIRFLOW_OPERATOR_PASSWORD": passwords["operator"],
    }
    # the base URL: the UI sends the browser there after the login, with the cookie for it
    server = FabAirflow(f"http://localhost:{port}", passwords, root / "api-server.log")
    create_databases([database])
    process = None
    try:
        _airflow(env, "db", "migrate")
        init = subprocess.run(
            ["bash", str(INIT_AUTH)], env=env, capture_output=True, text=True, timeout=600
        )
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-3000:]
        assert 'User "operator" created with role "Operator"' in init.stdout, init.stdout
        for password in passwords.values():
            assert password not in init.stdout + init.stderr
        _airflow(env, "dags", "reserialize")
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "api-server"],
            env=env,
            stdout=server.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def answering() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"api-server exited: {server.log.read_text()[-3000:]}")
            try:
                return server.call("GET", "/api/v2/version")[0] == 200
            except OSError:
                return False

        wait_for("the api-server", answering, timeout=300, interval=1)
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


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def test_operator_runs_dags_and_cannot_administer(fab_airflow: FabAirflow) -> None:
    server = fab_airflow
    token = server.token("operator")

    status, dags = server.call("GET", "/api/v2/dags", token)
    assert status == 200 and [d["dag_id"] for d in dags["dags"]] == [DAG_ID], dags
    status, run = server.call(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        token,
        {"logical_date": None, "dag_run_id": "by_operator"},
    )
    assert status == 200, run
    run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/by_operator"
    status, cleared = server.call("POST", f"{run_path}/clear", token, {"dry_run": False})
    assert status == 200, cleared
    for paused in (True, False):
        status, dag = server.call("PATCH", f"/api/v2/dags/{DAG_ID}", token, {"is_paused": paused})
        assert status == 200 and dag["is_paused"] is paused, dag
    assert server.call("GET", f"{run_path}/taskInstances", token)[0] == 200
    # a drift event from outside, as an operator sends one (README: drift events over REST)
    status, assets = server.call("GET", "/api/v2/assets", token)
    asset_id = next(a["id"] for a in assets["assets"] if a["name"] == ASSET)
    status, event = server.call("POST", "/api/v2/assets/events", token, {"asset_id": asset_id})
    assert status == 200, event

    refused = {
        ("GET", "/api/v2/connections"): None,
        ("POST", "/api/v2/connections"): {"connection_id": "x", "conn_type": "http"},
        ("GET", "/api/v2/variables"): None,
        ("POST", "/api/v2/variables"): {"key": "x", "value": "y"},
        ("GET", "/api/v2/pools"): None,
        ("POST", "/api/v2/pools"): {"name": "x", "slots": 1},
        ("GET", "/api/v2/config"): None,
        ("GET", "/auth/fab/v1/users"): None,
        ("GET", "/auth/fab/v1/roles"): None,
        ("DELETE", run_path): None,
        ("DELETE", f"/api/v2/dags/{DAG_ID}"): None,
    }
    answers = {key: server.call(*key, token, body)[0] for key, body in refused.items()}
    assert answers == dict.fromkeys(refused, 403)
    # the run and the DAG are still there
    assert server.call("GET", run_path, token)[0] == 200


def test_admin_administers(fab_airflow: FabAirflow) -> None:
    server = fab_airflow
    token = server.token("admin")
    for path in ("/api/v2/connections", "/api/v2/pools", "/api/v2/variables"):
        assert server.call("GET", path, token)[0] == 200, path
    status, users = server.call("GET", "/auth/fab/v1/users", token)
    assert status == 200
    roles = {u["username"]: [r["name"] for r in u["roles"]] for u in users["users"]}
    assert roles == {"admin": ["Admin"], "operator": ["Operator"]}


def test_no_token_no_access_and_a_wrong_password_gets_no_token(fab_airflow: FabAirflow) -> None:
    server = fab_airflow
    assert server.call("GET", "/api/v2/dags")[0] == 401
    status, _ = server.call(
        "POST", "/auth/token", body={"username": "operator", "password": "not-the-password"}
    )
    assert status == 401


@pytest.mark.browser
def test_operator_logs_in_to_the_ui_and_sees_the_dag(fab_airflow: FabAirflow) -> None:
    if not Path(CHROMIUM).exists():
        message = f"Debian's chromium is not installed ({CHROMIUM}); apt-get install chromium"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    server = fab_airflow
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{server.url}/auth/login/")
            page.fill("input[name=username]", "operator")
            page.fill("input[name=password]", "not-the-password")
            page.locator("input[type=submit], button[type=submit]").first.click()
            page.wait_for_load_state("networkidle", timeout=60_000)
            assert "/auth/login" in page.url, page.url  # a wrong password stays out

            page.fill("input[name=username]", "operator")
            page.fill("input[name=password]", server.passwords["operator"])
            page.locator("input[type=submit], button[type=submit]").first.click()
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
            page.goto(f"{server.url}/dags/{DAG_ID}")
            page.get_by_text(DAG_ID).first.wait_for(timeout=60_000)
        finally:
            page.screenshot(path=str(server.log.with_name("operator-ui.png")))
            browser.close()

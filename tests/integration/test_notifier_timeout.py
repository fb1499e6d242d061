"""A webhook that accepts the connection and never answers cannot hang a run.

A real DAG run under `airflow dags test`: the task's on_success_callback is the
DriftlineNotifier the retrain DAG uses, Airflow's callback machinery calls it, and the
webhook connection points at a socket that accepts and never sends a byte. The callback
gives up after its timeout (default 10 s) and the run succeeds.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.airflow_env import airflow_env, migrated_database, run_airflow

pytestmark = pytest.mark.airflow

DAG = '''
"""A one-task DAG (airflow dag) whose success notifies through DriftlineNotifier."""
from datetime import datetime

from airflow.sdk import dag, task
from driftline_airflow.notifiers import DriftlineNotifier


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["test"])
def notify_probe():
    @task(on_success_callback=DriftlineNotifier(event="promotion", summary="probe"))
    def promote():
        return {"promoted": True}

    promote()


notify_probe()
'''


class SilentReceiver:
    """Accepts every connection, reads what arrives, never answers."""

    def __init__(self) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(connection)
            connection.settimeout(60)
            with contextlib.suppress(OSError):
                self.received += connection.recv(65536)

    def close(self) -> None:
        for connection in self.accepted:
            connection.close()
        self.server.close()


def test_a_silent_webhook_costs_its_timeout_and_the_run_succeeds(
    driftline_home: Path, airflow_db_template: Path, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "notify_probe.py").write_text(DAG)
    airflow_home = driftline_home / "airflow"
    migrated_database(airflow_db_template, airflow_home)
    receiver = SilentReceiver()
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": receiver.port,
        "schema": "http",
        "extra": {"endpoint": "/hooks/driftline"},
    }
    env = airflow_env(
        airflow_home,
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW_CONN_DRIFTLINE_WEBHOOK=json.dumps(connection),
    )
    try:
        started = time.monotonic()
        result = run_airflow(["dags", "test", "notify_probe"], env, timeout=300)
        took = time.monotonic() - started
    finally:
        receiver.close()
    output = result.stdout + result.stderr

    assert receiver.accepted, "the notifier never connected to the webhook"
    assert b"POST /hooks/driftline" in receiver.received
    assert "did not take the promotion notification within 10.0 s" in output, output[-4000:]
    assert re.search(r"dag_id=notify_probe.*state=success|state=success", output), output[-4000:]
    # start-up and parsing take their share; without the timeout the command would hang
    assert took < 120, f"airflow dags test took {took:.0f} s"

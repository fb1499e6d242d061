"""The stack manager signals only process groups that are still its own, notices dead
components, and keeps its secrets and records safe. Real processes, no Airflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.errors import DriftlineError
from driftline.stack import Stack, down, process_identity
from driftline.status import render_components


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process-group leader standing in for a component (or for an unrelated program)."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _record(stack: Stack, processes: dict[str, int], identity: dict[str, object]) -> None:
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    stack.state_file.write_text(
        json.dumps({"processes": processes, "identity": identity, "port": 8080})
    )


def test_a_stale_record_is_never_signalled(
    driftline_home: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = Stack()
    real = process_identity(sleeper.pid)
    assert real is not None and "time.sleep(300)" in real["cmdline"]
    # the recorded scheduler was an earlier process that had this id (the id was reused)
    recorded = {"start_time": real["start_time"] - 1, "cmdline": real["cmdline"]}
    _record(stack, {"scheduler": sleeper.pid}, {"scheduler": recorded})

    assert stack.component_state("scheduler") == "stale"
    assert stack.running() == {}
    assert down() == []
    time.sleep(0.5)
    assert sleeper.poll() is None, "an unrelated process group was signalled"
    out = capsys.readouterr().out
    assert f"scheduler: process group {sleeper.pid} is no longer the one driftline started" in out
    assert "not signalled, its record is removed" in out
    assert not stack.state_file.exists()


def test_own_groups_are_stopped_and_dead_ones_noticed(
    driftline_home: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    stack = Stack()
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    _record(
        stack,
        {"scheduler": sleeper.pid, "triggerer": other.pid},
        {"scheduler": process_identity(sleeper.pid), "triggerer": process_identity(other.pid)},
    )
    assert stack.running() == {"scheduler": sleeper.pid, "triggerer": other.pid}

    os.killpg(other.pid, signal.SIGKILL)
    other.wait()
    assert stack.not_running() == {"triggerer": "dead"}
    assert stack.running() == {"scheduler": sleeper.pid}
    rendered = render_components(
        [
            {
                "component": "scheduler",
                "process_group": sleeper.pid,
                "process": "running",
                "health": "healthy",
                "last_heartbeat": None,
            },
            {
                "component": "triggerer",
                "process_group": other.pid,
                "process": "dead",
                "health": "-",
                "last_heartbeat": None,
            },
        ]
    )
    assert "triggerer not running: `make up` restarts only what is dead" in rendered

    began = time.monotonic()
    assert stack.stop(timeout=10) == ["scheduler"]
    # ended by the SIGTERM, well before the SIGKILL that follows the 10 s grace period; the
    # exit status is not asserted: under load (1 in ~5 full runs at load 13) the sleeper was
    # seen exiting 0 rather than -SIGTERM, which says nothing about the stop
    assert time.monotonic() - began < 9
    assert sleeper.wait(timeout=1) != -signal.SIGKILL


def test_a_torn_stack_json_names_the_file(
    driftline_home: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    stack = Stack()
    _record(stack, {"scheduler": sleeper.pid}, {"scheduler": process_identity(sleeper.pid)})
    stack.state_file.write_text('{"processes": {"schedu')  # a torn file from older code
    with pytest.raises(
        DriftlineError, match=r"stack.json is unreadable .*; if no stack runs, delete it"
    ):
        stack.running()


def test_passwords_are_generated_by_driftline_and_private(driftline_home: Path) -> None:
    stack = Stack()
    passwords = stack.ensure_passwords()
    assert sorted(passwords) == ["admin", "operator"]
    assert all(len(value) == 16 for value in passwords.values())
    assert stack.passwords_file.stat().st_mode & 0o777 == 0o600
    assert stack.ensure_passwords() == passwords  # kept, never regenerated

    # a file an older driftline (or Airflow) left world-readable is tightened, not replaced
    stack.passwords_file.chmod(0o644)
    assert stack.ensure_passwords() == passwords
    assert stack.passwords_file.stat().st_mode & 0o777 == 0o600


def test_the_execution_api_signing_key_is_long_private_and_kept(
    driftline_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW__API_AUTH__JWT_SECRET", raising=False)
    stack = Stack()
    key = stack.env()["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(key.encode()) >= 64  # RFC 7518: at least the hash's size for HS512
    assert stack.signing_key_file.stat().st_mode & 0o777 == 0o600
    assert stack.env()["AIRFLOW__API_AUTH__JWT_SECRET"] == key  # every component, every start

    stack.signing_key_file.chmod(0o644)
    assert stack.ensure_signing_key() == key
    assert stack.signing_key_file.stat().st_mode & 0o777 == 0o600

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "o" * 80)  # an operator's own wins
    assert stack.env()["AIRFLOW__API_AUTH__JWT_SECRET"] == "o" * 80


def test_mlflows_tables_exist_before_any_component_opens_the_store(driftline_home: Path) -> None:
    """`up` creates MLflow's tables in its own process before the MLflow UI, the scoring
    service and the tasks start: two of them initializing one new SQLite file at once made
    the loser fail with "table datasets already exists"."""
    import sqlite3

    from driftline import registry
    from driftline.settings import get_settings

    settings = get_settings()
    path = Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///"))
    assert not path.exists()
    registry.ensure_store(settings)
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"experiments", "datasets", "registered_models", "model_versions"} <= tables
    registry.ensure_store(settings)  # again: nothing to do, nothing fails


class _LockedAirflow:
    """An HTTP server standing in for an api-server whose SQLite metadata DB is locked: each
    POST of a run answers 500 until ``busy`` POSTs have been made; ``created_anyway`` makes
    the first failed POST still create the run (its answer lost), as a lock released at the
    last moment would."""

    def __init__(self, busy: int, created_anyway: bool) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        self.posts, self.runs = 0, []
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                conf = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["conf"]
                server_self.posts += 1
                run = {"dag_run_id": f"manual__{server_self.posts}", "conf": conf}
                if server_self.posts <= busy:
                    if created_anyway and server_self.posts == 1:
                        server_self.runs.append(run)
                    self._answer(500, {"detail": "database is locked"})
                    return
                server_self.runs.append(run)
                self._answer(200, run)

            def do_GET(self) -> None:
                self._answer(200, {"dag_runs": server_self.runs})

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("created_anyway", [False, True])
def test_the_first_retrain_outlasts_a_locked_metadata_db(
    driftline_home: Path, monkeypatch: pytest.MonkeyPatch, created_anyway: bool
) -> None:
    """A fresh stack's first scheduled tasks can hold the SQLite metadata DB for a minute;
    the first retrain's trigger must wait it out, and never start a second first retrain."""
    from driftline import stack as stack_module

    monkeypatch.setattr(stack_module.time, "sleep", lambda _: None)
    airflow = _LockedAirflow(busy=4, created_anyway=created_anyway)
    try:
        stack = Stack(port=airflow.server.server_address[1])
        run_id = stack_module._trigger_first_retrain(stack, "token", "m_retrain", timeout=30)
        assert [run["dag_run_id"] for run in airflow.runs] == [run_id]
        # the lost answer's run is found before a second POST; otherwise the lock is waited out
        assert airflow.posts == (1 if created_anyway else 5)  # the old code gave up at 3
    finally:
        airflow.server.shutdown()

"""Fault drill: PostgreSQL restarted during a retrain on the production profile.

The system PostgreSQL is shared, so this drill starts a private cluster (initdb + pg_ctl as
the ``postgres`` OS user, in a temp dir, on a free port), runs the whole production-profile
stack on it (Airflow metadata, the MLflow tracking server's store, Feast's SQL registry, the
monitoring store), and restarts that cluster while a retrain runs. Tasks that lose their
connection retry; the run completes with one registered version and the champion identical
in the monitoring store and in MLflow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftline import monitoring, registry
from driftline.stack import free_port
from tests.e2e.conftest import wait_for
from tests.production.conftest import PG, Production, production_stack, require_services

pytestmark = [pytest.mark.services, pytest.mark.airflow]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MODEL = "fraud_detection"
RETRAIN = f"{MODEL}_retrain"


@dataclass
class Cluster:
    data: Path
    port: int

    def ctl(self, *args: str, timeout: float = 120) -> None:
        _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "90", *args], timeout
        )

    def start(self) -> None:
        self.ctl("-l", str(self.data / "server.log"), "start")

    def restart(self) -> None:
        self.ctl("-m", "fast", "-l", str(self.data / "server.log"), "restart")


def _as_postgres(command: list[str], timeout: float) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip(f"needs {PG_BIN}/initdb and root (to run it as the postgres user)")
    root = Path(tempfile.mkdtemp(prefix="driftline-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    _as_postgres(
        [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], timeout=300
    )
    port = free_port()
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{root}'\nmax_connections = 200\nfsync = off\n"
        )
    running = Cluster(data, port)
    running.start()
    try:
        yield running
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def production(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    require_services()  # Redis, for Feast's online store
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PG, "port", cluster.port)
        with production_stack(tmp_path_factory) as running:
            yield running


def test_postgres_restarted_during_a_retrain_the_run_completes(
    production: Production, cluster: Cluster
) -> None:
    stack = production.stack
    token = stack.token("admin")
    status, run = stack.api(
        "POST",
        f"/api/v2/dags/{RETRAIN}/dagRuns",
        {"logical_date": None, "conf": {"dry_run": True, "reason": "postgres restart drill"}},
        token=token,
    )
    assert status == 200, run
    run_id = run["dag_run_id"]

    def task_state(task_id: str) -> str | None:
        code, body = stack.api(
            "GET", f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances/{task_id}", token=token
        )
        return body.get("state") if code == 200 else None

    wait_for("train to run", lambda: task_state("train") == "running", timeout=900, interval=1)
    started = time.monotonic()
    cluster.restart()
    restart_seconds = time.monotonic() - started

    def finished() -> dict | None:
        code, body = stack.api("GET", f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}", token=token)
        return body if code == 200 and body["state"] in ("success", "failed") else None

    final = wait_for(f"{RETRAIN} run {run_id} to finish", finished, timeout=1200, interval=3)
    _, body = stack.api(
        "GET", f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances", token=token
    )
    tries = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in body["task_instances"]}
    assert final["state"] == "success", tries
    made = registry.client().search_model_versions(
        f"name='{MODEL}' and tags.airflow_run_id='{run_id}'"
    )
    assert len(made) == 1, [v.version for v in made]
    assert (
        monitoring.read_state(MODEL).champion_version
        == registry.alias_version(MODEL, registry.CHAMPION)
        is not None
    )
    print(f"postgres restart drill: restart took {restart_seconds:.1f} s; tasks {tries}")

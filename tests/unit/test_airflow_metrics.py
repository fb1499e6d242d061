"""Airflow's own metrics: with the StatsD settings compose gives every Airflow service (host
and port pointed at a local socket), a real Airflow process sends StatsD datagrams under the
``airflow`` prefix — the statsd package is installed and the settings are the ones Airflow
reads."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from driftline.settings import REPO_ROOT


def test_airflow_sends_statsd_with_the_compose_settings(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    settings = {
        key: str(value)
        for key, value in compose["services"]["airflow-scheduler"]["environment"].items()
        if key.startswith("AIRFLOW__METRICS__")
    }
    assert settings["AIRFLOW__METRICS__STATSD_ON"] == "True"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(120)
        env = {
            **os.environ,
            **settings,
            "AIRFLOW_HOME": str(tmp_path),
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(listener.getsockname()[1]),
        }
        result = subprocess.run(
            [sys.executable, "-c", "from airflow.observability.stats import Stats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        datagram = listener.recv(4096).decode()
    prefix = settings["AIRFLOW__METRICS__STATSD_PREFIX"]
    assert re.fullmatch(rf"{prefix}\.[\w.]+:[\d.]+\|(ms|c|g)\n?", datagram), datagram

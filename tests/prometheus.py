"""A real Prometheus for tests (Debian's ``prometheus`` package, installed by ``.ci/run``).

``running_prometheus(directory, {"job": ["127.0.0.1:port"]})`` starts ``/usr/bin/prometheus``
with a generated configuration scraping those targets every second, its own free port and
its own storage under ``directory``, waits until it is ready, and stops it by its process
group id when the block ends, also when the test failed. ``query(promql)`` asks its HTTP
API. Without the binary a test skips, or fails with ``REQUIRE_SERVICES=1`` (CI).

Reusable by any test that needs real scrapes: the exporter's, the scoring service's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.stack import free_port

INSTALL_HINT = "Debian: apt-get install prometheus (brings promtool too)"


def require_binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; skip without it, fail under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({INSTALL_HINT})"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    return path


class PrometheusError(AssertionError):
    """Prometheus answered a query with an error, or did not get ready."""


@dataclass
class Prometheus:
    directory: Path
    targets: dict[str, list[str]]
    rule_files: list[Path] = field(default_factory=list)
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "prometheus.log"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self.targets.items()
            ],
        }

    def start(self, timeout: float = 60) -> Prometheus:
        binary = require_binary("prometheus")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped by that id, nothing else
        )
        self.wait_for("Prometheus to be ready", lambda: self._get("/-/ready") == 200, timeout)
        return self

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
                return response.status
        except (urllib.error.URLError, OSError):
            return None

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a Prometheus HTTP API answer; raises on an error status."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {labels}, "value": float}, ...]``."""
        data = self.api("query", query=promql)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        return [
            {"metric": sample["metric"], "value": float(sample["value"][1])}
            for sample in data["result"]
        ]

    def value(self, promql: str) -> float:
        """The one sample ``promql`` selects; fails naming what came back otherwise."""
        found = self.query(promql)
        if len(found) != 1:
            raise PrometheusError(f"{promql} selects {len(found)} samples, not 1: {found}")
        return found[0]["value"]

    def targets_up(self) -> dict[str, str]:
        """scrape URL -> health (up, down, unknown) of every active target."""
        return {
            target["scrapeUrl"]: target["health"] for target in self.api("targets")["activeTargets"]
        }

    def wait_for_targets(self, timeout: float = 30) -> None:
        self.wait_for(
            f"every target of {self.targets} to be scraped and up",
            lambda: (
                (health := self.targets_up())
                and len(health) == sum(len(t) for t in self.targets.values())
                and set(health.values()) == {"up"}
            ),
            timeout,
        )

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """Labels of each firing alert named ``alertname``."""
        return [
            alert["labels"]
            for alert in self.api("alerts")["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["state"] == "firing"
        ]

    def wait_for(
        self, what: str, condition: Callable[[], Any], timeout: float = 30, interval: float = 0.5
    ) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise PrometheusError(f"prometheus exited ({self.process.returncode}):\n{tail}")
            try:
                last = condition()
            except PrometheusError as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise PrometheusError(f"waited {timeout:.0f} s for {what}; last: {last!r}")


@contextlib.contextmanager
def running_prometheus(
    directory: Path, targets: dict[str, list[str]], **options: Any
) -> Iterator[Prometheus]:
    """A started Prometheus scraping ``targets`` (job -> host:port list); stopped after."""
    prometheus = Prometheus(directory, targets, **options)
    try:
        yield prometheus.start()
    finally:
        prometheus.stop()

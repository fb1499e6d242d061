"""The exporter as a real process over a monitoring store with known rows, scraped by a real
Prometheus (Debian's package) with driftline's alert rules loaded: PromQL returns the series
and the values that were written, the alerts fire on them, an unreachable store is
``driftline_exporter_store_up 0`` (scraped fine, not a 500), and a scrape storm reads the
store at most once per cache period."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftline import monitoring
from driftline.settings import REPO_ROOT
from driftline.stack import free_port
from tests.exporter_rows import EVENTS, MODEL, OTHER, KnownStore, write_known_rows
from tests.prometheus import Prometheus, running_prometheus

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "driftline.yml"
CACHE_SECONDS = 1.0


@dataclass
class Exporter:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as response:
            assert response.status == 200
            return response.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)


def _start_exporter(directory: Path, name: str, url: str) -> Exporter:
    port = free_port()
    log = directory / f"{name}.log"
    env = {
        **os.environ,
        "DRIFTLINE_MONITORING_DB_URL": url,
        "DRIFTLINE_EXPORTER_CACHE_SECONDS": str(CACHE_SECONDS),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "exporter", "--port", str(port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    exporter = Exporter(process, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://{exporter.address}/health", timeout=2).close()
            return exporter
        time.sleep(0.2)
    exporter.stop()
    raise AssertionError(f"the exporter did not answer within 60 s: {log.read_text()}")


@dataclass
class Scraped:
    known: KnownStore
    good: Exporter
    down: Exporter
    prometheus: Prometheus


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    directory = tmp_path_factory.mktemp("exporter")
    url = f"sqlite:///{directory / 'monitoring.db'}"
    known = write_known_rows(url)
    # a PostgreSQL nobody listens on: connection refused at every read
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/monitoring"
    exporters: list[Exporter] = []
    try:
        exporters.append(_start_exporter(directory, "good", url))
        exporters.append(_start_exporter(directory, "down", unreachable))
        with running_prometheus(
            directory / "prometheus",
            {"driftline-exporter": [e.address for e in exporters]},
            rule_files=[RULES],
        ) as prometheus:
            prometheus.wait_for_targets()
            prometheus.wait_for(
                "the first scrape's series",
                lambda: prometheus.query("driftline_drift_events"),
            )
            yield Scraped(known, exporters[0], exporters[1], prometheus)
    finally:
        for exporter in exporters:
            exporter.stop()


def _of(scraped: Scraped, metric: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in {**labels}.items())
    instance = f'instance="{scraped.good.address}"'
    return scraped.prometheus.value(f"{metric}{{{instance}{',' if selector else ''}{selector}}}")


def test_drift_events_by_status_are_the_counts_written(scraped: Scraped) -> None:
    for status, count in EVENTS.items():
        assert _of(scraped, "driftline_drift_events", model=MODEL, status=status) == count
    # a model without events shows zeros, not nothing: an alert on a count can rely on it
    assert _of(scraped, "driftline_drift_events", model=OTHER, status="new") == 0


def test_drift_scores_thresholds_and_verdict_are_the_newest_reports(scraped: Scraped) -> None:
    score = "driftline_drift_score"
    assert _of(scraped, score, model=MODEL, feature="amount", method="wasserstein") == 0.3125
    assert _of(scraped, score, model=MODEL, feature="channel") == 0.046875
    assert _of(scraped, "driftline_drift_threshold", model=MODEL, feature="amount") == 0.1
    prediction = "driftline_prediction_drift_score"
    assert _of(scraped, prediction, model=MODEL, source="offline") == 0.0625
    assert _of(scraped, prediction, model=MODEL, source="served") == 0.4375
    assert _of(scraped, "driftline_drift_served_rows", model=MODEL, version="5") == 1000
    assert _of(scraped, "driftline_drift_served_rows", model=MODEL, version="6") == 300
    assert _of(scraped, "driftline_drift_detected", model=MODEL, champion_version="5") == 1
    assert _of(scraped, "driftline_drift_detected", model=OTHER) == 0
    assert _of(scraped, "driftline_drift_features_drifted_ratio", model=MODEL) == 0.5


def test_decision_retrain_and_canary_series(scraped: Scraped) -> None:
    times = scraped.known.times
    prometheus = scraped.prometheus
    decision = prometheus.query(
        f'driftline_last_decision_timestamp_seconds{{instance="{scraped.good.address}"}}'
    )
    by_model = {d["metric"]["model"]: d for d in decision}
    assert {k: v for k, v in by_model[MODEL]["metric"].items() if k in ("decision", "version")} == {
        "decision": "rollout_step",
        "version": "6",
    }
    assert by_model[MODEL]["value"] == pytest.approx(times["decision"], abs=1e-3)
    assert by_model[OTHER]["metric"]["decision"] == "rollback"
    assert by_model[OTHER]["value"] == pytest.approx(times["other_decision"], abs=1e-3)
    retrain = "driftline_last_successful_retrain_timestamp_seconds"
    assert _of(scraped, retrain, model=MODEL) == pytest.approx(times["retrain"], abs=1e-3)
    assert prometheus.query(f'{retrain}{{model="{OTHER}"}}') == []  # never retrained
    assert _of(scraped, "driftline_rollout_share_ratio", model=MODEL) == 0.5
    assert _of(scraped, "driftline_rollout_step", model=MODEL) == 2
    assert _of(scraped, "driftline_rollout_aborts_total", model=MODEL) == 1
    assert _of(scraped, "driftline_rollout_aborts_total", model=OTHER) == 0
    assert _of(
        scraped, "driftline_rollout_last_abort_timestamp_seconds", model=MODEL
    ) == pytest.approx(times["first_abort"], abs=1e-3)


def test_the_alert_rules_fire_on_the_exporters_series(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    drift = prometheus.wait_for(
        "DriftlineDriftDetected to fire", lambda: prometheus.firing("DriftlineDriftDetected")
    )
    assert [(a["model"], a["champion_version"]) for a in drift] == [(MODEL, "5")]
    aborted = prometheus.wait_for(
        "DriftlineCanaryAborted to fire", lambda: prometheus.firing("DriftlineCanaryAborted")
    )
    assert [a["model"] for a in aborted] == [MODEL]
    # written seconds ago: nothing is stuck yet, no retrain is overdue
    assert prometheus.firing("DriftlineDriftEventsStuck") == []
    assert prometheus.firing("DriftlineNoSuccessfulRetrain") == []


def test_an_unreachable_store_is_store_up_0_not_an_error(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    assert _of(scraped, "driftline_exporter_store_up") == 1
    down = f'instance="{scraped.down.address}"'
    assert prometheus.value(f"driftline_exporter_store_up{{{down}}}") == 0
    assert prometheus.value(f"up{{{down}}}") == 1  # scraped fine: HTTP 200
    assert (
        prometheus.value(
            f'driftline_exporter_store_read_failures_total{{{down},kind="unavailable"}}'
        )
        >= 1
    )
    assert prometheus.query(f'{{__name__=~"driftline_(drift|rollout|last)_.*",{down}}}') == []
    text = scraped.down.scrape()
    assert "driftline_exporter_store_up 0.0" in text
    assert "monitoring store unreachable at postgresql" in scraped.down.log.read_text()


def test_new_rows_show_at_the_next_scrape_after_the_cache_period(scraped: Scraped) -> None:
    monitoring.create_drift_event(
        url=scraped.known.url, model=MODEL, source="test", payload={}, status="new"
    )
    query = (
        f'driftline_drift_events{{instance="{scraped.good.address}",model="{MODEL}",status="new"}}'
    )
    scraped.prometheus.wait_for(
        "the new event to be scraped",
        lambda: scraped.prometheus.value(query) == EVENTS["new"] + 1,
        timeout=15,
    )


def test_a_scrape_storm_reads_the_store_once_per_cache_period(scraped: Scraped) -> None:
    def reads() -> float:
        line = next(
            line
            for line in scraped.good.scrape().splitlines()
            if line.startswith("driftline_exporter_store_reads_total ")
        )
        return float(line.split()[1])

    before = reads()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        pages = list(pool.map(lambda _: scraped.good.scrape(), range(200)))
    elapsed = time.monotonic() - started
    after = reads()
    assert all("driftline_drift_events{" in page for page in pages)
    # 202 scrapes (and Prometheus' own) in `elapsed` seconds: one read per started period
    assert after - before <= elapsed / CACHE_SECONDS + 2, (after - before, elapsed)

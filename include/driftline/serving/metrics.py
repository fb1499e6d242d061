"""The scoring service's Prometheus metrics.

One worker: the metrics live in this process's own registry. Several uvicorn workers
(``DRIFTLINE_SERVE_WORKERS`` > 1): ``driftline serve`` points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh directory before the workers start (and before anything imports
prometheus_client in them), every worker writes its values there, and
``/metrics`` (whichever worker answers) aggregates all of them — counters and histograms
summed, gauges by their ``multiprocess_mode`` (the newest or the largest value of the live
workers). A worker that stops marks itself dead, so its gauges leave the aggregate.

Names (all prefixed ``driftline_serving_``):

* ``requests_total{model,version,arm,endpoint,outcome}`` — scoring requests that reached a
  model (a batch counts once per arm it touched); ``outcome`` is ``ok`` or ``error``.
* ``errors_total{model,version,arm,reason}`` — failed requests: ``invalid`` (422),
  ``too_large`` (413), ``unknown_model`` (404), ``no_champion`` (503) carry
  ``version="none", arm="none"``; ``features`` (online store) and ``scoring`` carry the arm.
* ``request_seconds{model,version,arm,endpoint}`` — latency histogram, request received to
  answer ready.
* ``rows_total{model,version,arm,status}`` — scored rows (what the prediction log receives).
* ``loaded_version{model,alias}``, ``model_age_seconds{model,alias}`` (since the version was
  registered), ``rollout_share{model}``, ``model_load_failures_total{model,alias}``,
  ``model_load_failing{model,alias}`` (1 while the alias's version cannot be loaded).
* ``feature_freshness_seconds{model,feature_view}`` — age of the view's last materialized end.
* ``predlog_rows_written_total{model}``, ``predlog_rows_dropped_total{model}``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "driftline_serving"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def multiprocess() -> bool:
    """Are metric values kept in files (multiprocess mode)? prometheus_client decides once,
    when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``; Feast sets that variable
    when it is imported first (feast/metrics.py), so ask prometheus_client, not the variable."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


class ServiceMetrics:
    """Every metric of one service process; ``render`` answers ``/metrics``."""

    def __init__(self) -> None:
        # multiprocess: values go to files, whatever registry; do not register them twice
        self.registry = CollectorRegistry(auto_describe=True)
        into = None if multiprocess() else self.registry
        self.requests = Counter(
            f"{PREFIX}_requests_total",
            "Scoring requests that reached a model",
            ["model", "version", "arm", "endpoint", "outcome"],
            registry=into,
        )
        self.errors = Counter(
            f"{PREFIX}_errors_total",
            "Failed scoring requests by reason",
            ["model", "version", "arm", "reason"],
            registry=into,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Scoring request latency",
            ["model", "version", "arm", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=into,
        )
        self.rows = Counter(
            f"{PREFIX}_rows_total",
            "Scored rows",
            ["model", "version", "arm", "status"],
            registry=into,
        )
        self.loaded_version = Gauge(
            f"{PREFIX}_loaded_version",
            "Registry version loaded for the alias",
            ["model", "alias"],
            registry=into,
            multiprocess_mode="livemostrecent",
        )
        self.model_age = Gauge(
            f"{PREFIX}_model_age_seconds",
            "Seconds since the loaded version was registered",
            ["model", "alias"],
            registry=into,
            multiprocess_mode="livemax",
        )
        self.share = Gauge(
            f"{PREFIX}_rollout_share",
            "Traffic share routed to the candidate",
            ["model"],
            registry=into,
            multiprocess_mode="livemostrecent",
        )
        self.load_failures = Counter(
            f"{PREFIX}_model_load_failures_total",
            "Versions that failed to load",
            ["model", "alias"],
            registry=into,
        )
        self.load_failing = Gauge(
            f"{PREFIX}_model_load_failing",
            "1 while the alias's version cannot be loaded",
            ["model", "alias"],
            registry=into,
            multiprocess_mode="livemax",
        )
        self.freshness = Gauge(
            f"{PREFIX}_feature_freshness_seconds",
            "Seconds since the feature view's last materialized end",
            ["model", "feature_view"],
            registry=into,
            multiprocess_mode="livemax",
        )
        self.predlog_written = Counter(
            f"{PREFIX}_predlog_rows_written_total",
            "Rows written to the prediction log",
            ["model"],
            registry=into,
        )
        self.predlog_dropped = Counter(
            f"{PREFIX}_predlog_rows_dropped_total",
            "Rows the prediction log dropped (buffer full while writes failed)",
            ["model"],
            registry=into,
        )

    def set_freshness(self, model: str, ends: dict[str, datetime | None]) -> None:
        now = datetime.now(UTC)
        for view, end in ends.items():
            if end is not None:
                self.freshness.labels(model, view).set((now - end).total_seconds())

    def render(self) -> tuple[bytes, str]:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exit() -> None:
        """Take this worker's live gauges out of the aggregate (multiprocess mode)."""
        if multiprocess():
            from prometheus_client import multiprocess as mp

            mp.mark_process_dead(os.getpid())

"""The Prometheus exporter: what the monitoring store knows, as metrics, read at scrape time.

``driftline exporter`` serves ``/metrics`` (and ``/health``) on ``DRIFTLINE_EXPORTER_HOST``:
``DRIFTLINE_EXPORTER_PORT`` (127.0.0.1:9108). A custom collector reads the store when
Prometheus scrapes, so the figures are as fresh as the store; nothing is kept between runs.

Invariants:

* One read of the store per ``DRIFTLINE_EXPORTER_CACHE_SECONDS`` (10 s) however many scrapes
  arrive: scrapes in that period are answered from the last read, concurrent scrapes wait for
  one read instead of starting their own. A failed read is cached the same way, so a store
  that is down is not hammered either.
* A store that cannot be read is ``driftline_exporter_store_up 0`` with HTTP 200, never a 500,
  and no store series at all: Prometheus marks the old values stale instead of showing them
  as current.
* The exporter only reads (the schema is brought up to date like every other reader's).

Definitions the alerts rely on (README "Monitoring"):

* a *decision* is an audit row of action ``promoted``, ``rejected``, ``inconclusive``,
  ``manual_promote``, ``rollback`` or ``rollout_*``;
* a *successful retrain* is a retrain run that reached a decision about its challenger:
  audit action ``promoted``, ``rejected``, ``inconclusive`` or ``rollout_started`` (a canary
  rollout handed the challenger its first share). Failed, blocked (validation) and dry runs,
  manual promotions and rollbacks are not retrains that succeeded;
* the canary's share and step come from the newest ``rollout_*`` audit row, whose ``metrics``
  carry ``share`` (the candidate's traffic share after that action) and ``step`` (index into
  the spec's rollout steps, -1 after an abort).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from driftline import monitoring
from driftline.errors import Unavailable

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
DEFAULT_CACHE_SECONDS = 10.0

ROLLOUT_PREFIX = "rollout_"
ROLLOUT_ABORTED = "rollout_aborted"
DECISIONS = ("promoted", "rejected", "inconclusive", "manual_promote", "rollback")
RETRAIN_DECISIONS = ("promoted", "rejected", "inconclusive", "rollout_started")
PREDICTION_FEATURE = "prediction"


def is_decision(action: str) -> bool:
    return action in DECISIONS or action.startswith(ROLLOUT_PREFIX)


@dataclass(frozen=True)
class Snapshot:
    """One read of the store: the newest report per model, the audit summary, event counts."""

    reports: dict[str, dict[str, Any]]
    audit: dict[str, dict[str, dict[str, Any]]]
    events: dict[str, dict[str, dict[str, Any]]]

    @property
    def models(self) -> list[str]:
        return sorted({*self.reports, *self.audit, *self.events})


def read_snapshot(url: str | None = None) -> Snapshot:
    return Snapshot(
        reports=monitoring.newest_drift_reports(url=url),
        audit=monitoring.audit_summary(url=url),
        events=monitoring.event_counts_by_model(url=url),
    )


def _newest(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    return max(rows, key=lambda row: row["id"], default=None)


def store_metrics(snapshot: Snapshot) -> list[Metric]:
    """The store's series, labelled by model (a pure function of the snapshot)."""
    score = GaugeMetricFamily(
        "driftline_drift_score",
        "Drift score of each feature in the newest drift report (a distance; drift when it "
        "reaches driftline_drift_threshold). Method: wasserstein, jensenshannon, psi.",
        labels=["model", "feature", "method"],
    )
    threshold = GaugeMetricFamily(
        "driftline_drift_threshold",
        "Threshold of each feature's drift score in the newest drift report (from the spec).",
        labels=["model", "feature", "method"],
    )
    prediction = GaugeMetricFamily(
        "driftline_prediction_drift_score",
        "Drift of the champion's score distribution against its reference in the newest "
        "report. source=offline: the champion re-scoring the window's transactions; "
        "source=served: the scores the scoring service answered in the window.",
        labels=["model", "source", "method"],
    )
    prediction_threshold = GaugeMetricFamily(
        "driftline_prediction_drift_threshold",
        "Threshold of the prediction drift score (from the spec).",
        labels=["model", "method"],
    )
    served = GaugeMetricFamily(
        "driftline_drift_served_rows",
        "Rows the scoring service answered in the newest drift report's window, by the model "
        "version that answered them (0 rows: no served traffic in the window).",
        labels=["model", "version"],
    )
    drifted_share = GaugeMetricFamily(
        "driftline_drift_features_drifted_ratio",
        "Share of features that drifted in the newest drift report (0 to 1).",
        labels=["model"],
    )
    verdict = GaugeMetricFamily(
        "driftline_drift_detected",
        "1 when the newest drift report's verdict is drift (data drift, prediction drift or "
        "performance decay), 0 when it is no_drift.",
        labels=["model", "champion_version"],
    )
    report_time = GaugeMetricFamily(
        "driftline_drift_report_timestamp_seconds",
        "When the newest drift report was written (Unix time).",
        labels=["model"],
    )
    decision = GaugeMetricFamily(
        "driftline_last_decision_timestamp_seconds",
        "When the newest decision was recorded (Unix time), labelled with the decision "
        "(promoted, rejected, inconclusive, manual_promote, rollback, rollout_*) and version.",
        labels=["model", "decision", "version"],
    )
    retrain = GaugeMetricFamily(
        "driftline_last_successful_retrain_timestamp_seconds",
        "When a retrain last reached a decision about its challenger (audit action promoted, "
        "rejected, inconclusive or rollout_started), Unix time.",
        labels=["model"],
    )
    events = GaugeMetricFamily(
        "driftline_drift_events",
        "Drift events by status: new (not yet seen), emitted (asset event raised, waiting for "
        "a retrain), consumed, suppressed (cooldown), rejected (malformed).",
        labels=["model", "status"],
    )
    events_oldest = GaugeMetricFamily(
        "driftline_drift_events_oldest_timestamp_seconds",
        "Last change of the oldest drift event in each status (Unix time); an old new or "
        "emitted event is stuck on its way to a retrain.",
        labels=["model", "status"],
    )
    share = GaugeMetricFamily(
        "driftline_rollout_share_ratio",
        "Share of traffic the canary candidate gets (0 to 1), from the newest rollout audit row.",
        labels=["model"],
    )
    step = GaugeMetricFamily(
        "driftline_rollout_step",
        "Index of the canary's step in the spec's rollout steps (-1 after an abort), from the "
        "newest rollout audit row.",
        labels=["model"],
    )
    aborts = CounterMetricFamily(
        "driftline_rollout_aborts",
        "Canary rollouts aborted (audit rows rollout_aborted).",
        labels=["model"],
    )
    last_abort = GaugeMetricFamily(
        "driftline_rollout_last_abort_timestamp_seconds",
        "When the newest canary rollout was aborted (Unix time).",
        labels=["model"],
    )

    for model, report in sorted(snapshot.reports.items()):
        for feature, column in sorted((report["columns"] or {}).items()):
            if column.get("score") is None:
                continue
            method = str(column.get("method", ""))
            score.add_metric([model, feature, method], float(column["score"]))
            if column.get("threshold") is not None:
                threshold.add_metric([model, feature, method], float(column["threshold"]))
        offline = report["prediction"] or {}
        method = str(offline.get("method", ""))
        if offline.get("score") is not None:
            prediction.add_metric([model, "offline", method], float(offline["score"]))
        if offline.get("threshold") is not None:
            prediction_threshold.add_metric([model, method], float(offline["threshold"]))
        live = offline.get("served") or {}
        if live.get("score") is not None:
            prediction.add_metric(
                [model, "served", str(live.get("method", method))], float(live["score"])
            )
        if "rows" in live:
            by_version = live.get("versions") or {}
            for version, rows in sorted(by_version.items()):
                served.add_metric([model, str(version)], float(rows))
            if not by_version:
                served.add_metric([model, ""], 0.0)
        drifted_share.add_metric([model], float(report["share_drifted"]))
        verdict.add_metric(
            [model, report["champion_version"] or ""], 1.0 if report["verdict"] == "drift" else 0.0
        )
        report_time.add_metric([model], report["created_at"].timestamp())

    for model in snapshot.models:
        actions = snapshot.audit.get(model, {})
        newest = _newest(row for action, row in actions.items() if is_decision(action))
        if newest is not None:
            decision.add_metric(
                [model, newest["action"], newest["challenger_version"] or ""],
                newest["created_at"].timestamp(),
            )
        retrained = _newest(actions[a] for a in RETRAIN_DECISIONS if a in actions)
        if retrained is not None:
            retrain.add_metric([model], retrained["created_at"].timestamp())
        rollout = _newest(
            row for action, row in actions.items() if action.startswith(ROLLOUT_PREFIX)
        )
        if rollout is not None:
            carried = rollout["metrics"] or {}
            if carried.get("share") is not None:
                share.add_metric([model], float(carried["share"]))
            if carried.get("step") is not None:
                step.add_metric([model], float(carried["step"]))
        aborted = actions.get(ROLLOUT_ABORTED)
        aborts.add_metric([model], float(aborted["count"] if aborted else 0))
        if aborted:
            last_abort.add_metric([model], aborted["created_at"].timestamp())

        counts = snapshot.events.get(model, {})
        for status in monitoring.EVENT_STATUSES:
            found = counts.get(status)
            events.add_metric([model, status], float(found["count"] if found else 0))
            if found and found["oldest"] is not None:
                events_oldest.add_metric([model, status], found["oldest"].timestamp())

    return [
        score,
        threshold,
        prediction,
        prediction_threshold,
        served,
        drifted_share,
        verdict,
        report_time,
        decision,
        retrain,
        events,
        events_oldest,
        share,
        step,
        aborts,
        last_abort,
    ]


@dataclass(eq=False)  # registries key collectors by identity
class StoreCollector(Collector):
    """Reads the store at most once per ``cache_seconds``; see the module docstring."""

    url: str | None = None
    cache_seconds: float = DEFAULT_CACHE_SECONDS
    read: Callable[[str | None], Snapshot] = read_snapshot
    clock: Callable[[], float] = time.monotonic
    reads: int = 0
    failures: dict[str, int] = field(default_factory=lambda: {"unavailable": 0, "error": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _read_at: float | None = field(default=None, repr=False)
    _families: list[Metric] = field(default_factory=list, repr=False)
    _up: bool = False
    _duration: float = 0.0
    _last_success: float | None = None

    def describe(self) -> list[Metric]:
        return []  # registering the collector must not read the store

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.cache_seconds:
                self._refresh()
                self._read_at = self.clock()
            families, up = list(self._families), self._up
        yield from families
        yield from self._own_metrics(up)

    def _refresh(self) -> None:
        started = time.perf_counter()
        self.reads += 1
        try:
            snapshot = self.read(self.url)
            families = store_metrics(snapshot)
        except Unavailable as exc:
            self.failures["unavailable"] += 1
            self._families, self._up = [], False
            log.warning("exporter: %s", exc)
        except Exception:
            self.failures["error"] += 1
            self._families, self._up = [], False
            log.exception("exporter: reading the monitoring store failed")
        else:
            self._families, self._up = families, True
            self._last_success = time.time()
        self._duration = time.perf_counter() - started

    def _own_metrics(self, up: bool) -> list[Metric]:
        store_up = GaugeMetricFamily(
            "driftline_exporter_store_up",
            "1 when the exporter's last read of the monitoring store succeeded, 0 when the "
            "store could not be read (then no driftline store series are exported).",
            value=1.0 if up else 0.0,
        )
        reads = CounterMetricFamily(
            "driftline_exporter_store_reads",
            "Reads of the monitoring store (at most one per cache period, whatever the scrapes).",
            value=float(self.reads),
        )
        failures = CounterMetricFamily(
            "driftline_exporter_store_read_failures",
            "Failed reads of the monitoring store: unavailable (cannot reach it) or error.",
            labels=["kind"],
        )
        for kind, count in sorted(self.failures.items()):
            failures.add_metric([kind], float(count))
        duration = GaugeMetricFamily(
            "driftline_exporter_store_read_duration_seconds",
            "How long the last read of the monitoring store took.",
            value=self._duration,
        )
        found = [store_up, reads, failures, duration]
        if self._last_success is not None:
            found.append(
                GaugeMetricFamily(
                    "driftline_exporter_last_successful_read_timestamp_seconds",
                    "When the exporter last read the monitoring store successfully (Unix time).",
                    value=self._last_success,
                )
            )
        return found


# --- the HTTP server ------------------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


def wsgi_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """``/metrics`` in Prometheus' text format, ``/health`` for health checks, else 404."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/health":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        body = b"driftline exporter: metrics at /metrics, health at /health\n"
        status = "200 OK" if path == "/" else "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body]

    return app


def build_server(host: str, port: int, collector: StoreCollector) -> WSGIServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return make_server(
        host, port, wsgi_app(registry), server_class=_ThreadingServer, handler_class=_QuietHandler
    )


def serve(
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    url: str | None = None,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
) -> None:
    """Serve until the process is stopped."""
    server = build_server(host, port, StoreCollector(url=url, cache_seconds=cache_seconds))
    log.info("driftline exporter on http://%s:%d/metrics", host, port)
    server.serve_forever()

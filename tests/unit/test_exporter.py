"""The exporter's collector in process: what its series mean, its cache, and a store that
cannot be read (store_up 0, never an exception)."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline import monitoring
from driftline.errors import Unavailable
from driftline.exporter import Snapshot, StoreCollector, read_snapshot, store_metrics
from tests.exporter_rows import MODEL, OTHER, write_known_rows


def _samples(families) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    found = [
        value
        for (n, found_labels), value in samples.items()
        if n == name and labels.items() <= dict(found_labels).items()
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory):
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'monitoring.db'}"
    return write_known_rows(url)


def test_dry_runs_failures_and_event_audits_are_neither_decisions_nor_retrains(known) -> None:
    samples = _samples(store_metrics(read_snapshot(known.url)))
    decision = [
        dict(labels)
        for (name, labels), _ in samples.items()
        if name == "driftline_last_decision_timestamp_seconds" and dict(labels)["model"] == MODEL
    ]
    # the newest rows are dry_run, failed and drift_event_suppressed; the decision is older
    assert decision == [{"model": MODEL, "decision": "rollout_step", "version": "6"}]
    retrain = _value(samples, "driftline_last_successful_retrain_timestamp_seconds", model=MODEL)
    assert retrain == pytest.approx(known.times["retrain"])
    # manual promotions and rollbacks are decisions, not retrains
    assert not [
        1
        for (name, labels), _ in samples.items()
        if name == "driftline_last_successful_retrain_timestamp_seconds"
        and dict(labels)["model"] == OTHER
    ]


def test_a_second_abort_is_counted_and_its_share_is_zero(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    for version in ("4", "5"):
        monitoring.append_audit(
            url=url, model=MODEL, action="rollout_started", actor="t",
            challenger_version=version, metrics={"share": 0.05, "step": 0},
        )  # fmt: skip
        monitoring.append_audit(
            url=url, model=MODEL, action="rollout_aborted", actor="t",
            challenger_version=version, metrics={"share": 0.0, "step": -1},
        )  # fmt: skip
    samples = _samples(store_metrics(read_snapshot(url)))
    assert _value(samples, "driftline_rollout_aborts_total", model=MODEL) == 2
    assert _value(samples, "driftline_rollout_share_ratio", model=MODEL) == 0
    assert _value(samples, "driftline_rollout_step", model=MODEL) == -1
    # no drift event yet: every status is a zero, so `== 0` and rate() work from the start
    assert _value(samples, "driftline_drift_events", model=MODEL, status="new") == 0


def test_a_report_without_served_traffic_says_zero_rows(tmp_path: Path) -> None:
    from tests.exporter_rows import _report

    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    _report(
        url,
        MODEL,
        verdict="no_drift",
        columns={},
        prediction={"score": 0.01, "method": "psi", "threshold": 0.2, "served": {"rows": 0}},
    )
    samples = _samples(store_metrics(read_snapshot(url)))
    assert _value(samples, "driftline_drift_served_rows", model=MODEL) == 0
    assert not [
        k for k in samples if k[0] == "driftline_prediction_drift_score" and "served" in str(k)
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_scrapes_within_the_cache_period_read_the_store_once(known) -> None:
    clock = Clock()
    collector = StoreCollector(url=known.url, cache_seconds=10, clock=clock)
    first = _samples(collector.collect())
    for _ in range(50):
        clock.now += 0.1
        assert _samples(collector.collect()).keys() == first.keys()
    assert collector.reads == 1
    clock.now += 10
    list(collector.collect())
    assert collector.reads == 2
    assert _value(_samples(collector.collect()), "driftline_exporter_store_reads_total") == 2


@pytest.mark.parametrize(
    ("failure", "kind"),
    [(Unavailable("monitoring store unreachable at postgresql://db"), "unavailable"),
     (RuntimeError("a bug"), "error")],
)  # fmt: skip
def test_a_store_that_cannot_be_read_is_store_up_0_and_no_store_series(
    failure: Exception, kind: str
) -> None:
    clock = Clock()
    calls = []

    def read(url: str | None) -> Snapshot:
        calls.append(url)
        raise failure

    collector = StoreCollector(url="x", cache_seconds=5, read=read, clock=clock)
    samples = _samples(collector.collect())
    assert _value(samples, "driftline_exporter_store_up") == 0
    assert _value(samples, "driftline_exporter_store_read_failures_total", kind=kind) == 1
    assert not [name for name, _ in samples if not name.startswith("driftline_exporter_")]
    clock.now += 1
    list(collector.collect())
    assert len(calls) == 1  # a store that is down is not hammered either

"""deploy/prometheus and deploy/grafana: promtool accepts the config and the rules, every
alert has a firing and a quiet unit test that pass, and the rules and the dashboard ask only
for series that exist (the exporter's, the scoring service's agreed names, Airflow's)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from driftline.settings import REPO_ROOT
from tests.prometheus import require_binary

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "driftline.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "driftline_test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "driftline.json"

# the scoring service's series, as agreed with it (labels model, version, arm)
SERVING = {
    "driftline_serving_requests_total",
    "driftline_serving_errors_total",
    "driftline_serving_request_seconds_bucket",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )


def test_promtool_accepts_the_config_and_its_rules() -> None:
    result = _promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_threshold_fails_the_rule_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    broken = RULES.read_text().replace(") > 0.05", ") > 0.2")
    assert broken != RULES.read_text()
    (tmp_path / "rules" / "driftline.yml").write_text(broken)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["tests"] = [t for t in tests["tests"] if t["name"].startswith("serving error rate")]
    (tmp_path / "tests" / "driftline_test.yml").write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", str(tmp_path / "tests" / "driftline_test.yml"))
    assert result.returncode != 0
    assert "alertname: DriftlineServingErrorRate" in result.stdout + result.stderr


def _alerts() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {"DriftlineDriftDetected", "DriftlineNoSuccessfulRetrain", "DriftlineCanaryAborted"} | {
        "DriftlineServingErrorRate",
        "DriftlineDriftEventsStuck",
    } <= set(_alerts())
    for alert in _alerts():
        assert cases.get(alert) == {True, False}, (
            f"{alert}: firing and quiet cases {cases.get(alert)}"
        )


def _metric_names(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    return set(re.findall(r"\b((?:driftline|airflow)_[a-zA-Z0-9_]+)", without_strings))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    from driftline.exporter import StoreCollector
    from tests.exporter_rows import write_known_rows

    url = f"sqlite:///{tmp_path_factory.mktemp('names') / 'monitoring.db'}"
    write_known_rows(url)
    names = set()
    for family in StoreCollector(url=url).collect():
        names.update(sample.name for sample in family.samples)
    return names


def test_the_rules_ask_only_for_series_that_exist(exported: set[str]) -> None:
    for alert, expression in _alerts().items():
        unknown = _metric_names(expression) - exported - SERVING
        assert not unknown, f"{alert} uses {unknown}, which nothing exports"


def _statsd_names() -> set[str]:
    mapping = yaml.safe_load((PROMETHEUS_DIR / "statsd-mapping.yml").read_text())
    names = set()
    for rule in mapping["mappings"]:
        base = rule["name"]
        names |= {base, f"{base}_bucket", f"{base}_count", f"{base}_sum", f"{base}_total"}
    return names


def test_the_dashboard_asks_only_for_series_that_exist(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(expressions) >= 10
    used = set()
    for expression in expressions:
        unknown = _metric_names(expression) - exported - SERVING - _statsd_names()
        assert not unknown, f"dashboard query {expression!r} uses {unknown}, which nothing exports"
        used |= _metric_names(expression)
    # the dashboard shows the store's series and the service's
    assert {
        "driftline_drift_score",
        "driftline_drift_events",
        "driftline_rollout_share_ratio",
    } <= used
    assert "driftline_serving_requests_total" in used
    datasources = {
        target.get("datasource", {}).get("uid")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    provisioned = yaml.safe_load(
        (REPO_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources == {source["uid"] for source in provisioned["datasources"]}

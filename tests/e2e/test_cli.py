"""The CLI against the running stack: status, human overrides with compare-and-set and
audit, refusals that change nothing, and `up` with its port taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from driftline import monitoring, registry
from tests.e2e.conftest import MODEL, RunningStack


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )


def test_status_json_shows_the_champion_and_its_decision(running_stack: RunningStack) -> None:
    result = _cli("status", "--json")
    assert result.returncode == 0, result.stderr
    (status,) = json.loads(result.stdout)
    champion = status["aliases"]["champion"]
    assert champion["version"] == registry.alias_version(MODEL, registry.CHAMPION)
    # the decisions, newest first, are the audit log's (whatever other tests added before)
    shown = status["decisions"]
    audit = monitoring.audit_log(MODEL, limit=len(shown))
    assert [d["action"] for d in shown] == [a["action"] for a in audit]
    first = monitoring.audit_log(MODEL, limit=500)[-1]  # `up`'s first champion
    assert first["action"] == "promoted"
    assert "no champion yet: the floors decide" in first["reasons"]


def test_promote_refuses_unknown_and_unvalidated_versions(running_stack: RunningStack) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    result = _cli("promote", "--version", "999", "--reason", "typo")
    assert result.returncode == 2
    assert result.stderr.strip() == "driftline: error: model 'fraud_detection' has no version 999"

    # a version registered outside the pipeline carries no passed validation
    source = registry.client().get_model_version(MODEL, champion).source
    stray = registry.client().create_model_version(
        MODEL, source=source, tags={"note": "registered by hand"}
    )
    result = _cli("promote", "--version", str(stray.version), "--reason", "trust me")
    assert result.returncode == 2
    assert "has no passed data validation on record (tag validation='missing')" in result.stderr
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion


def test_manual_promote_and_rollback_go_through_compare_and_set_and_audit(
    running_stack: RunningStack,
) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    # the first (cold) champion's own training run is a validated version to flip to and back
    candidates = [
        v.version
        for v in registry.client().search_model_versions(
            f"name='{MODEL}' and tags.validation='passed'"
        )
        if str(v.version) != champion
    ]
    if not candidates:  # a fresh stack has one validated version: train a dry-run challenger
        result = _cli("retrain", "--dry-run", "--reason", "a challenger for the override test")
        assert result.returncode == 0, result.stderr
        candidates = [registry.alias_version(MODEL, registry.CHALLENGER)]
    target = str(candidates[0])

    result = _cli("promote", "--version", target, "--reason", "incident 42: hand override")
    assert result.returncode == 0, result.stderr
    assert registry.alias_version(MODEL, registry.CHAMPION) == target
    assert registry.alias_version(MODEL, registry.PREVIOUS_CHAMPION) == champion
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["champion_before"], audit["champion_after"]) == (
        "manual_promote",
        champion,
        target,
    )
    assert audit["reason"] == "incident 42: hand override"

    result = _cli("rollback", "--reason", "incident 42 resolved")
    assert result.returncode == 0, result.stderr
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert monitoring.audit_log(MODEL)[0]["action"] == "rollback"


def test_up_is_safe_twice_and_names_a_taken_port(
    running_stack: RunningStack, tmp_path: Path
) -> None:
    again = _cli("up", "--port", str(running_stack.stack.port))
    assert again.returncode == 0 and "already up" in again.stdout

    elsewhere = {**os.environ, "DRIFTLINE_HOME": str(tmp_path / "other")}
    taken = _cli("up", "--port", str(running_stack.stack.port), env=elsewhere)
    assert taken.returncode == 2
    port = running_stack.stack.port
    assert (
        f"port {port} is already in use; free it or choose another with AIRFLOW_PORT=<port>"
        in taken.stderr
    )
    assert not (tmp_path / "other" / "run").exists()

"""fraud_detection_retrain end to end under `airflow dags test`, on a real Feast store and a
real MLflow registry in a temp directory. The tests run in order and share one state."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from driftline import monitoring, offline, registry
from driftline.datagen import generate
from driftline.feature_store import apply_repo
from driftline.lineage import RunContext, run_dir
from driftline.settings import get_settings
from driftline.specs import load_spec
from driftline.training_set import read_fingerprint
from tests.airflow_env import airflow_env, create_dag_run, migrated_database, run_airflow
from tests.conftest import EARLY_START, SMALL, isolate_environment

pytestmark = pytest.mark.airflow

DAG_ID = "fraud_detection_retrain"
AS_OF = "2026-02-10"  # data covers 2025-12-22 .. 2026-02-09; labels mature after 7 days
MODEL = "fraud_detection"


class Stack:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env

    def dags_test(self, conf: dict, logical_date: str = AS_OF) -> tuple[str, dict[str, str], str]:
        """Run the DAG once; returns (run state, task states, combined output)."""
        conf = {"end_date": AS_OF, **conf}
        result = run_airflow(
            ["dags", "test", DAG_ID, logical_date, "--conf", json.dumps(conf)],
            self.env,
            check=False,
        )
        with sqlite3.connect(self.home / "airflow" / "airflow.db") as db:
            run_id, state = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                (DAG_ID,),
            ).fetchone()
            tasks = dict(
                db.execute(
                    "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                    (DAG_ID, run_id),
                ).fetchall()
            )
        self.last_run_id = run_id
        return state, tasks, result.stdout + result.stderr

    def versions(self) -> list[str]:
        found = registry.client().search_model_versions(f"name='{MODEL}'")
        return sorted((str(v.version) for v in found), key=int)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, airflow_db_template: Path) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("retrain") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        generate(offline_dir=home / "offline", days=50, start=EARLY_START, **SMALL)
        apply_repo()
        migrated_database(airflow_db_template, home / "airflow")
        yield Stack(home, airflow_env(home / "airflow"))


def test_dry_run_trains_and_evaluates_but_moves_no_alias(stack: Stack) -> None:
    state, tasks, output = stack.dags_test({"dry_run": True, "reason": "dry run first"})
    assert state == "success", output[-3000:]
    assert tasks["keep_champion"] == "success" and tasks["promote"] == "skipped"
    assert registry.alias_version(MODEL, registry.CHAMPION) is None
    version = registry.alias_version(MODEL, registry.CHALLENGER)
    tags = registry.version_info(MODEL, version).tags
    assert tags["decision"] == "dry_run"
    assert "dry run: policy would promote" in tags["decision_reasons"]


def test_first_run_promotes_with_lineage(stack: Stack) -> None:
    before = stack.versions()
    state, tasks, output = stack.dags_test({"reason": "first champion"})
    assert state == "success", output[-3000:]
    assert tasks["promote"] == "success" and tasks["keep_champion"] == "skipped"
    assert len(stack.versions()) == len(before) + 1
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert champion == stack.versions()[-1]
    tags = registry.version_info(MODEL, champion).tags
    assert tags["decision"] == "promoted"
    assert tags["airflow_dag_id"] == DAG_ID and tags["airflow_run_id"] == stack.last_run_id
    assert tags["feature_service"] == "fraud_detection_v1"
    assert len(tags["training_set_sha256"]) == 64 and len(tags["git_commit"]) >= 7
    assert tags["triggered_by"] == "manual" or tags["triggered_by"].startswith("user:")
    assert tags["reason"] == "first champion"
    # logged with its signature (the spec's features) and no input example, whose serving
    # check MLflow cannot pass for category strings (a warning on every run)
    import mlflow

    registry.configure()
    logged = mlflow.models.get_model_info(f"models:/{MODEL}/{champion}")
    assert logged.signature.inputs.input_names() == load_spec(MODEL).feature_names
    assert logged.saved_input_example_info is None
    assert "Failed to validate serving input example" not in output
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["challenger_version"], audit["run_id"]) == (
        "promoted",
        champion,
        stack.last_run_id,
    )


def test_clearing_promote_or_train_makes_no_duplicate(stack: Stack) -> None:
    run_id = stack.last_run_id
    versions, champion = stack.versions(), registry.alias_version(MODEL, registry.CHAMPION)
    promoted_rows = [r for r in monitoring.audit_log(MODEL) if r["action"] == "promoted"]
    for task_id in ("train", "promote"):
        result = run_airflow(["tasks", "test", DAG_ID, task_id, run_id], stack.env, check=False)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert stack.versions() == versions
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert [r for r in monitoring.audit_log(MODEL) if r["action"] == "promoted"] == promoted_rows


def test_second_run_on_same_data_follows_policy(stack: Stack) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    state, tasks, output = stack.dags_test({"reason": "same data again"})
    assert state == "success", output[-3000:]
    # the same data and seed train the same model: no improvement, so the policy rejects
    assert tasks["promote"] == "skipped" and tasks["keep_champion"] == "success"
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    challenger = registry.alias_version(MODEL, registry.CHALLENGER)
    tags = registry.version_info(MODEL, challenger).tags
    assert tags["decision"] == "rejected"
    assert "pr_auc improves by +0.0000" in tags["decision_reasons"]
    assert monitoring.audit_log(MODEL)[0]["action"] == "rejected"


def test_a_champion_trained_on_the_challengers_holdout_is_inconclusive(stack: Stack) -> None:
    # the champion (as of 2026-02-10) trained until 2026-01-30; as of 2026-02-06 the window
    # ends on 01-30, so the challenger's holdout (01-26 .. 01-30) holds only rows the
    # champion learned from. The old evaluation compared on them; now there is no fair set.
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert registry.version_info(MODEL, champion).tags["trained_until"] == (
        "2026-01-30T00:00:00+00:00"
    )
    state, tasks, output = stack.dags_test({"end_date": "2026-02-06", "reason": "too early"})
    assert state == "success", output[-3000:]
    assert tasks["promote"] == "skipped" and tasks["keep_champion"] == "success"
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    challenger = registry.alias_version(MODEL, registry.CHALLENGER)
    tags = registry.version_info(MODEL, challenger).tags
    assert tags["decision"] == "inconclusive"
    assert tags["trained_until"] == "2026-01-26T00:00:00+00:00"
    assert tags["as_of"] == "2026-02-06T00:00:00+00:00"
    assert "inconclusive: no fair comparison — 0 labeled rows" in tags["decision_reasons"]
    assert "[2026-01-30T00:00:00+00:00, 2026-01-30T00:00:00+00:00)" in tags["decision_reasons"]
    assert "a fair comparison becomes possible as of 2026-02-0" in tags["decision_reasons"]
    audit = monitoring.audit_log(MODEL)[0]
    assert (audit["action"], audit["champion_after"]) == ("inconclusive", champion)
    assert audit["metrics"]["comparison_window"] == [
        "2026-01-30T00:00:00+00:00",
        "2026-01-30T00:00:00+00:00",
    ]


def test_drift_started_and_manual_runs_use_one_clock(stack: Stack) -> None:
    """A drift-started run at 10:38 on the wall clock, then an operator's run at 10:45: the
    data ends on 2026-02-09, so both train as of 2026-02-10 00:00 UTC on the same window."""
    drift_run = "asset_triggered__2026-11-26T10:38:29+00:00"
    create_dag_run(
        stack.env,
        DAG_ID,
        drift_run,
        run_type="asset_triggered",
        run_after="2026-11-26T10:38:29+00:00",
    )
    result = run_airflow(
        ["tasks", "test", DAG_ID, "build_training_set", drift_run], stack.env, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    runs = get_settings().runs_dir
    drift_window = read_fingerprint(
        run_dir(runs, MODEL, RunContext(dag_id=DAG_ID, run_id=drift_run))
    ).window

    state, _, output = stack.dags_test(
        {"end_date": None, "dry_run": True, "reason": "operator, right after the drift run"},
        logical_date="2026-11-26T10:45:00+00:00",
    )
    assert state == "success", output[-3000:]
    manual_window = read_fingerprint(
        run_dir(runs, MODEL, RunContext(dag_id=DAG_ID, run_id=stack.last_run_id))
    ).window
    assert (
        drift_window
        == manual_window
        == {
            "start": "2026-01-06T00:00:00+00:00",
            "end": "2026-02-03T00:00:00+00:00",
            "as_of": "2026-02-10T00:00:00+00:00",
        }
    )
    tags = registry.version_info(MODEL, registry.alias_version(MODEL, registry.CHALLENGER)).tags
    assert tags["as_of"] == "2026-02-10T00:00:00+00:00"


def test_an_unreadable_champion_fails_evaluate_and_promotes_nothing(stack: Stack) -> None:
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    location = Path(
        registry.client().get_model_version_download_uri(MODEL, champion).removeprefix("file://")
    )
    assert location.is_dir(), location
    hidden = location.with_name(location.name + ".hidden")
    audit_before = monitoring.audit_log(MODEL)
    location.rename(hidden)
    try:
        result = run_airflow(
            ["tasks", "test", DAG_ID, "evaluate", stack.last_run_id], stack.env, check=False
        )
    finally:
        hidden.rename(location)
    output = result.stdout + result.stderr
    # an outage, not bad data: the task fails for Airflow to retry (`tasks test` exits 0)
    assert f"Unavailable: champion {MODEL} v{champion} (alias champion) cannot be loaded" in (
        output
    ), output[-3000:]
    assert "new_state=up_for_retry" in output and "new_state=success" not in output
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert monitoring.audit_log(MODEL) == audit_before


def test_corrupted_newest_partition_stops_at_validation(stack: Stack) -> None:
    newest = offline.list_days(stack.home / "offline")[-1]
    path = offline.partition_path(stack.home / "offline", "transactions", newest)
    backup = path.with_suffix(".orig")
    shutil.copy(path, backup)
    frame = pd.read_parquet(path)
    frame.loc[::3, "amount"] = -frame.loc[::3, "amount"]
    frame.loc[::5, "channel"] = "telepathy"
    frame = pd.concat([frame, frame.head(40)])
    path.unlink()
    offline.write_partition(
        stack.home / "offline", "transactions", newest, pa.Table.from_pandas(frame)
    )

    versions, champion = stack.versions(), registry.alias_version(MODEL, registry.CHAMPION)
    try:
        state, tasks, output = stack.dags_test({"reason": "corrupted batch"})
    finally:
        shutil.move(backup, path)
    assert state == "failed"
    assert tasks["build_training_set"] == "success"
    assert tasks["validate_data"] == "failed"
    assert tasks["train"] == "upstream_failed" and tasks["promote"] == "upstream_failed"
    assert stack.versions() == versions
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    for check in ("recent.range[amount]", "recent.categories[channel]", "recent.duplicate_keys"):
        assert check in output
    stored = monitoring.validation_log(MODEL)[0]
    assert not stored["passed"]
    assert {c["name"] for c in stored["failed_checks"]} >= {
        "recent.range[amount]",
        "recent.duplicate_keys",
    }
    assert isinstance(newest, date)

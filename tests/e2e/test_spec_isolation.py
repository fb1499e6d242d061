"""A broken model spec on the running stack costs only its own model.

The spec is added beside the good one while the stack runs; after the dag-processor's next
parse the REST API still lists every DAG of the good model and feature_materialization,
none of the broken model, and one import error (dags/model_specs.py) names the broken file,
the field and the nearest valid name. Removing the spec clears the error.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import yaml

from tests.e2e.conftest import MODEL, RunningStack, wait_for

GOOD_DAGS = {"feature_materialization", f"{MODEL}_retrain", f"{MODEL}_drift_monitor"}


def _errors_naming(stack: RunningStack, text: str) -> list[dict]:
    errors = stack.get("/api/v2/importErrors?limit=100")["import_errors"]
    return [error for error in errors if text in error["stack_trace"]]


def test_a_broken_spec_costs_only_its_own_model(running_stack: RunningStack) -> None:
    models = Path(os.environ["DRIFTLINE_MODELS_DIR"])
    raw = yaml.safe_load((models / f"{MODEL}.yaml").read_text())
    raw["name"] = "fraud_broken"
    raw["validation"]["ranges"] = {"amout": [0.01, 100000]}
    broken = models / "fraud_broken.yaml"
    written = time.time()
    broken.write_text(yaml.safe_dump(raw))
    try:
        (error,) = wait_for(
            "an import error naming the broken spec",
            lambda: _errors_naming(running_stack, str(broken)),
            timeout=300,
            interval=5,
        )
        # Airflow records the file relative to its DAG bundle (the dags folder)
        assert Path(error["filename"]).name == "model_specs.py", error["filename"]
        assert (
            f"model spec {broken} is malformed: validation.ranges.amout: 'amout' is not a "
            "feature of this model (nearest valid name: 'amount')"
        ) in error["stack_trace"]

        def parsed_since_the_break() -> dict[str, dict] | None:
            dags = {d["dag_id"]: d for d in running_stack.get("/api/v2/dags?limit=100")["dags"]}
            fresh = all(
                dag_id in dags
                and datetime.fromisoformat(dags[dag_id]["last_parsed_time"]).timestamp() > written
                for dag_id in GOOD_DAGS
            )
            return dags if fresh else None

        dags = wait_for(
            "the good model's DAG files re-parsed with the broken spec beside it",
            parsed_since_the_break,
            timeout=300,
            interval=5,
        )
        assert set(dags) >= GOOD_DAGS
        assert not [dag_id for dag_id in dags if dag_id.startswith("fraud_broken")]
        assert all(not dags[dag_id]["has_import_errors"] for dag_id in GOOD_DAGS)
        all_errors = running_stack.get("/api/v2/importErrors?limit=100")["import_errors"]
        assert [e["filename"] for e in all_errors] == [error["filename"]]
    finally:
        broken.unlink()
    wait_for(
        "the import error to clear once the spec is removed",
        lambda: not _errors_naming(running_stack, str(broken)),
        timeout=300,
        interval=5,
    )

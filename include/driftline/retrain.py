"""The retrain loop as stage functions: what each task of ``<model>_retrain`` calls.

Every stage takes and returns plain values (model name, run directory, version), so Airflow
passes references through XCom and the CLI and the benchmark can run the same stages in one
process. Each stage is safe to re-run for the same run.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from driftline import monitoring
from driftline.lineage import RunContext, run_dir
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec, load_spec

log = logging.getLogger(__name__)

DECISION_FILE = "decision.json"


def build(
    model: str,
    *,
    as_of: datetime,
    context: RunContext,
    window_days: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """build_training_set: returns the run directory and the fingerprint."""
    from driftline.training_set import build_training_set

    settings = settings or get_settings()
    _settle_promotions(model, context, settings)
    spec = load_spec(model, settings.models_dir)
    directory = run_dir(settings.runs_dir, model, context)
    fingerprint = build_training_set(
        spec, as_of=as_of, run_dir=directory, window_days=window_days, settings=settings
    )
    return {"run_dir": str(directory), "fingerprint": fingerprint.as_dict()}


def _settle_promotions(model: str, context: RunContext, settings: Settings) -> None:
    """Every retrain starts by finishing or undoing what a killed promotion left behind.

    Best effort: an unreachable MLflow is the promote step's problem (it settles again and
    retries), not a reason to stop building the training set.
    """
    from driftline.errors import Unavailable
    from driftline.promotion import settle

    try:
        settle(model, actor=f"retrain {context.key}", settings=settings)
    except Unavailable as exc:
        log.warning("could not settle %s's promotions before training: %s", model, exc)


def validate(
    model: str, directory: str, *, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    """validate_data: the gate. Raises ValidationFailed naming every failed check."""
    from driftline.training_set import RECENT_FILE, TRAINING_FILE, Window, read_fingerprint
    from driftline.validation import ValidationFailed, enforce
    from driftline.validation import validate as run_checks

    settings = settings or get_settings()
    spec = load_spec(model, settings.models_dir)
    path = Path(directory)
    fingerprint = read_fingerprint(path)
    window = Window(**{k: datetime.fromisoformat(v) for k, v in fingerprint.window.items()})
    report = run_checks(
        spec,
        _checked_columns(spec, path / TRAINING_FILE),
        _checked_columns(spec, path / RECENT_FILE),
        window,
        source=f"{fingerprint.offline_dir} via feature service {spec.feature_service}",
        schema_changes=fingerprint.schema_changes,
    )
    json_path, html_path = report.write(path)
    report_uri = _log_validation(model, report.passed, [json_path, html_path], context, settings)
    monitoring.record_validation(
        model=model,
        passed=report.passed,
        failed_checks=[check.__dict__ for check in report.failed],
        fingerprint=fingerprint.as_dict(),
        report_uri=report_uri,
        dag_id=context.dag_id,
        run_id=context.run_id,
        url=settings.monitoring_db_url,
    )
    try:
        enforce(report)
    except ValidationFailed as failed:
        failed.report_uri = report_uri
        raise
    log.info(report.summary())
    return {"passed": True, "checks": len(report.checks), "report_uri": report_uri}


def _checked_columns(spec: ModelSpec, path: Path) -> Any:
    """The columns of a training-set file the validation gate checks: keys, time, features,
    label and ranged columns. The rest (transaction ids, label times) is not read: the ids
    alone are a third of the frame's memory. A missing column is left for the gate to name."""
    import pandas as pd
    import pyarrow.parquet as pq

    wanted = [
        *spec.entity_keys,
        spec.timestamp_column,
        *spec.feature_names,
        spec.label,
        *spec.validation.ranges,
        *spec.validation.category_shares,
    ]
    present = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in dict.fromkeys(wanted) if c in present])


def _log_validation(
    model: str, passed: bool, files: list[Path], context: RunContext, settings: Settings
) -> str:
    """Keep the report in MLflow (experiment ``<model>_validation``), failed ones included."""
    import mlflow

    from driftline import registry

    experiment = registry.experiment_id(f"{model}_validation", settings)
    with mlflow.start_run(experiment_id=experiment, run_name=f"validation {context.run_id}") as run:
        mlflow.set_tags({**context.tags(), "passed": str(passed).lower()})
        for file in files:
            mlflow.log_artifact(str(file), artifact_path="validation")
    return f"runs:/{run.info.run_id}/validation/{files[-1].name}"


def train(
    model: str, directory: str, *, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    from driftline.training import train as run_training

    settings = settings or get_settings()
    spec = load_spec(model, settings.models_dir)
    return run_training(spec, run_dir=Path(directory), context=context, settings=settings).as_dict()


def evaluate(
    model: str, directory: str, version: str, *, settings: Settings | None = None
) -> dict[str, Any]:
    from driftline.evaluation import evaluate as run_evaluation

    settings = settings or get_settings()
    spec = load_spec(model, settings.models_dir)
    return run_evaluation(
        spec, run_dir=Path(directory), challenger_version=version, settings=settings
    ).as_dict()


def decide(
    model: str, directory: str, *, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    """Apply the spec's promotion policy to the evaluation; writes decision.json.

    ``promote`` moves the champion; ``reject`` and ``inconclusive`` both take the
    keep-champion branch (the run succeeds), with the outcome and its reasons recorded."""
    from driftline.evaluation import read_evaluation
    from driftline.files import write_json
    from driftline.policy import REJECT, Decision
    from driftline.policy import decide as apply_policy

    settings = settings or get_settings()
    spec = load_spec(model, settings.models_dir)
    evaluation = read_evaluation(Path(directory))
    decision = apply_policy(spec.promotion, evaluation.evidence())
    reasons = [*evaluation.notes, *decision.reasons]
    if context.dry_run:
        decision = Decision(REJECT, [f"dry run: policy would {decision.outcome}", *reasons])
    else:
        decision = Decision(decision.outcome, reasons)
    result = {
        **decision.as_dict(),
        "challenger_version": evaluation.challenger_version,
        "champion_version": evaluation.champion_version,
        "challenger_metrics": evaluation.challenger_metrics,
        "champion_metrics": evaluation.champion_metrics,
        "as_of": evaluation.as_of,
        "comparison_window": evaluation.comparison_window,
        "comparison_rows": evaluation.comparison_rows,
        "comparison_positives": evaluation.comparison_positives,
        "trained_until": evaluation.trained_until,
        "fair_from": evaluation.fair_from,
        "interval": evaluation.interval,
        "slices": evaluation.slices,
    }
    result["route"] = route(spec, result)
    write_json(Path(directory) / DECISION_FILE, result)
    log.info("%s: %s — %s", model, decision.outcome, "; ".join(decision.reasons))
    return result


def route(spec: ModelSpec, decision: dict[str, Any]) -> str:
    """The retrain's next task: ``promote`` (direct, or the first champion: a canary needs a
    champion to compare with), ``start_rollout`` (canary) or ``keep_champion``."""
    if not decision["promote"]:
        return "keep_champion"
    if spec.rollout.mode == "canary" and decision["champion_version"] is not None:
        return "start_rollout"
    return "promote"


def _decision(directory: str) -> dict[str, Any]:
    return json.loads((Path(directory) / DECISION_FILE).read_text())


def _evidence(decision: dict[str, Any]) -> dict[str, Any]:
    """What the audit keeps of a decision: metrics, the comparison window, interval, slices."""
    return {
        "challenger": decision["challenger_metrics"],
        "champion": decision["champion_metrics"],
        "as_of": decision.get("as_of"),
        "comparison_window": decision.get("comparison_window"),
        "comparison_rows": decision.get("comparison_rows"),
        "interval": decision.get("interval"),
        "slices": decision.get("slices"),
    }


def promote(
    model: str, directory: str, *, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    from driftline.promotion import promote as move_champion

    decision = _decision(directory)
    return move_champion(
        model,
        decision["challenger_version"],
        expected_champion=decision["champion_version"],
        context=context,
        reasons=decision["reasons"],
        metrics=_evidence(decision),
        settings=settings,
    ).as_dict()


def start_rollout(
    model: str, directory: str, *, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    """The canary branch: the challenger becomes the candidate at the first share (or is held
    back while another rollout is open); the champion does not move."""
    from driftline.rollout import start

    decision = _decision(directory)
    return start(
        model,
        decision["challenger_version"],
        champion=decision["champion_version"],
        context=context,
        reasons=decision["reasons"],
        metrics=_evidence(decision),
        settings=settings,
    ).as_dict()


def keep_champion(
    model: str, directory: str, *, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    """The rejected, inconclusive or dry-run branch: the challenger keeps its reasons,
    nothing moves."""
    from driftline.policy import INCONCLUSIVE
    from driftline.promotion import record_rejection

    decision = _decision(directory)
    return record_rejection(
        model,
        decision["challenger_version"],
        context=context,
        reasons=decision["reasons"],
        metrics=_evidence(decision),
        champion=decision["champion_version"],
        inconclusive=decision["outcome"] == INCONCLUSIVE,
        settings=settings,
    ).as_dict()


def run_all(
    model: str,
    *,
    as_of: datetime,
    context: RunContext,
    window_days: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Every stage in one process, in DAG order (the CLI's `driftline retrain`)."""
    built = build(model, as_of=as_of, context=context, window_days=window_days, settings=settings)
    directory = built["run_dir"]
    validate(model, directory, context=context, settings=settings)
    trained = train(model, directory, context=context, settings=settings)
    evaluate(model, directory, trained["version"], settings=settings)
    decision = decide(model, directory, context=context, settings=settings)
    if decision["route"] == "promote":
        outcome = promote(model, directory, context=context, settings=settings)
    elif decision["route"] == "start_rollout":
        outcome = start_rollout(model, directory, context=context, settings=settings)
    else:
        outcome = keep_champion(model, directory, context=context, settings=settings)
    return {"run_dir": directory, "decision": decision, "outcome": outcome}

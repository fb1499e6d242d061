"""
### <model>_retrain

Turns fresh data into a better model, or refuses to, and says why. One DAG per model spec
in `include/models/` (`fraud_detection_retrain` for the shipped example).

**Triggered by** the spec's weekly cron (`schedule.retrain`), **or** by drift: an event on
the asset `drift://<model>` — from the model's drift monitor, from the Airflow REST API, or
from a row in the monitoring store's `drift_events` table (an AssetWatcher in the
triggerer) — or by an operator with the trigger form. At most one run at a time.

**Storm protection**: `admit_trigger` lets at most one drift-triggered run through per
`drift.cooldown_hours`. Events that arrive together collapse into one run; a drift-triggered
run inside the cooldown skips every task and marks its events *suppressed* with the reason.
Every event records the run that consumed it.

**Tasks**
0. `admit_trigger` — storm protection for drift-triggered runs (see above).
1. `build_training_set` — matured-label entity rows of the training window joined
   point-in-time with the model's Feast feature service; written to the run's directory
   with a fingerprint (hash, rows, window, feature service).
2. `validate_data` — the gate: columns, dtypes, row count, null rates, ranges, infinities,
   duplicate keys, label rate, future timestamps, window coverage, feature freshness,
   leakage. A failure fails the run here, naming every failed check with its observed value
   and threshold; nothing is trained or registered, the champion is untouched. Report:
   `validation.html` in the run directory.
3. `train` — XGBoost with the spec's parameters on a time split, early-stopped on the
   validation days; registers a new version with its lineage and points `challenger` at it.
4. `evaluate` — champion and challenger on the same, newest holdout; an Evidently report of
   the holdout against the training reference is logged to the challenger's MLflow run.
5. `decide` — the spec's promotion policy. It branches: `promote` (compare-and-set the
   `champion` alias; `previous_champion` keeps the old one) or `keep_champion` (the
   challenger keeps its reasons as tags). A rejection is a skipped `promote`, not a failure.
6. `notify` — one summary of the run.

**Params**
- `window_days` — days of matured labels to train on.
- `end_date` — the as-of date (YYYY-MM-DD); empty means the run's data interval end.
  Labels younger than the spec's `label_delay_days` are not used.
- `dry_run` — train and evaluate, never move an alias.
- `reason` — free text, recorded in the audit log and on the model version.

Re-running any task of a run is safe: a run registers at most one version and promotes at
most once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException
from driftline_airflow.assets import watched_drift_asset
from driftline_airflow.dag_args import default_args, optional_date
from driftline_airflow.links import (
    MlflowRunLink,
    ModelVersionLink,
    ReportLink,
    with_links,
)
from driftline_airflow.notifiers import DriftlineNotifier

from driftline.specs import ModelSpec, load_specs

DOC = __doc__


def _as_of(
    params: dict[str, Any], data_interval_end: datetime | None, events: list[dict]
) -> datetime:
    """The param if given; for a run started by the drift monitor, the end of the window it
    found drift in; else the run's data interval end."""
    if params.get("end_date"):
        day = datetime.fromisoformat(params["end_date"])
        return day if day.tzinfo else day.replace(tzinfo=UTC)
    windows = [
        e["extra"]["window"][1] for e in events if isinstance(e["extra"].get("window"), list)
    ]
    if windows:
        return max(datetime.fromisoformat(end) for end in windows)
    return data_interval_end or datetime.now(UTC)


def build_retrain_dag(spec: ModelSpec, known_models: list[str]) -> Any:
    model = spec.name
    minimum_window = spec.training.validation_days + spec.training.holdout_days + 1

    @dag(
        dag_id=f"{model}_retrain",
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(spec.schedule.retrain, timezone="UTC"),
            assets=watched_drift_asset(model, known_models, spec.drift.event_poll_seconds),
        ),
        # no start_date: an unpaused DAG waits for its next cron time instead of running
        # the last one it "missed" (CronTriggerTimetable.run_immediately)
        catchup=False,
        max_active_runs=1,
        default_args=default_args(spec.owner),
        tags=["driftline", "retrain", model, *spec.tags],
        doc_md=f"**{model}** — {spec.description}\n\n" + DOC.replace("<model>", model),
        params={
            "window_days": Param(
                spec.training.window_days,
                type="integer",
                minimum=minimum_window,
                maximum=365,
                title="Training window (days)",
                description=f"Days of matured labels to train on ({minimum_window}–365).",
            ),
            "end_date": optional_date("As-of date", "the run's data interval end"),
            "dry_run": Param(
                False,
                type="boolean",
                title="Dry run",
                description="Train and evaluate, never move an alias.",
            ),
            "reason": Param(
                None,
                type=["null", "string"],
                maxLength=500,
                title="Reason",
                description="Why this run; recorded in the audit log.",
            ),
        },
        render_template_as_native_obj=True,
    )
    def retrain() -> None:
        from driftline_airflow.context import asset_events, run_context

        @task.short_circuit
        def admit_trigger() -> bool:
            import logging

            from driftline.events import admit_drift_run
            from driftline.specs import load_spec

            context = get_current_context()
            dag_run = context["dag_run"]
            if run_context(context).run_type != "asset_triggered":
                return True
            admission = admit_drift_run(
                model,
                asset_events(dag_run),
                context=run_context(context),
                at=dag_run.run_after,
                # read now, not at parse time: a changed cooldown applies to the next event
                cooldown_hours=load_spec(model).drift.cooldown_hours,
            )
            logging.getLogger("driftline.events").info("%s", admission.message)
            return admission.admitted

        @task
        def build_training_set(data_interval_end: datetime | None = None) -> dict[str, Any]:
            from driftline import retrain as stages

            context = get_current_context()
            params = context["params"]
            return stages.build(
                model,
                as_of=_as_of(params, data_interval_end, asset_events(context["dag_run"])),
                window_days=params["window_days"],
                context=run_context(context),
            )

        @task
        def validate_data(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages
            from driftline.validation import ValidationFailed

            try:
                return stages.validate(
                    model, built["run_dir"], context=run_context(get_current_context())
                )
            except ValidationFailed as failed:
                # bad data does not get better by retrying: fail now, with every reason
                raise AirflowFailException(str(failed)) from None

        @task
        def train(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            return stages.train(model, built["run_dir"], context=run_context(get_current_context()))

        @task
        def evaluate(built: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            return stages.evaluate(model, built["run_dir"], trained["version"])

        @task.branch
        def decide(built: dict[str, Any]) -> str:
            from driftline import retrain as stages

            decision = stages.decide(
                model, built["run_dir"], context=run_context(get_current_context())
            )
            return "promote" if decision["promote"] else "keep_champion"

        @task(on_success_callback=DriftlineNotifier(event="promotion"))
        def promote(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages
            from driftline.errors import DriftlineError

            try:
                return stages.promote(
                    model, built["run_dir"], context=run_context(get_current_context())
                )
            except DriftlineError as failed:
                if failed.retryable:  # MLflow or the store down, a promotion in flight
                    raise
                raise AirflowFailException(str(failed)) from None  # champion moved, bad input

        @task(on_success_callback=DriftlineNotifier(event="rejection"))
        def keep_champion(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            return stages.keep_champion(
                model, built["run_dir"], context=run_context(get_current_context())
            )

        @task(trigger_rule="none_failed_min_one_success")
        def notify(built: dict[str, Any]) -> dict[str, Any]:
            import json
            import logging
            from pathlib import Path

            decision = json.loads((Path(built["run_dir"]) / "decision.json").read_text())
            summary = {
                "event": "retrain_finished",
                "model": model,
                "outcome": decision["outcome"],
                "challenger": decision["challenger_version"],
                "champion_before": decision["champion_version"],
                "reasons": decision["reasons"],
            }
            logging.getLogger("driftline.notify").info("%s", json.dumps(summary))
            return summary

        built = build_training_set()
        admit_trigger() >> built
        validated = with_links(validate_data(built), ReportLink())
        trained = with_links(train(built), MlflowRunLink(), ModelVersionLink())
        evaluated = with_links(evaluate(built, trained), ReportLink(), MlflowRunLink())
        branch = decide(built)
        promoted, kept = promote(built), keep_champion(built)
        validated >> trained
        evaluated >> branch >> [promoted, kept]
        [promoted, kept] >> notify(built)

    return retrain()


_specs = load_specs()
for _spec in _specs:
    build_retrain_dag(_spec, [s.name for s in _specs])

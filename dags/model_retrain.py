"""
### <model>_retrain

Turns fresh data into a better model, or refuses to, and says why. One DAG per model spec
in `include/models/` (`fraud_detection_retrain` for the shipped example).

**Triggered by** the spec's weekly cron (`schedule.retrain`), **or** by drift: an event on
the asset `drift://<model>` — from the model's drift monitor, from the Airflow REST API, or
from a row in the monitoring store's `drift_events` table (the asset's AssetWatcher, polling
from the triggerer) — or by an operator with the trigger form. At most one run at a time.

**Drift events** are delivered at least once and take effect once. The watcher claims rows
(`new` → `emitted`); a claim no run consumed within `drift.event_lease_seconds` is delivered
again. `admit_trigger` validates every asset event's extra (unknown keys, event ids of
another model or already consumed, a `window` outside the data: *rejected*, with the reason
in the event table and the audit log), records events another run already took as
duplicates, and retrains only on events nobody consumed yet.

**Storm protection**: at most one drift-triggered retrain per `drift.cooldown_hours`. The
watcher merges rows that arrive while a claim is on its way and suppresses rows inside the
cooldown, with the reason; `admit_trigger` applies the same cooldown to REST and monitor
events: a drift-triggered run inside it skips every task and marks its events *suppressed*.
Every event records the run that consumed it (`driftline events`).

**Tasks**
0. `admit_trigger` — validation, duplicates and storm protection for drift-triggered runs
   (see above).
1. `build_training_set` — matured-label entity rows of the training window joined
   point-in-time with the model's Feast feature service; written to the run's directory
   with a fingerprint (hash, rows, window, feature service).
2. `validate_data` — the gate: columns, dtypes, row count, null rates, ranges, infinities,
   duplicate keys, label rate, future timestamps, window coverage, feature freshness,
   leakage. A failure fails the run here, naming every failed check with its observed value
   and threshold; nothing is trained or registered, the champion is untouched. Report:
   `validation.html` in the run directory.
   Rate rules (label rate, null rates, category shares) are also judged per day, naming a
   broken day; a column added upstream to the label or feature partitions is a recorded
   warning (`validation.on_new_columns: warn`).
3. `train` — XGBoost with the spec's parameters on a time split, early-stopped on the
   validation days; registers a new version with its lineage (incl. `trained_until` and
   `as_of`) and points `challenger` at it.
4. `evaluate` — both models out-of-time on the same rows: labeled rows after *both* models'
   training data ends; a paired bootstrap interval of the primary metric's gain and guard
   metrics per declared slice. A champion alias whose model cannot be loaded fails the task
   (retried), never "no champion". An Evidently report of the holdout against the training
   reference is logged to the challenger's MLflow run.
5. `decide` — the spec's promotion policy: `promote` (compare-and-set the `champion` alias;
   `previous_champion` keeps the old one), `reject`, or `inconclusive` (too few rows newer
   than both models; the reason says from which as-of date a fair comparison is possible).
   Reject and inconclusive take `keep_champion` (the challenger keeps its reasons as tags):
   a skipped `promote`, not a failure. With `rollout.mode: canary` in the spec and a
   champion in place, a challenger to promote takes `start_rollout` instead: it becomes
   the `candidate` at the first traffic share and `<model>_rollout` ramps it (or aborts);
   while another rollout is open it is held back, with the reason, and nothing moves.
6. `notify` — one summary of the run.

**Params**
- `window_days` — days of matured labels to train on.
- `end_date` — the as-of date (YYYY-MM-DD), that day's UTC midnight. Empty: **one clock for
  every trigger** (cron, operator, REST, drift asset): the run's data interval end, else its
  `run_after`, floored to UTC midnight and capped at the end of the newest day in the offline
  entity table (`driftline.clock`). Labels younger than `label_delay_days` are not used.
- `dry_run` — train and evaluate, never move an alias.
- `reason` — free text, recorded in the audit log and on the model version.

Re-running any task of a run is safe: a run registers at most one version and promotes at
most once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from driftline_airflow.assets import drift_asset
from driftline_airflow.dag_args import default_args, optional_date
from driftline_airflow.failures import by_kind
from driftline_airflow.links import (
    MlflowRunLink,
    ModelVersionLink,
    ReportLink,
    with_links,
)
from driftline_airflow.notifiers import DriftlineNotifier

from driftline.specs import MAX_WINDOW_DAYS, ModelSpec, loadable_specs

DOC = __doc__


def build_retrain_dag(spec: ModelSpec) -> Any:
    model = spec.name
    minimum_window = spec.training.validation_days + spec.training.holdout_days + 1

    @dag(
        dag_id=f"{model}_retrain",
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(spec.schedule.retrain, timezone="UTC"),
            assets=drift_asset(model),
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
                maximum=MAX_WINDOW_DAYS,
                title="Training window (days)",
                description=f"Days of matured labels to train on ({minimum_window}–{MAX_WINDOW_DAYS}).",
            ),
            "end_date": optional_date(
                "As-of date", "the run's day (UTC), capped at the newest data day"
            ),
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
            from driftline.clock import retrain_as_of

            context = get_current_context()
            params = context["params"]
            with by_kind():
                # one clock for every trigger (cron, operator, REST, drift asset): see the doc
                as_of = retrain_as_of(
                    model,
                    end_date=params.get("end_date"),
                    reference=data_interval_end or context["dag_run"].run_after,
                )
                return stages.build(
                    model,
                    as_of=as_of,
                    window_days=params["window_days"],
                    context=run_context(context),
                )

        @task
        def validate_data(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            # bad data does not get better by retrying: fail now, with every reason
            with by_kind():
                return stages.validate(
                    model, built["run_dir"], context=run_context(get_current_context())
                )

        @task
        def train(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            with by_kind():
                return stages.train(
                    model, built["run_dir"], context=run_context(get_current_context())
                )

        @task
        def evaluate(built: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            # a champion that cannot be read is an outage (retry), never "no champion"
            with by_kind():
                return stages.evaluate(model, built["run_dir"], trained["version"])

        @task.branch
        def decide(built: dict[str, Any]) -> str:
            from driftline import retrain as stages

            with by_kind():
                decision = stages.decide(
                    model, built["run_dir"], context=run_context(get_current_context())
                )
            # promote | start_rollout (the spec's rollout.mode is canary) | keep_champion
            return decision["route"]

        @task(on_success_callback=DriftlineNotifier(event="promotion"))
        def promote(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            # MLflow or the store down, a promotion in flight: retry; champion moved: fail
            with by_kind():
                return stages.promote(
                    model, built["run_dir"], context=run_context(get_current_context())
                )

        @task(on_success_callback=DriftlineNotifier(event="rollout_started"))
        def start_rollout(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            # a rollout open already: held back (a success, with the reason); MLflow down: retry
            with by_kind():
                return stages.start_rollout(
                    model, built["run_dir"], context=run_context(get_current_context())
                )

        @task(on_success_callback=DriftlineNotifier(event="rejection"))
        def keep_champion(built: dict[str, Any]) -> dict[str, Any]:
            from driftline import retrain as stages

            with by_kind():
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
        rolled_out = start_rollout(built)
        validated >> trained
        evaluated >> branch >> [promoted, rolled_out, kept]
        [promoted, rolled_out, kept] >> notify(built)

    return retrain()


# A broken spec costs only its own model: it is left out here and reported as the import
# error of dags/model_specs.py. Its drift events stay new until it is fixed.
for _spec in loadable_specs():
    build_retrain_dag(_spec)

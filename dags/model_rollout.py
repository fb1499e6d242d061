"""
### <model>_rollout

Ramps a canary, or aborts it. One DAG per model spec in `include/models/`
(`fraud_detection_rollout` for the shipped example). A rollout exists only when the spec's
`rollout.mode` is `canary` and `<model>_retrain` passed a challenger: it became the
`candidate` (MLflow alias) at the first share of the traffic (`rollout_share` tag), and the
scoring service routes a card to it when the card's stable hash falls below the share.

**Triggered by** the spec's short cron (`schedule.rollout`, every 5 minutes), or by hand.
Without an open rollout the first task ends the run (everything else skipped).

**Tasks**
1. `judge` — settles a change a killed run left in flight (finished when MLflow shows it,
   undone when it does not), then compares the candidate's live traffic with the
   champion's over the SAME period — the current step's, from when its share took effect
   to this run — from the prediction log: error rate, p99 latency, score-distribution PSI,
   and PR-AUC on the requests whose labels have matured (the log's `transaction_id` joined
   with the offline `transactions` labels). Each arm needs `guards.min_requests` in the
   period before anything is judged.
2. `route` — `ramp` when every guard held and the step lasted `step_minutes`; `abort` as
   soon as a guard breaks; `hold` otherwise (too few requests, too early, paused, both arms
   over a ceiling, a change in flight).
3. `ramp` — the next share (`rollout_step`); from the step before 1.0 it promotes instead,
   through the champion compare-and-set (`promoted`), then clears the candidate
   (`rollout_completed`).
4. `abort` — clears the `candidate` alias and the `rollout_share` tag, champion untouched;
   the audit row (`rollout_aborted`) names the guard, the values and the period; notified.
5. `hold` — records why nothing moved.

Operators: `driftline rollout status|pause|resume|abort --model <model>`; a paused rollout
keeps its share and is still aborted by a broken guard.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from driftline_airflow.dag_args import default_args
from driftline_airflow.failures import by_kind
from driftline_airflow.notifiers import DriftlineNotifier

from driftline.specs import ModelSpec, loadable_specs

DOC = __doc__


def build_rollout_dag(spec: ModelSpec) -> Any:
    model = spec.name

    @dag(
        dag_id=f"{model}_rollout",
        schedule=CronTriggerTimetable(spec.schedule.rollout, timezone="UTC"),
        # no start_date: an unpaused DAG waits for its next cron time
        catchup=False,
        max_active_runs=1,
        default_args=default_args(spec.owner),
        tags=["driftline", "rollout", model, *spec.tags],
        doc_md=f"**{model}** — {spec.description}\n\n" + DOC.replace("<model>", model),
    )
    def rollout() -> None:
        @task.short_circuit
        def judge() -> dict[str, Any] | None:
            from driftline_airflow.context import run_context

            from driftline import rollout as canary

            context = get_current_context()
            with by_kind():
                judged = canary.check(
                    model,
                    # the run's time, never later than now (a late run judges up to its start)
                    at=context["dag_run"].run_after or datetime.now(UTC),
                    context=run_context(context),
                )
            # no open rollout: the rest of the run is skipped
            return None if judged["action"] == "none" else judged

        @task.branch
        def route(judged: dict[str, Any]) -> str:
            return {"ramp": "ramp", "complete": "ramp", "abort": "abort"}.get(
                judged["action"], "hold"
            )

        @task(on_success_callback=DriftlineNotifier(event="rollout"))
        def ramp(judged: dict[str, Any]) -> dict[str, Any]:
            from driftline_airflow.context import run_context

            from driftline import rollout as canary

            with by_kind():
                return canary.advance(
                    model, judged, context=run_context(get_current_context())
                ).as_dict()

        @task(on_success_callback=DriftlineNotifier(event="rollout_aborted"))
        def abort(judged: dict[str, Any]) -> dict[str, Any]:
            from driftline_airflow.context import run_context

            from driftline import rollout as canary

            context = run_context(get_current_context())
            with by_kind():
                return canary.abort(
                    model,
                    reason="; ".join(judged["reasons"]),
                    actor=context.triggered_by,
                    context=context,
                    checks=(judged.get("verdict") or {}).get("checks"),
                ).as_dict()

        @task
        def hold(judged: dict[str, Any]) -> dict[str, Any]:
            import logging

            logging.getLogger("driftline.rollout").info(
                "%s: holding at %s: %s", model, judged["share"], "; ".join(judged["reasons"])
            )
            return judged

        judged = judge()
        route(judged) >> [ramp(judged), abort(judged), hold(judged)]

    return rollout()


# a broken spec is left out here and reported by dags/model_specs.py
for _spec in loadable_specs():
    build_rollout_dag(_spec)

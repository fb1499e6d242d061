"""
### <model>_drift_monitor

Watches the champion for drift, nightly. One DAG per model spec in `include/models/`
(`fraud_detection_drift_monitor` for the shipped example).

**Triggered by** the spec's nightly cron (`schedule.drift_monitor`), or by hand.

**Tasks**
1. `check_drift` — compares the current window (the newest `drift.current_window_days` of
   arriving transactions, with their Feast features) against the champion version's
   reference sample: Evidently per-column drift with the spec's method and threshold per
   column type, the champion's score distribution (prediction drift), and — where labels
   have matured — the champion's primary metric against its training holdout (performance
   decay). The report goes into the monitoring store and, as HTML, into the MLflow
   experiment `<model>_monitoring`.
   - No champion yet: the task says so and is skipped; the run succeeds.
   - No rows, missing or all-null columns: the task fails with the reason. Bad data is not
     drift: no drift event is raised.
2. `drift_detected` — continues only on a drift verdict.
3. `announce_drift` — updates the asset `drift://<model>` with the summary (share drifted,
   top features, reasons, report URI, drift event id). That asset event starts
   `<model>_retrain`. The asset is built by the same function as the retrain DAG's schedule
   (`drift_asset`), watcher included: Airflow keeps one definition per asset, and a second,
   different one would cancel the drift-event watcher on every parse.

**Params**
- `as_of` — evaluate as of this date (YYYY-MM-DD); empty means the run's data interval end.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from driftline_airflow.assets import drift_asset
from driftline_airflow.dag_args import default_args, optional_date
from driftline_airflow.failures import by_kind
from driftline_airflow.links import ReportLink, with_links
from driftline_airflow.notifiers import DriftlineNotifier

from driftline.specs import ModelSpec, loadable_specs

DOC = __doc__


def build_drift_monitor_dag(spec: ModelSpec) -> Any:
    model = spec.name
    asset = drift_asset(model)

    @dag(
        dag_id=f"{model}_drift_monitor",
        schedule=CronTriggerTimetable(spec.schedule.drift_monitor, timezone="UTC"),
        # no start_date: an unpaused DAG waits for its next cron time instead of running
        # the last one it "missed" (CronTriggerTimetable.run_immediately)
        catchup=False,
        max_active_runs=1,
        default_args=default_args(spec.owner),
        tags=["driftline", "monitoring", model, *spec.tags],
        doc_md=f"**{model}** — {spec.description}\n\n" + DOC.replace("<model>", model),
        params={
            "as_of": optional_date("As-of date", "the run's data interval end"),
        },
    )
    def drift_monitor() -> None:
        @task
        def check_drift(data_interval_end: datetime | None = None) -> dict[str, Any]:
            from driftline_airflow.context import run_context

            from driftline.drift import NoChampion, monitor

            context = get_current_context()
            as_of = context["params"].get("as_of")
            moment = (
                datetime.fromisoformat(as_of).replace(tzinfo=UTC)
                if as_of
                else data_interval_end or datetime.now(UTC)
            )
            with by_kind():  # bad data is not drift: fail; a store down: retry
                try:
                    result = monitor(spec, as_of=moment, context=run_context(context))
                except NoChampion as nothing:
                    raise AirflowSkipException(str(nothing)) from None
            return result.event_extra()

        @task.short_circuit
        def drift_detected(summary: dict[str, Any]) -> bool:
            return summary["verdict"] == "drift"

        @task(outlets=[asset], on_success_callback=DriftlineNotifier(event="drift_detected"))
        def announce_drift(summary: dict[str, Any], outlet_events: Any = None) -> dict[str, Any]:
            outlet_events[asset].extra = summary
            return summary

        summary = with_links(check_drift(), ReportLink())
        drift_detected(summary) >> announce_drift(summary)

    return drift_monitor()


# a broken spec is left out here and reported by dags/model_specs.py
for _spec in loadable_specs():
    build_drift_monitor_dag(_spec)

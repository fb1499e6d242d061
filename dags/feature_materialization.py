"""
### feature_materialization

Loads each day of feature values from the Feast offline store (parquet day partitions,
DuckDB) into the online store, so online scoring sees the same values training does.

**Triggered by** a daily schedule at 00:00 UTC: each run covers its data interval, the UTC
day that just ended, plus one hour of overlap before it so late rows at the boundary are
never missed. Trigger it by hand to re-load an interval.

**Tasks**: one `materialize_<feature view>` per feature view that some model spec reads.
Each updates the asset `feast://feature_view/<view>` with the window and the row count, so
downstream DAGs can be data-aware.

**Params** (for a manual run): `start` and `end` (YYYY-MM-DD) pick the window to load
instead of the run's data interval.

**Safe to re-run**: the online store keeps one latest value per entity, so clearing a run
writes the same values again, and an old interval never rolls the online store back. An
interval without data succeeds and says "0 rows". A missing or unreadable day partition
fails the task with its path.

Registry sync (`driftline feast apply`, `make apply`) is a separate, explicit step; it
keeps the materialization history.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, dag, task
from driftline_airflow.assets import feature_view_asset
from driftline_airflow.dag_args import default_args, optional_date

from driftline.specs import feature_views_in_use


def _day(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None


def _materialize_task(view: str) -> Any:
    asset = feature_view_asset(view)

    @task(task_id=f"materialize_{view}", outlets=[asset])
    def materialize(
        data_interval_start: datetime | None = None,
        data_interval_end: datetime | None = None,
        outlet_events: Any = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        from driftline.feature_store import materialize_window

        start = _day((params or {}).get("start")) or data_interval_start
        end = _day((params or {}).get("end")) or data_interval_end
        (result,) = materialize_window(start, end, feature_views=[view])
        outlet_events[asset].extra = result.as_dict()
        return result.as_dict()

    return materialize()


@dag(
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args("driftline", retry_delay=timedelta(minutes=1)),
    tags=["driftline", "feast"],
    doc_md=__doc__,
    params={
        "start": optional_date("Window start", "the run's data interval start"),
        "end": optional_date("Window end", "the run's data interval end"),
    },
)
def feature_materialization() -> None:
    for view in feature_views_in_use():
        _materialize_task(view)


feature_materialization()

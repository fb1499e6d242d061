"""The Airflow assets of driftline: one function per asset, used by every DAG file that
names it.

Airflow keeps one definition per asset URI, and the dag-processor writes whichever file it
parsed last. If one file declared ``drift://<model>`` with its AssetWatcher and another
without, every parse of the second would remove the watcher (its trigger cancelled) and the
next parse of the first would start a new one — the watcher would be up a few seconds out
of every parse cycle. So each asset is built here and only here, watchers included, from
nothing but its name: the watcher's trigger reads everything else it needs (poll interval,
lease, cooldown, the known models) from the model spec while it runs, which also means a
spec edit never restarts it. tests/dags/test_asset_definitions.py holds every DAG file to
this.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from driftline.assets import drift_uri, feature_view_uri
from driftline_airflow.triggers import DriftEventTrigger


def feature_view_asset(view: str) -> Asset:
    """Online values of a Feast feature view (updated by feature_materialization)."""
    return Asset(name=f"feast_{view}", uri=feature_view_uri(view))


def drift_asset(model: str) -> Asset:
    """Drift of a model: updated by its drift monitor, by outside systems over the REST API,
    and by the AssetWatcher on the monitoring store's drift_events table.

    Airflow runs the watcher only while a DAG scheduled on the asset (``<model>_retrain``)
    is unpaused; declaring it from the monitor's outlet as well is what keeps the definition
    identical.
    """
    return Asset(
        name=drift_uri(model),
        uri=drift_uri(model),
        watchers=[
            AssetWatcher(name=f"{model}_drift_events", trigger=DriftEventTrigger(model=model))
        ],
    )

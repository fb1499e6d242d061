"""The Airflow assets of driftline, built the same way by every DAG file that names them."""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from driftline.assets import drift_uri, feature_view_uri
from driftline_airflow.triggers import DriftEventTrigger


def feature_view_asset(view: str) -> Asset:
    """Online values of a Feast feature view (updated by feature_materialization)."""
    return Asset(name=f"feast_{view}", uri=feature_view_uri(view))


def drift_asset(model: str) -> Asset:
    """Drift of a model: updated by its drift monitor, or by outside systems."""
    return Asset(name=drift_uri(model), uri=drift_uri(model))


def watched_drift_asset(model: str, known_models: list[str], poll_interval: float = 5.0) -> Asset:
    """The drift asset with an AssetWatcher on the monitoring store's drift_events table.

    Only the DAG scheduled on it declares the watcher (and Airflow runs a watcher only while
    that DAG is unpaused).
    """
    return Asset(
        name=drift_uri(model),
        uri=drift_uri(model),
        watchers=[
            AssetWatcher(
                name=f"{model}_drift_events",
                trigger=DriftEventTrigger(
                    model=model, known_models=known_models, poll_interval=poll_interval
                ),
            )
        ],
    )

"""Names of the data assets driftline's DAGs produce and consume (plain strings: the DAG
files wrap them in ``airflow.sdk.Asset``)."""

from __future__ import annotations


def feature_view_uri(view: str) -> str:
    """A Feast feature view's online values, updated by feature_materialization."""
    return f"feast://feature_view/{view}"


def drift_uri(model: str) -> str:
    """Drift detected for a model; an event on it may start the model's retrain."""
    return f"drift://{model}"

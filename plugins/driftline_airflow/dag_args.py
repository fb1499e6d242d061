"""What the driftline DAGs share in their ``@dag(...)`` arguments."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from driftline_airflow.notifiers import DriftlineNotifier


def default_args(owner: str, retry_delay: timedelta = timedelta(seconds=30)) -> dict[str, Any]:
    """Two retries (a store briefly unreachable), and a failure notification on the last."""
    return {
        "owner": owner,
        "retries": 2,
        "retry_delay": retry_delay,
        "on_failure_callback": DriftlineNotifier(event="failure"),
    }


def optional_date(title: str, empty_means: str) -> Param:
    """A date field of the trigger form that may stay empty (``None``)."""
    return Param(
        None,
        type=["null", "string"],
        format="date",
        title=title,
        description=f"YYYY-MM-DD; empty = {empty_means}.",
    )

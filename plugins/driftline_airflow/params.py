"""Trigger-form fields shared by the DAGs."""

from __future__ import annotations

from airflow.sdk import Param


def optional_date(title: str, empty_means: str) -> Param:
    """A date field of the trigger form that may stay empty (``None``)."""
    return Param(
        None,
        type=["null", "string"],
        format="date",
        title=title,
        description=f"YYYY-MM-DD; empty = {empty_means}.",
    )

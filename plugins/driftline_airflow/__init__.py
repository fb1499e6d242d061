"""Airflow-facing pieces of driftline: run context, triggers, sensors, notifiers, links."""

"""Registers driftline's extra links with Airflow (the api-server needs them to show links)."""

from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from driftline_airflow.links import MlflowRunLink, ModelVersionLink, ReportLink


class DriftlinePlugin(AirflowPlugin):
    name = "driftline"
    operator_extra_links: ClassVar[list] = [MlflowRunLink(), ModelVersionLink(), ReportLink()]

"""DriftlineNotifier: one structured log line per event, and a webhook when configured.

Used as Airflow callbacks: drift detected (on announce_drift's success), promotion (on
promote's success), rejection (on keep_champion's success) and failure (every task's
failure). The target is pluggable through an Airflow connection: with connection
``driftline_webhook`` (an HTTP connection; the path goes in its extra as ``endpoint``) each
notification is also POSTed there as JSON. Without it, the log line is the notification.

The POST waits at most ``timeout`` seconds (the connection's extra ``timeout``, default 10)
to connect and again to read the answer: a receiver that accepts the connection and never
answers costs the callback that long, and the task it reports on still succeeds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger("driftline.notify")

WEBHOOK_CONN_ID = "driftline_webhook"
DEFAULT_WEBHOOK_TIMEOUT = 10.0


def _webhook(conn_id: str) -> tuple[Any, str, float] | None:
    """The HttpHook, endpoint and timeout of the webhook connection, or None without one."""
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None
    extra = connection.extra_dejson
    endpoint = str(extra.get("endpoint", ""))
    try:
        timeout = float(extra.get("timeout", DEFAULT_WEBHOOK_TIMEOUT))
    except (TypeError, ValueError):
        log.warning(
            "connection %s: extra timeout %r is not a number of seconds; using %s",
            conn_id,
            extra.get("timeout"),
            DEFAULT_WEBHOOK_TIMEOUT,
        )
        timeout = DEFAULT_WEBHOOK_TIMEOUT
    return HttpHook(method="POST", http_conn_id=conn_id), endpoint, timeout


class DriftlineNotifier(BaseNotifier):
    """Notify about ``event`` (drift_detected, promotion, rejection, failure).

    A kept champion is reported by what the decision was: ``rejection``, or ``inconclusive``
    when there was no fair comparison to make (the result's ``action`` says which).
    """

    template_fields: Sequence[str] = ("event", "summary")

    def __init__(
        self, *, event: str, summary: str = "", webhook_conn_id: str = WEBHOOK_CONN_ID
    ) -> None:
        super().__init__()
        self.event = event
        self.summary = summary
        self.webhook_conn_id = webhook_conn_id

    def payload(self, context: Any) -> dict[str, Any]:
        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        result = None
        if ti is not None and self.event != "failure":
            try:
                result = ti.xcom_pull(task_ids=ti.task_id)
            except Exception:  # a notification must never fail the task it reports on
                result = None
        exception = context.get("exception")
        event = self.event
        if event == "rejection" and isinstance(result, dict):
            event = {"inconclusive": "inconclusive"}.get(result.get("action"), event)
        return {
            "source": "driftline",
            "event": event,
            "dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
            "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
            "task_id": getattr(ti, "task_id", None),
            "summary": self.summary,
            "result": result,
            "error": str(exception) if exception else None,
        }

    def notify(self, context: Any) -> None:
        payload = self.payload(context)
        log.info("notification %s", json.dumps(payload, default=str, sort_keys=True))
        target = _webhook(self.webhook_conn_id)
        if target is None:
            return
        hook, endpoint, timeout = target
        try:
            hook.run(
                endpoint=endpoint,
                data=json.dumps(payload, default=str),
                headers={"Content-Type": "application/json"},
                extra_options={"timeout": timeout},
            )
        except Exception:
            log.exception(
                "webhook %s did not take the %s notification within %s s",
                self.webhook_conn_id,
                self.event,
                timeout,
            )

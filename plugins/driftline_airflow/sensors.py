"""DriftEventSensor: wait, deferred in the triggerer, for a drift event of one model."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context

from driftline_airflow.triggers import DriftEventTrigger


class DriftEventSensor(BaseSensorOperator):
    """Succeeds when a valid drift event for ``model`` arrives after the sensor started.

    Always deferrable: the wait costs no worker slot. Events for other models, and rejected
    (malformed) events, are ignored. Returns the trigger's summary (event ids, sources,
    payloads) as its XCom value.
    """

    template_fields: Sequence[str] = ("model",)

    def __init__(
        self,
        *,
        model: str,
        poll_interval: float = 5.0,
        timeout: float = timedelta(days=1).total_seconds(),
        **kwargs: Any,
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self.model = model
        self.poll_interval = poll_interval

    def execute(self, context: Context) -> None:
        from driftline.events import newest_event_id

        self.defer(
            trigger=DriftEventTrigger(
                model=self.model,
                mode="observe",
                after_id=newest_event_id(),
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info("drift events %s for %s", event["drift_event_ids"], self.model)
        return event

"""DriftEventTrigger: drift events from the monitoring store, for the triggerer.

Two modes share one polling loop:

* ``claim`` — the AssetWatcher of ``drift://<model>``. Each poll claims the model's new
  events (new -> emitted, a guarded update) and yields one TriggerEvent listing them;
  Airflow turns it into an asset event (extra ``{"from_trigger": true, "payload": ...}``)
  that starts ``<model>_retrain``. Malformed events and events for unknown models are
  rejected with the reason, in the store and in the log.
* ``observe`` — for :class:`DriftEventSensor`: yields once, when a valid event for the
  model newer than ``after_id`` exists; claims nothing.

A watcher trigger must never return or raise: the triggerer re-creates a finished or failed
watcher about every 2 s without backoff, and a re-created trigger whose condition still
holds fires again (the Airflow 3 re-fire pitfall). So the loop catches every error, logs
it, backs off, and keeps polling; and because rows are claimed *before* the event is
yielded, a restart can never raise the same row twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0


class DriftEventTrigger(BaseEventTrigger):
    """Polls the monitoring store's drift_events table for one model."""

    def __init__(
        self,
        *,
        model: str,
        known_models: list[str],
        mode: str = "claim",
        after_id: int = 0,
        poll_interval: float = 5.0,
    ) -> None:
        super().__init__()
        if mode not in ("claim", "observe"):
            raise ValueError(f"mode must be 'claim' or 'observe', got {mode!r}")
        self.model = model
        self.known_models = sorted(known_models)
        self.mode = mode
        self.after_id = after_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "driftline_airflow.triggers.DriftEventTrigger",
            {
                "model": self.model,
                "known_models": self.known_models,
                "mode": self.mode,
                "after_id": self.after_id,
                "poll_interval": self.poll_interval,
            },
        )

    def _poll(self) -> list[dict[str, Any]]:
        from driftline import events

        if self.mode == "claim":
            return events.claim_new_events(self.model, self.known_models)
        return events.events_after(self.model, self.after_id)

    @staticmethod
    def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "drift_event_ids": [int(row["id"]) for row in rows],
            "sources": sorted({str(row["source"]) for row in rows}),
            "payloads": [row["payload"] for row in rows],
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backoff = self.poll_interval
        while True:
            try:
                rows = await asyncio.to_thread(self._poll)
                backoff = self.poll_interval
            except Exception:  # the store may be down; a watcher must outlive that
                log.exception(
                    "polling drift events for %s failed; retrying in %.0f s", self.model, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if rows:
                summary = {"model": self.model, **self._summary(rows)}
                log.info("drift events %s for %s", summary["drift_event_ids"], self.model)
                yield TriggerEvent(summary)
                if self.mode == "observe":
                    return
            await asyncio.sleep(self.poll_interval)

"""DriftEventTrigger: drift events from the monitoring store, for the triggerer.

Two modes share one polling loop:

* ``claim`` — the AssetWatcher of ``drift://<model>``. Each poll runs
  :func:`driftline.events.intake` for the model: leases that ran out are released, rows that
  cannot be read or parsed (or name an unknown model) are rejected with the reason, storm
  protection suppresses what a pending or recent retrain covers, and the rest are claimed
  (new -> emitted) and yielded as one TriggerEvent listing them. Airflow turns it into an
  asset event (extra ``{"from_trigger": true, "payload": ...}``) that starts
  ``<model>_retrain``, whose ``admit_trigger`` consumes the rows.
* ``observe`` — for :class:`DriftEventSensor`: yields once, when a valid event for the
  model newer than ``after_id`` exists; claims nothing.

The watcher's only argument is the model, so every DAG file builds the same trigger (see
``driftline_airflow.assets``); the poll interval, the lease and the cooldown are read from
the model spec on every poll, so editing the spec changes them without restarting it.

A watcher trigger must never return or raise: the triggerer re-creates a finished or failed
watcher about every 2 s without backoff, and a re-created trigger whose condition still
holds fires again (the Airflow 3 re-fire pitfall). So the loop catches every error, logs
it, backs off, and keeps polling. Rows are claimed before the event is yielded, so a
restarted trigger never raises the same row twice at once; a claim whose event never became
an asset event (the triggerer died in between, or Airflow cancelled the trigger) is delivered
again when its lease runs out — at least once, and ``admit_trigger`` makes the effect once.

Test hook: ``DRIFTLINE_TEST_PAUSE_AFTER_CLAIM_SECONDS`` (in the triggerer's environment)
sleeps that long between the claim and the yield, so a test can kill the triggerer there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
DEFAULT_POLL_SECONDS = 5.0


class DriftEventTrigger(BaseEventTrigger):
    """Polls the monitoring store's drift_events table for one model."""

    def __init__(
        self,
        *,
        model: str,
        mode: str = "claim",
        after_id: int = 0,
        poll_interval: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("claim", "observe"):
            raise ValueError(f"mode must be 'claim' or 'observe', got {mode!r}")
        self.model = model
        self.mode = mode
        self.after_id = after_id
        # None: the spec's drift.event_poll_seconds, read on every poll
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "driftline_airflow.triggers.DriftEventTrigger",
            {
                "model": self.model,
                "mode": self.mode,
                "after_id": self.after_id,
                "poll_interval": self.poll_interval,
            },
        )

    def _poll(self) -> tuple[list[dict[str, Any]], float]:
        from driftline import events

        if self.mode == "observe":
            return events.events_after(self.model, self.after_id), self.poll_interval or 5.0
        policy = events.EventPolicy.of(self.model)
        intake = events.intake(self.model, policy=policy)
        return intake.claimed, self.poll_interval or policy.poll_seconds

    @staticmethod
    def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "drift_event_ids": [int(row["id"]) for row in rows],
            "sources": sorted({str(row["source"]) for row in rows}),
            "payloads": [row["payload"] for row in rows],
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        poll = self.poll_interval or DEFAULT_POLL_SECONDS
        backoff = poll
        while True:
            try:
                rows, poll = await asyncio.to_thread(self._poll)
                backoff = poll
            except Exception:  # the store may be down, the spec broken: a watcher outlives that
                log.exception(
                    "polling drift events for %s failed; retrying in %.0f s", self.model, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if rows:
                summary = {"model": self.model, **self._summary(rows)}
                log.info("drift events %s for %s", summary["drift_event_ids"], self.model)
                pause = float(os.environ.get("DRIFTLINE_TEST_PAUSE_AFTER_CLAIM_SECONDS") or 0)
                if pause and self.mode == "claim":
                    log.warning("test hook: pausing %.0f s between claim and event", pause)
                    await asyncio.sleep(pause)
                yield TriggerEvent(summary)
                if self.mode == "observe":
                    return
            await asyncio.sleep(poll)

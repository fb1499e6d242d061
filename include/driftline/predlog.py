"""The prediction log: every row the scoring service answered, in day partitions of the offline store.

Layout under the offline directory::

    predictions/model=fraud_detection/date=2026-11-26/part-<writer>-<seq>.parquet

One file per flush, written atomically and never rewritten, so a reader sees whole files only
and any number of writers (uvicorn workers) append without coordinating. A row holds:

* ``request_id`` (str), ``scored_at`` (when the service answered, UTC),
  ``event_timestamp`` (the transaction's time: the as-of time of its features, UTC),
  ``transaction_id`` (str, or null when the caller did not send one);
* ``model``, ``version`` (the registry version that scored it), ``arm`` (``champion`` or
  ``candidate``);
* one column per entity key of the model's spec (``card_id``, ``merchant_id``);
* ``score`` (float, null when scoring failed), ``latency_ms``, ``status`` (``ok`` | ``error``)
  and ``error`` (null when ``ok``).

The drift monitor reads served scores from here, a canary rollout compares its arms here,
and live quality per version is this log joined with the labels once they have matured.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from driftline.clock import utc
from driftline.files import write_atomic

log = logging.getLogger(__name__)

TABLE = "predictions"
ARMS = ("champion", "candidate")
STATUSES = ("ok", "error")
_TS = pa.timestamp("us", tz="UTC")

BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("request_id", pa.string()),
    pa.field("scored_at", _TS),
    pa.field("event_timestamp", _TS),
    pa.field("transaction_id", pa.string()),
    pa.field("model", pa.string()),
    pa.field("version", pa.string()),
    pa.field("arm", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("latency_ms", pa.float64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
)


def schema(entity_keys: Mapping[str, pa.DataType]) -> pa.Schema:
    """The log's schema for a model whose entity keys have these types."""
    return pa.schema([*BASE_FIELDS, *(pa.field(k, t) for k, t in entity_keys.items())])


def model_dir(offline_dir: Path, model: str) -> Path:
    return Path(offline_dir) / TABLE / f"model={model}"


def partition_dir(offline_dir: Path, model: str, day: date) -> Path:
    return model_dir(offline_dir, model) / f"date={day.isoformat()}"


def write_rows(
    offline_dir: Path,
    model: str,
    rows: list[dict[str, Any]],
    entity_keys: Mapping[str, pa.DataType],
    *,
    writer: str = "",
) -> list[Path]:
    """Append ``rows`` as one new file per day they fall on (by ``scored_at``)."""
    if not rows:
        return []
    wanted = schema(entity_keys)
    writer = writer or uuid.uuid4().hex[:12]
    by_day: dict[date, list[dict[str, Any]]] = {}
    for row in rows:
        by_day.setdefault(utc(row["scored_at"]).date(), []).append(row)
    written = []
    for day, day_rows in sorted(by_day.items()):
        table = pa.Table.from_pylist(
            [{name: row.get(name) for name in wanted.names} for row in day_rows], schema=wanted
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = partition_dir(offline_dir, model, day) / f"part-{writer}-{uuid.uuid4().hex}.parquet"
        written.append(write_atomic(path, sink.getvalue().to_pybytes()))
    return written


def read(
    offline_dir: Path,
    model: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Logged rows with ``start <= scored_at < end`` (either bound optional), oldest first.

    Whole day partitions outside the bounds are not opened. Files being written are never
    seen (they appear by rename). An empty frame has the base columns.
    """
    root = model_dir(offline_dir, model)
    first = utc(start).date() if start else None
    last = utc(end).date() if end else None
    files = []
    for day_dir in sorted(root.glob("date=*")) if root.is_dir() else []:
        try:
            day = date.fromisoformat(day_dir.name.removeprefix("date="))
        except ValueError:
            continue
        if (first and day < first) or (last and day > last):
            continue
        files.extend(sorted(day_dir.glob("part-*.parquet")))
    wanted = list(columns) if columns else None
    if not files:
        return pd.DataFrame(columns=wanted or [f.name for f in BASE_FIELDS])
    frames = [pq.read_table(path, columns=wanted).to_pandas() for path in files]
    frame = pd.concat(frames, ignore_index=True)
    if "scored_at" in frame:
        if start:
            frame = frame[frame["scored_at"] >= pd.Timestamp(utc(start))]
        if end:
            frame = frame[frame["scored_at"] < pd.Timestamp(utc(end))]
        frame = frame.sort_values("scored_at", kind="stable")
    return frame.reset_index(drop=True)


class Writer:
    """Buffers rows in memory and appends them from a background thread.

    ``add`` never touches the disk, so the request path does not wait on it. The buffer is
    flushed every ``interval`` seconds, when it holds ``max_rows``, and on ``close``. A
    flush that fails keeps its rows for the next attempt (up to ``max_buffer`` rows, then
    the oldest are dropped and counted in ``dropped``).
    """

    def __init__(
        self,
        offline_dir: Path,
        model: str,
        entity_keys: Mapping[str, pa.DataType],
        *,
        interval: float = 1.0,
        max_rows: int = 5000,
        max_buffer: int = 200_000,
    ) -> None:
        self.offline_dir = Path(offline_dir)
        self.model = model
        self.entity_keys = dict(entity_keys)
        self.interval = interval
        self.max_rows = max_rows
        self.max_buffer = max_buffer
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.dropped = 0
        self.written = 0
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"predlog-{model}", daemon=True)
        self._thread.start()

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(rows)
            overflow = len(self._rows) - self.max_buffer
            if overflow > 0:
                del self._rows[:overflow]
                self.dropped += overflow
            full = len(self._rows) >= self.max_rows
        if full:
            self._wake.set()

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            write_rows(
                self.offline_dir,
                self.model,
                rows,
                self.entity_keys,
                writer=f"{self.name}-{next(self._seq):06d}",
            )
        except Exception:
            log.exception("prediction log: could not write %d rows; kept for retry", len(rows))
            with self._lock:
                self._rows[:0] = rows
            return 0
        self.written += len(rows)
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()


def window(end: datetime, *, minutes: float) -> tuple[datetime, datetime]:
    """``(end - minutes, end)``, both UTC: the period a canary guard compares."""
    end = utc(end)
    return end - timedelta(minutes=minutes), end

"""The prediction log: whole files per flush, day partitions, bounded reads."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from driftline import predlog

KEYS = {"card_id": pa.int64(), "merchant_id": pa.int64()}


def _row(i: int, at: datetime, **extra):
    return {
        "request_id": f"r{i}",
        "scored_at": at,
        "event_timestamp": at,
        "transaction_id": None,
        "model": "m",
        "version": "3",
        "arm": "champion",
        "score": 0.1 * (i % 10),
        "latency_ms": 1.5,
        "status": "ok",
        "error": None,
        "card_id": i,
        "merchant_id": i % 7,
        **extra,
    }


def test_rows_land_in_the_day_of_their_scoring_and_reads_respect_bounds(tmp_path):
    midnight = datetime(2026, 11, 26, tzinfo=UTC)
    rows = [_row(i, midnight + timedelta(minutes=30 * (i - 4))) for i in range(8)]
    predlog.write_rows(tmp_path, "m", rows, KEYS)
    days = sorted(p.name for p in predlog.model_dir(tmp_path, "m").iterdir())
    assert days == ["date=2026-11-25", "date=2026-11-26"]
    everything = predlog.read(tmp_path, "m")
    assert list(everything["card_id"]) == list(range(8))
    after = predlog.read(tmp_path, "m", start=midnight)
    assert list(after["card_id"]) == [4, 5, 6, 7]
    before = predlog.read(tmp_path, "m", end=midnight)
    assert list(before["card_id"]) == [0, 1, 2, 3]


def test_the_background_writer_flushes_without_the_caller_and_on_close(tmp_path):
    now = datetime.now(UTC)
    writer = predlog.Writer(tmp_path, "m", KEYS, interval=0.05, max_rows=3)
    writer.add([_row(i, now) for i in range(5)])
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while writer.written < 5 and datetime.now(UTC) < deadline:
        time.sleep(0.02)
    assert writer.written == 5
    writer.add([_row(9, now, status="error", score=None, error="boom")])
    writer.close()
    frame = predlog.read(tmp_path, "m")
    assert len(frame) == 6
    failed = frame[frame["status"] == "error"]
    assert list(failed["error"]) == ["boom"] and failed["score"].isna().all()


def test_an_empty_log_reads_as_an_empty_frame_with_the_base_columns(tmp_path):
    frame = predlog.read(tmp_path, "nobody")
    assert frame.empty and "score" in frame.columns and "arm" in frame.columns

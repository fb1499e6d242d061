"""One clock: every trigger of a retrain resolves the same, day-aligned as-of time."""

from __future__ import annotations

from datetime import date

import pytest

from driftline.clock import resolve_as_of
from driftline.errors import InvalidInput
from tests.frames import utc

NEWEST = date(2026, 11, 19)  # the newest day in the offline store


@pytest.mark.parametrize(
    ("trigger", "reference"),
    [
        ("weekly cron (data_interval_end)", utc(2026, 11, 23, 3)),
        ("operator in the UI (run_after)", utc(2026, 11, 26, 10, 45, 2)),
        ("REST API, minutes later", utc(2026, 11, 26, 10, 51)),
        ("drift asset event", utc(2026, 11, 26, 10, 38, 29)),
    ],
)
def test_every_trigger_behind_a_synthetic_calendar_gets_the_same_as_of(trigger, reference) -> None:
    as_of = resolve_as_of(end_date=None, reference=reference, newest_day=NEWEST)
    assert as_of == utc(2026, 11, 20), trigger


def test_reference_time_is_floored_to_its_utc_day() -> None:
    assert resolve_as_of(
        end_date=None, reference=utc(2026, 11, 12, 23, 59), newest_day=NEWEST
    ) == utc(2026, 11, 12)
    # a naive reference is UTC
    from datetime import datetime

    assert resolve_as_of(
        end_date=None, reference=datetime(2026, 11, 12, 5), newest_day=None
    ) == utc(2026, 11, 12)


def test_an_explicit_end_date_wins_and_is_midnight() -> None:
    for value in ("2026-11-08", "2026-11-08T17:30:00", date(2026, 11, 8)):
        assert resolve_as_of(
            end_date=value, reference=utc(2026, 11, 26, 10), newest_day=NEWEST
        ) == utc(2026, 11, 8)


def test_a_malformed_end_date_names_itself() -> None:
    with pytest.raises(InvalidInput, match="end_date 'next tuesday' is not a date"):
        resolve_as_of(end_date="next tuesday", reference=None, newest_day=None)

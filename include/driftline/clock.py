"""One clock for every retrain: how a run's as-of time is resolved, whatever started it.

A run's as-of time decides its training window (``window_days`` of labels matured
``label_delay_days`` before it), so two runs minutes apart must not train on different
clocks because one came from the weekly cron and the other from a drift event. The rule,
the same for cron, operator, REST and drift-asset runs:

1. an explicit ``end_date`` (param or ``--as-of``) -> that day's UTC midnight;
2. otherwise the run's reference time (``data_interval_end``, else ``run_after``, else now)
   floored to UTC midnight,
3. capped at the end of the newest day present in the offline entity table, so a synthetic
   calendar that runs behind (or ahead of) the wall clock gives every trigger the same as-of.

The as-of is always a UTC midnight: windows are whole days, and the run records it (the
fingerprint's window, the version's ``as_of`` tag, the decision).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from driftline.errors import InvalidInput
from driftline.settings import Settings, get_settings


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (a naive one is taken to be UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def midnight(day: date | datetime) -> datetime:
    """The UTC midnight that starts ``day`` (a datetime is floored to its UTC day)."""
    if isinstance(day, datetime):
        day = utc(day).date()
    return datetime.combine(day, time(0), tzinfo=UTC)


def parse_end_date(value: str | date | datetime, source: str = "end_date") -> datetime:
    """An explicit as-of date -> its UTC midnight; a malformed value names its source."""
    if isinstance(value, date | datetime):
        return midnight(value)
    try:
        return midnight(datetime.fromisoformat(str(value).strip()))
    except ValueError:
        raise InvalidInput(
            f"{source} {value!r} is not a date; use YYYY-MM-DD (UTC midnight)"
        ) from None


def resolve_as_of(
    *,
    end_date: str | date | datetime | None,
    reference: datetime | None,
    newest_day: date | None,
) -> datetime:
    """The as-of time of a retrain (see the module docstring for the rule)."""
    if end_date:
        return parse_end_date(end_date)
    as_of = midnight(reference or datetime.now(UTC))
    if newest_day is not None:
        as_of = min(as_of, midnight(newest_day) + timedelta(days=1))
    return as_of


def newest_day(offline_dir: Path, table: str) -> date | None:
    """The newest day partition of an offline table, or None when it has none."""
    from driftline import offline

    days = offline.list_days(offline_dir, table)
    return days[-1] if days else None


def retrain_as_of(
    model: str,
    *,
    end_date: str | date | datetime | None,
    reference: datetime | None,
    settings: Settings | None = None,
) -> datetime:
    """:func:`resolve_as_of` for one model's entity table in the configured offline store."""
    from driftline.specs import load_spec

    settings = settings or get_settings()
    spec = load_spec(model, settings.models_dir)
    return resolve_as_of(
        end_date=end_date,
        reference=reference,
        newest_day=newest_day(settings.offline_dir, spec.entity_table),
    )

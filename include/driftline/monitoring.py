"""The monitoring store: what driftline decided and why, queryable after the fact.

SQLAlchemy 2 Core over SQLite (embedded) or PostgreSQL (production), schema versioned with
Alembic (``driftline/migrations``, version table ``driftline_alembic_version`` so the store
can share a database with other tools). Audit rows are append-only; the one mutable row per
model, ``model_state``, changes only through a guarded compare-and-set update.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from driftline.errors import DriftlineError
from driftline.settings import get_settings

log = logging.getLogger(__name__)

VERSION_TABLE = "driftline_alembic_version"
MIGRATIONS = Path(__file__).with_name("migrations")

metadata = sa.MetaData()

model_state = sa.Table(
    "model_state",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("champion_version", sa.String(32), nullable=True),
    sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(512), nullable=False, server_default=""),
)

promotion_audit = sa.Table(
    "promotion_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("challenger_version", sa.String(32), nullable=True),
    sa.Column("champion_before", sa.String(32), nullable=True),
    sa.Column("champion_after", sa.String(32), nullable=True),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
)

validation_results = sa.Table(
    "validation_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("failed_checks", sa.JSON, nullable=False),
    sa.Column("fingerprint", sa.JSON, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
)

drift_reports = sa.Table(
    "drift_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("champion_version", sa.String(32), nullable=True),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("current_rows", sa.Integer, nullable=False),
    sa.Column("reference_rows", sa.Integer, nullable=False),
    sa.Column("share_drifted", sa.Float, nullable=False),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("prediction", sa.JSON, nullable=False),
    sa.Column("performance", sa.JSON, nullable=False),
    sa.Column("verdict", sa.String(32), nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("report_uri", sa.Text, nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
)

# Status of a drift event: new (written by an outside system, not yet seen) -> emitted (an
# asset event was raised for it) -> consumed (a retrain run took it) or suppressed (a retrain
# run skipped it, e.g. cooldown); new -> rejected (malformed, unknown model). Changes are
# guarded updates from an expected status; rows are never deleted.
EVENT_STATUSES = ("new", "emitted", "consumed", "suppressed", "rejected")

drift_events = sa.Table(
    "drift_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("report_id", sa.Integer, sa.ForeignKey("drift_reports.id"), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("consumed_by_dag_id", sa.String(250), nullable=True),
    sa.Column("consumed_by_run_id", sa.String(250), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def _now() -> datetime:
    return datetime.now(UTC)


def migrate(url: str) -> None:
    """Bring the store at ``url`` to the newest schema (idempotent)."""
    from alembic import command
    from alembic.config import Config

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    try:
        command.upgrade(config, "head")
    except sa.exc.OperationalError as exc:
        raise DriftlineError(
            f"monitoring store unreachable at {_redact(url)} (DRIFTLINE_MONITORING_DB_URL): "
            f"{exc.orig}"
        ) from exc


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def engine(url: str | None = None) -> Engine:
    """An engine on a migrated store; the schema is brought up to date once per process."""
    url = url or get_settings().monitoring_db_url
    with _lock:
        if url not in _migrated:
            migrate(url)
            _migrated.add(url)
        if url not in _engines:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 30}
            _engines[url] = sa.create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                sa.event.listen(_engines[url], "connect", _sqlite_pragmas)
        return _engines[url]


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# --- validation ---------------------------------------------------------------------------


def record_validation(
    *,
    model: str,
    passed: bool,
    failed_checks: list[dict[str, Any]],
    fingerprint: dict[str, Any],
    report_uri: str,
    dag_id: str | None = None,
    run_id: str | None = None,
    url: str | None = None,
) -> int:
    return _append(
        validation_results,
        url,
        created_at=_now(),
        model=model,
        passed=passed,
        failed_checks=failed_checks,
        fingerprint=fingerprint,
        report_uri=report_uri,
        dag_id=dag_id,
        run_id=run_id,
    )


def _append(table: sa.Table, url: str | None, **values: Any) -> int:
    """Insert one row of an append-only table; returns its id."""
    with engine(url).begin() as conn:
        return int(conn.execute(table.insert().values(**values)).inserted_primary_key[0])


def _newest(table: sa.Table, model: str, limit: int, url: str | None) -> list[dict[str, Any]]:
    """A model's rows of ``table``, newest first."""
    with engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.model == model).order_by(table.c.id.desc()).limit(limit)
        ).mappings()
        return [dict(row) for row in rows]


# --- champion state and audit ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelState:
    model: str
    champion_version: str | None
    generation: int


def read_state(model: str, url: str | None = None) -> ModelState:
    with engine(url).connect() as conn:
        row = conn.execute(sa.select(model_state).where(model_state.c.model == model)).one_or_none()
    if row is None:
        return ModelState(model, None, 0)
    return ModelState(model, row.champion_version, row.generation)


def compare_and_set_champion(
    *, model: str, expected: str | None, new: str | None, actor: str, url: str | None = None
) -> bool:
    """Move the champion from ``expected`` to ``new`` only if nobody moved it meanwhile.

    One guarded UPDATE (or the first INSERT): exactly one of two racing callers wins, on
    SQLite and on PostgreSQL alike.
    """
    now = _now()
    with engine(url).begin() as conn:
        exists = conn.execute(
            sa.select(model_state.c.model).where(model_state.c.model == model)
        ).one_or_none()
        if exists is None:
            if expected is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        model_state.insert().values(
                            model=model,
                            champion_version=new,
                            generation=1,
                            updated_at=now,
                            updated_by=actor,
                        )
                    )
            except sa.exc.IntegrityError:
                return False  # another caller created the row first
            return True
        guard = (
            model_state.c.champion_version.is_(None)
            if expected is None
            else model_state.c.champion_version == expected
        )
        result = conn.execute(
            model_state.update()
            .where(model_state.c.model == model, guard)
            .values(
                champion_version=new,
                generation=model_state.c.generation + 1,
                updated_at=now,
                updated_by=actor,
            )
        )
        return result.rowcount == 1


def append_audit(
    *,
    model: str,
    action: str,
    actor: str,
    challenger_version: str | None = None,
    champion_before: str | None = None,
    champion_after: str | None = None,
    reasons: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    reason: str = "",
    dag_id: str | None = None,
    run_id: str | None = None,
    url: str | None = None,
) -> int:
    return _append(
        promotion_audit,
        url,
        created_at=_now(),
        model=model,
        action=action,
        challenger_version=challenger_version,
        champion_before=champion_before,
        champion_after=champion_after,
        reasons=reasons or [],
        metrics=metrics or {},
        actor=actor,
        reason=reason,
        dag_id=dag_id,
        run_id=run_id,
    )


def audit_log(model: str, *, limit: int = 50, url: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    return _newest(promotion_audit, model, limit, url)


def validation_log(model: str, *, limit: int = 50, url: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    return _newest(validation_results, model, limit, url)


# --- drift reports and events ---------------------------------------------------------------


def record_drift_report(*, url: str | None = None, **values: Any) -> int:
    return _append(drift_reports, url, created_at=_now(), **values)


def drift_report_log(
    model: str, *, limit: int = 20, url: str | None = None
) -> list[dict[str, Any]]:
    """Newest first."""
    return _newest(drift_reports, model, limit, url)


def create_drift_event(
    *,
    model: str,
    source: str,
    payload: Any,
    status: str = "new",
    report_id: int | None = None,
    reason: str = "",
    dag_id: str | None = None,
    run_id: str | None = None,
    url: str | None = None,
) -> int:
    """Append a drift event. Outside systems insert rows with status ``new`` themselves."""
    if status not in EVENT_STATUSES:
        raise DriftlineError(f"drift event status {status!r} is not one of {EVENT_STATUSES}")
    now = _now()
    return _append(
        drift_events,
        url,
        created_at=now,
        model=model,
        source=source,
        payload=payload,
        report_id=report_id,
        status=status,
        status_reason=reason,
        consumed_by_dag_id=dag_id,
        consumed_by_run_id=run_id,
        updated_at=now,
    )


# Rows of drift_events are written by outside systems, so a row may hold anything: a payload
# that is not JSON, a timestamp SQLite cannot parse. Reading them through the JSON and
# DateTime types would raise for the whole result set and stop every model's events; so the
# readers below fetch those columns raw and decode each row on its own. A row that does not
# decode comes back with ``problem`` set (and the raw text in its place) instead of raising.
_RAW_COLUMNS = ("payload", "created_at", "updated_at")


def _raw_event_select() -> sa.Select:
    return sa.select(
        *(
            sa.type_coerce(column, sa.Text).label(column.name)
            if column.name in _RAW_COLUMNS
            else column
            for column in drift_events.columns
        )
    )


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value))
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # SQLite keeps no offset; driftline writes UTC
    return moment


def _decode_event(raw: Any, dialect: str = "sqlite") -> dict[str, Any]:
    row = dict(raw)
    problems = []
    # SQLite hands back the stored text; PostgreSQL's driver has already decoded the JSON
    # (and the database refused what was not JSON), so a str there is a JSON string
    if dialect == "sqlite" and isinstance(row["payload"], str):
        try:
            row["payload"] = json.loads(row["payload"])
        except ValueError as exc:
            problems.append(f"payload is not JSON ({exc}): {row['payload'][:200]!r}")
    for name in ("created_at", "updated_at"):
        try:
            row[name] = _timestamp(row[name])
        except (TypeError, ValueError):
            problems.append(f"{name} is not a timestamp: {str(row[name])[:100]!r}")
            row[name] = None
    row["problem"] = "; ".join(problems) or None
    return row


def new_drift_events(model: str | None = None, *, url: str | None = None) -> list[dict[str, Any]]:
    """Events still in status ``new`` (oldest first), for one model or all."""
    query = _raw_event_select().where(drift_events.c.status == "new")
    if model is not None:
        query = query.where(drift_events.c.model == model)
    with engine(url).connect() as conn:
        rows = conn.execute(query.order_by(drift_events.c.id)).mappings()
        return [_decode_event(row, conn.dialect.name) for row in rows]


def transition_event(
    event_id: int,
    *,
    from_statuses: tuple[str, ...],
    to_status: str,
    reason: str = "",
    dag_id: str | None = None,
    run_id: str | None = None,
    claimed_before: datetime | None = None,
    url: str | None = None,
) -> bool:
    """Guarded status change; False when the event is not in one of ``from_statuses`` (or,
    with ``claimed_before``, was touched since then: a lease that someone else renewed)."""
    if to_status not in EVENT_STATUSES:
        raise DriftlineError(f"drift event status {to_status!r} is not one of {EVENT_STATUSES}")
    values: dict[str, Any] = {"status": to_status, "status_reason": reason, "updated_at": _now()}
    if dag_id is not None:
        values.update(consumed_by_dag_id=dag_id, consumed_by_run_id=run_id)
    elif to_status in ("new", "emitted"):
        values.update(consumed_by_dag_id=None, consumed_by_run_id=None)
    guard = [drift_events.c.id == event_id, drift_events.c.status.in_(from_statuses)]
    if claimed_before is not None:
        guard.append(drift_events.c.updated_at < claimed_before)
    with engine(url).begin() as conn:
        result = conn.execute(drift_events.update().where(*guard).values(**values))
        return result.rowcount == 1


def drift_event(event_id: int, *, url: str | None = None) -> dict[str, Any] | None:
    with engine(url).connect() as conn:
        row = (
            conn.execute(_raw_event_select().where(drift_events.c.id == event_id))
            .mappings()
            .one_or_none()
        )
        return _decode_event(row, conn.dialect.name) if row else None


def drift_event_log(
    model: str | None = None,
    *,
    statuses: tuple[str, ...] | None = None,
    limit: int = 50,
    url: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first."""
    query = _raw_event_select()
    if model is not None:
        query = query.where(drift_events.c.model == model)
    if statuses:
        query = query.where(drift_events.c.status.in_(statuses))
    with engine(url).connect() as conn:
        rows = conn.execute(query.order_by(drift_events.c.id.desc()).limit(limit)).mappings()
        return [_decode_event(row, conn.dialect.name) for row in rows]


def event_counts(model: str, *, url: str | None = None) -> dict[str, dict[str, Any]]:
    """Per status: how many events a model has and when the oldest of them was last updated."""
    query = (
        sa.select(
            drift_events.c.status,
            sa.func.count().label("count"),
            sa.type_coerce(sa.func.min(drift_events.c.updated_at), sa.Text).label("oldest"),
        )
        .where(drift_events.c.model == model)
        .group_by(drift_events.c.status)
    )
    with engine(url).connect() as conn:
        counts = {}
        for row in conn.execute(query).mappings():
            try:
                oldest = _timestamp(row["oldest"])
            except (TypeError, ValueError):
                oldest = None
            counts[row["status"]] = {"count": int(row["count"]), "oldest": oldest}
        return counts


def last_consumed_event(model: str, *, url: str | None = None) -> dict[str, Any] | None:
    """The event a retrain run consumed most recently (what the cooldown counts from)."""
    query = (
        _raw_event_select()
        .where(drift_events.c.model == model, drift_events.c.status == "consumed")
        .order_by(drift_events.c.updated_at.desc(), drift_events.c.id.desc())
        .limit(1)
    )
    with engine(url).connect() as conn:
        row = conn.execute(query).mappings().one_or_none()
        return _decode_event(row, conn.dialect.name) if row else None

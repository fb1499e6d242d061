"""The monitoring store: what driftline decided and why, queryable after the fact.

SQLAlchemy 2 Core over SQLite (embedded) or PostgreSQL (production), schema versioned with
Alembic (``driftline/migrations``, version table ``driftline_alembic_version`` so the store
can share a database with other tools). Audit rows are append-only; the one mutable row per
model, ``model_state``, changes only through a guarded compare-and-set update, and a
champion change that spans this store and MLflow's aliases is a ``promotion_intents`` row
(pending -> done | undone) written in the same transaction as the claim and the outcome.

A store that cannot be reached (connection refused, a restarted server, a locked SQLite
file) raises ``Unavailable``, so Airflow retries and the CLI exits 3.
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

from driftline.errors import DriftlineError, InvalidInput, Unavailable
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
    sa.Column(
        "created_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.current_timestamp(),
    ),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("report_id", sa.Integer, sa.ForeignKey("drift_reports.id"), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="new"),
    sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("consumed_by_dag_id", sa.String(250), nullable=True),
    sa.Column("consumed_by_run_id", sa.String(250), nullable=True),
    sa.Column(
        "updated_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.current_timestamp(),
    ),
)

# What an outside system may write: the rest is the database's (``grant_event_writer``).
WRITER_COLUMNS = ("model", "source", "payload")

# A champion change in flight: pending (claimed in model_state, MLflow's aliases not yet
# known to have moved) -> done (aliases moved, audit written) or undone (claim given back).
INTENT_STATUSES = ("pending", "done", "undone")

promotion_intents = sa.Table(
    "promotion_intents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_version", sa.String(32), nullable=True),
    sa.Column("to_version", sa.String(32), nullable=True),
    sa.Column("previous_before", sa.String(32), nullable=True),
    sa.Column("previous_after", sa.String(32), nullable=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("resolved_by", sa.String(256), nullable=True),
    sa.Column("resolution", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_promotion_intents_model_status", "model", "status"),
)

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()
# seconds libpq waits for PostgreSQL to answer a new connection; without it a server that
# accepts TCP and never answers (a hung host, a full backlog) blocks a task or a scrape
PG_CONNECT_TIMEOUT_S = 5


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
    config.set_main_option("sqlalchemy.url", _with_connect_timeout(url).replace("%", "%%"))
    try:
        command.upgrade(config, "head")
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise _unavailable(url, exc) from exc


def _with_connect_timeout(url: str) -> str:
    """A PostgreSQL URL with libpq's ``connect_timeout`` (unless it sets one); others as is."""
    parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("postgresql") or "connect_timeout" in parsed.query:
        return url
    return parsed.update_query_dict(
        {"connect_timeout": str(PG_CONNECT_TIMEOUT_S)}
    ).render_as_string(hide_password=False)


def _unavailable(url: str, exc: BaseException) -> Unavailable:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return Unavailable(
        f"monitoring store unreachable at {_redact(url)} (DRIFTLINE_MONITORING_DB_URL): "
        f"{detail[0] if detail else type(exc).__name__}"
    )


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
            _engines[url] = sa.create_engine(_with_connect_timeout(url), **kwargs)
            sa.event.listen(_engines[url], "handle_error", _by_kind(url))
            if url.startswith("sqlite"):
                sa.event.listen(_engines[url], "connect", _sqlite_pragmas)
        return _engines[url]


def _by_kind(url: str) -> Any:
    """An error handler that turns "cannot reach the store" into ``Unavailable``.

    Connection refused, a server restarted under an open connection, a locked SQLite file:
    retrying helps. Everything else (a constraint, a bad query) keeps its SQLAlchemy type.
    """

    def handle(context: sa.engine.ExceptionContext) -> None:
        if context.is_pre_ping:  # the pool reconnects by itself after a failed ping
            return
        error = context.sqlalchemy_exception
        if context.is_disconnect or isinstance(
            error, (sa.exc.OperationalError, sa.exc.InterfaceError)
        ):
            raise _unavailable(url, error or context.original_exception)

    return handle


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
        return _insert(conn, table, **values)


def _insert(conn: sa.Connection, table: sa.Table, **values: Any) -> int:
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
    with engine(url).begin() as conn:
        return _compare_and_set(conn, model, expected, new, actor)


def _compare_and_set(
    conn: sa.Connection, model: str, expected: str | None, new: str | None, actor: str
) -> bool:
    now = _now()
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


# --- promotion intents ----------------------------------------------------------------------


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _intent_row(row: Any) -> dict[str, Any]:
    intent = dict(row)
    for key in ("created_at", "lease_until", "resolved_at"):
        intent[key] = _aware(intent[key])
    return intent


def begin_promotion(
    *,
    model: str,
    expected: str | None,
    new: str | None,
    action: str,
    actor: str,
    previous_before: str | None,
    previous_after: str | None,
    lease_seconds: float,
    reason: str = "",
    reasons: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    url: str | None = None,
) -> int | None:
    """Claim the champion (``expected`` -> ``new``) and record the intent, in one transaction.

    Returns the intent's id, or None when the claim is refused: the champion is no longer
    ``expected`` or another change of this model is still pending.
    """
    from datetime import timedelta

    now = _now()
    try:
        with engine(url).begin() as conn:
            if not _compare_and_set(conn, model, expected, new, actor):
                raise _Refused
            # after the guarded update: a racing claim has committed or waits on our row lock
            if _pending(conn, model):
                raise _Refused
            return _insert(
                conn,
                promotion_intents,
                created_at=now,
                model=model,
                action=action,
                from_version=expected,
                to_version=new,
                previous_before=previous_before,
                previous_after=previous_after,
                actor=actor,
                reason=reason,
                reasons=reasons or [],
                metrics=metrics or {},
                dag_id=dag_id,
                run_id=run_id,
                status="pending",
                lease_until=now + timedelta(seconds=lease_seconds),
            )
    except _Refused:
        return None


def _pending(conn: sa.Connection, model: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(promotion_intents)
        .where(promotion_intents.c.model == model, promotion_intents.c.status == "pending")
        .order_by(promotion_intents.c.id)
    ).mappings()
    return [_intent_row(row) for row in rows]


def pending_intents(model: str, *, url: str | None = None) -> list[dict[str, Any]]:
    """The model's champion changes not yet done or undone, oldest first."""
    with engine(url).connect() as conn:
        return _pending(conn, model)


def resolve_intent(
    intent_id: int,
    *,
    status: str,
    resolved_by: str,
    resolution: str,
    store_from: str | None = None,
    store_to: str | None = None,
    move_store: bool = False,
    audit: dict[str, Any] | None = None,
    url: str | None = None,
) -> bool:
    """End a pending intent as ``done`` or ``undone``, in one transaction with its audit row.

    With ``move_store`` the champion is also compare-and-set from ``store_from`` to
    ``store_to`` (an undo gives the claim back). False, and nothing written, when someone
    else resolved the intent first or the store's champion is not ``store_from``.
    """
    if status not in ("done", "undone"):
        raise DriftlineError(f"an intent ends done or undone, not {status!r}")
    try:
        with engine(url).begin() as conn:
            return _resolve(
                conn,
                intent_id,
                status,
                resolved_by,
                resolution,
                store_from,
                store_to,
                move_store,
                audit,
            )
    except _Refused:
        return False


class _Refused(Exception):
    """Inside a transaction: a guard did not hold; roll the whole transaction back."""


def _resolve(
    conn: sa.Connection,
    intent_id: int,
    status: str,
    resolved_by: str,
    resolution: str,
    store_from: str | None,
    store_to: str | None,
    move_store: bool,
    audit: dict[str, Any] | None,
) -> bool:
    ended = conn.execute(
        promotion_intents.update()
        .where(promotion_intents.c.id == intent_id, promotion_intents.c.status == "pending")
        .values(status=status, resolved_at=_now(), resolved_by=resolved_by, resolution=resolution)
    )
    if ended.rowcount != 1:
        raise _Refused
    if move_store and not _compare_and_set(
        conn, _intent_model(conn, intent_id), store_from, store_to, resolved_by
    ):
        raise _Refused
    if audit is not None:
        _insert(conn, promotion_audit, created_at=_now(), **_audit_values(**audit))
    return True


def _intent_model(conn: sa.Connection, intent_id: int) -> str:
    return conn.execute(
        sa.select(promotion_intents.c.model).where(promotion_intents.c.id == intent_id)
    ).scalar_one()


def adopt_champion(
    *,
    model: str,
    expected: str | None,
    new: str | None,
    actor: str,
    resolution: str,
    audit: dict[str, Any],
    url: str | None = None,
) -> bool:
    """Make the store name ``new`` (what MLflow serves) as a done intent with its audit row.

    For a store that disagrees with MLflow and has nothing pending: a fresh store, a store
    from before intents existed, an alias moved by hand. False when the state moved.
    """
    now = _now()
    try:
        with engine(url).begin() as conn:
            if _pending(conn, model) or not _compare_and_set(conn, model, expected, new, actor):
                raise _Refused
            _adopted(conn, model, expected, new, actor, resolution, audit, now)
    except _Refused:
        return False
    return True


def _adopted(
    conn: sa.Connection,
    model: str,
    expected: str | None,
    new: str | None,
    actor: str,
    resolution: str,
    audit: dict[str, Any],
    now: datetime,
) -> None:
    _insert(
        conn,
        promotion_intents,
        created_at=now,
        model=model,
        action="adopted",
        from_version=expected,
        to_version=new,
        actor=actor,
        reasons=[resolution],
        metrics={},
        status="done",
        lease_until=now,
        resolved_at=now,
        resolved_by=actor,
        resolution=resolution,
    )
    _insert(conn, promotion_audit, created_at=now, **_audit_values(**audit))


def champion_history(model: str, *, url: str | None = None) -> list[dict[str, Any]]:
    """The model's completed champion changes, oldest first (what rollback walks back)."""
    with engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(promotion_intents)
            .where(promotion_intents.c.model == model, promotion_intents.c.status == "done")
            .order_by(promotion_intents.c.id)
        ).mappings()
        return [_intent_row(row) for row in rows]


def intent_log(model: str, *, limit: int = 50, url: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    return [_intent_row(row) for row in _newest(promotion_intents, model, limit, url)]


def _audit_values(
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
) -> dict[str, Any]:
    return {
        "model": model,
        "action": action,
        "challenger_version": challenger_version,
        "champion_before": champion_before,
        "champion_after": champion_after,
        "reasons": reasons or [],
        "metrics": metrics or {},
        "actor": actor,
        "reason": reason,
        "dag_id": dag_id,
        "run_id": run_id,
    }


def append_audit(*, url: str | None = None, **fields: Any) -> int:
    """One promotion_audit row; the fields are those of ``promotion_audit``."""
    return _append(promotion_audit, url, created_at=_now(), **_audit_values(**fields))


def audit_log(model: str, *, limit: int = 50, url: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    return _newest(promotion_audit, model, limit, url)


def audit_summary(*, url: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> action -> the newest audit row of that action, with ``count``, the number of
    rows of that action (two queries, whatever the table's size: for the exporter)."""
    groups = sa.select(
        promotion_audit.c.model,
        promotion_audit.c.action,
        sa.func.count().label("count"),
        sa.func.max(promotion_audit.c.id).label("newest"),
    ).group_by(promotion_audit.c.model, promotion_audit.c.action)
    with engine(url).connect() as conn:
        counted = conn.execute(groups).all()
        ids = [group.newest for group in counted]
        newest = {
            row["id"]: row
            for row in conn.execute(
                sa.select(promotion_audit).where(promotion_audit.c.id.in_(ids))
            ).mappings()
        }
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for group in counted:
        row = dict(newest[group.newest])
        row.update(created_at=_aware(row["created_at"]), count=int(group.count))
        summary.setdefault(group.model, {})[group.action] = row
    return summary


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


def newest_drift_reports(*, url: str | None = None) -> dict[str, dict[str, Any]]:
    """Every model's newest drift report, by model (one query, for the exporter)."""
    newest = sa.select(sa.func.max(drift_reports.c.id)).group_by(drift_reports.c.model)
    with engine(url).connect() as conn:
        rows = conn.execute(sa.select(drift_reports).where(drift_reports.c.id.in_(newest)))
        return {
            row["model"]: {**row, "created_at": _aware(row["created_at"])}
            for row in rows.mappings()
        }


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
    return event_counts_by_model(model, url=url).get(model, {})


def event_counts_by_model(
    model: str | None = None, *, url: str | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`event_counts` for every model (or one) in one query: model -> status -> counts."""
    query = sa.select(
        drift_events.c.model,
        drift_events.c.status,
        sa.func.count().label("count"),
        sa.type_coerce(sa.func.min(drift_events.c.updated_at), sa.Text).label("oldest"),
    )
    if model is not None:
        query = query.where(drift_events.c.model == model)
    query = query.group_by(drift_events.c.model, drift_events.c.status)
    with engine(url).connect() as conn:
        counts: dict[str, dict[str, dict[str, Any]]] = {}
        for row in conn.execute(query).mappings():
            try:
                oldest = _timestamp(row["oldest"])
            except (TypeError, ValueError):
                oldest = None
            counts.setdefault(row["model"], {})[row["status"]] = {
                "count": int(row["count"]),
                "oldest": oldest,
            }
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


def grant_event_writer(role: str, *, url: str | None = None) -> list[str]:
    """Let ``role`` INSERT drift events (model, source, payload) and nothing else.

    PostgreSQL only (the embedded SQLite store has no roles). Run as the store's owner after
    the schema is migrated; idempotent. Whatever the role held on the store's tables before
    is revoked first. Returns the statements run.
    """
    url = url or get_settings().monitoring_db_url
    if not url.startswith("postgresql"):
        raise InvalidInput(
            f"events grant-writer: the monitoring store {_redact(url)} "
            "(DRIFTLINE_MONITORING_DB_URL) is not PostgreSQL; only PostgreSQL has roles"
        )
    store = engine(url)
    with store.begin() as conn:
        if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
            quoted = conn.dialect.identifier_preparer.quote(role)
        else:
            raise InvalidInput(
                f"events grant-writer: role {role!r} does not exist in {_redact(url)}; "
                "deploy/postgres/init-databases.sh creates it (DRIFT_WRITER_USER)"
            )
        sequence = conn.execute(
            sa.text("SELECT pg_get_serial_sequence('drift_events', 'id')")
        ).scalar_one()
        columns = ", ".join(WRITER_COLUMNS)
        statements = [
            f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {quoted}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {quoted}",
            f"GRANT INSERT ({columns}) ON drift_events TO {quoted}",
            f"GRANT USAGE ON SEQUENCE {sequence} TO {quoted}",
        ]
        for statement in statements:
            conn.execute(sa.text(statement))
    return statements


# --- canary rollouts ------------------------------------------------------------------------

# A rollout: active (ramping) | paused (share kept, not ramping) -> promoted | aborted |
# undone (its start never reached MLflow). Open while ended_at is null: at most one per
# model (a partial unique index). ``pending_action`` is the change in flight between this
# store and MLflow (rollout_started, rollout_step, rollout_completed, rollout_aborted);
# ``pending`` holds what finishing or undoing it needs.
ROLLOUT_STATUSES = ("active", "paused", "promoted", "aborted", "undone")
OPEN_ROLLOUT = ("active", "paused")

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("candidate_version", sa.String(32), nullable=False),
    sa.Column("champion_version", sa.String(32), nullable=True),
    sa.Column("steps", sa.JSON, nullable=False),
    sa.Column("step_minutes", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("pending_action", sa.String(32), nullable=True),
    sa.Column("pending", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("end_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
)

# "any pending change, or none": the default expectation of change_rollout
ANY_PENDING = "*"


def _rollout_row(row: Any) -> dict[str, Any]:
    rollout = dict(row)
    for key in ("created_at", "step_started_at", "lease_until", "updated_at", "ended_at"):
        rollout[key] = _aware(rollout[key])
    return rollout


def begin_rollout(
    *,
    model: str,
    candidate: str,
    champion: str | None,
    steps: list[float],
    step_minutes: float,
    pending: dict[str, Any],
    lease_seconds: float,
    actor: str,
    dag_id: str | None = None,
    run_id: str | None = None,
    url: str | None = None,
) -> int | None:
    """Open a rollout at step 0 with its start in flight; None when one is open already."""
    from datetime import timedelta

    now = _now()
    try:
        with engine(url).begin() as conn:
            if _open_rollout(conn, model) is not None:
                return None
            return _insert(
                conn,
                rollouts,
                created_at=now,
                model=model,
                candidate_version=candidate,
                champion_version=champion,
                steps=list(steps),
                step_minutes=step_minutes,
                status="active",
                step=0,
                share=steps[0],
                pending_action="rollout_started",
                pending=pending,
                lease_until=now + timedelta(seconds=lease_seconds),
                updated_at=now,
                actor=actor,
                dag_id=dag_id,
                run_id=run_id,
            )
    except sa.exc.IntegrityError:  # a racing start committed first (the unique index)
        return None


def _open_rollout(conn: sa.Connection, model: str) -> dict[str, Any] | None:
    row = (
        conn.execute(
            sa.select(rollouts).where(rollouts.c.model == model, rollouts.c.ended_at.is_(None))
        )
        .mappings()
        .one_or_none()
    )
    return _rollout_row(row) if row else None


def open_rollout(model: str, *, url: str | None = None) -> dict[str, Any] | None:
    """The model's rollout that has not ended (active or paused), or None."""
    with engine(url).connect() as conn:
        return _open_rollout(conn, model)


def rollout_log(model: str, *, limit: int = 20, url: str | None = None) -> list[dict[str, Any]]:
    """Newest first."""
    return [_rollout_row(row) for row in _newest(rollouts, model, limit, url)]


def change_rollout(
    rollout_id: int,
    *,
    statuses: tuple[str, ...] = OPEN_ROLLOUT,
    pending: str | None = ANY_PENDING,
    step: int | None = None,
    values: dict[str, Any],
    audit: dict[str, Any] | None = None,
    url: str | None = None,
) -> bool:
    """One guarded update of an open rollout, with its audit row, in one transaction.

    The guard: the rollout is open, in one of ``statuses``, at ``step`` (when given), and
    its change in flight is ``pending`` (None: nothing in flight; ``ANY_PENDING``: either).
    False, and nothing written, when the guard does not hold: someone else moved it first.
    """
    guard = [
        rollouts.c.id == rollout_id,
        rollouts.c.ended_at.is_(None),
        rollouts.c.status.in_(statuses),
    ]
    if step is not None:
        guard.append(rollouts.c.step == step)
    if pending is None:
        guard.append(rollouts.c.pending_action.is_(None))
    elif pending != ANY_PENDING:
        guard.append(rollouts.c.pending_action == pending)
    with engine(url).begin() as conn:
        changed = conn.execute(
            rollouts.update().where(*guard).values(**values, updated_at=_now())
        ).rowcount
        if changed != 1:
            return False
        if audit is not None:
            _insert(conn, promotion_audit, created_at=_now(), **_audit_values(**audit))
        return True

"""Build a model's training set: labeled entity rows joined point-in-time with Feast.

The training window is ``window_days`` of *matured* labels ending ``label_delay_days``
before the run's as-of time; the rows after it (too young to carry a label) are fetched
too, as ``recent``, so the validation gate also sees the newest data the run has. Both are
written to the run's directory with a fingerprint: what was read, from where, and a hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from driftline import offline
from driftline.errors import DriftlineError
from driftline.files import write_atomic, write_json
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec

log = logging.getLogger(__name__)

TRAINING_FILE = "training_set.parquet"
RECENT_FILE = "recent.parquet"
FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class Window:
    """The labeled training window ``[start, end)`` and the run's as-of time."""

    start: datetime
    end: datetime
    as_of: datetime

    @property
    def days(self) -> list[date]:
        first, last = self.start.date(), (self.as_of - timedelta(microseconds=1)).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def as_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}


def training_window(spec: ModelSpec, as_of: datetime, window_days: int | None = None) -> Window:
    """``window_days`` of matured labels ending ``label_delay_days`` before ``as_of``."""
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    days = window_days or spec.training.window_days
    minimum = spec.training.validation_days + spec.training.holdout_days + 1
    if days < minimum:
        raise DriftlineError(
            f"window_days {days} is too short for {spec.name}: validation_days + holdout_days "
            f"+ 1 = {minimum} days at least ({spec.source})"
        )
    end = as_of - timedelta(days=spec.label_delay_days)
    return Window(start=end - timedelta(days=days), end=end, as_of=as_of)


@dataclass(frozen=True)
class Fingerprint:
    """What a training set is, for lineage: logged to MLflow and stored with the run."""

    model: str
    feature_service: str
    window: dict[str, str]
    rows: int
    positives: int
    recent_rows: int
    sha256: str
    columns: list[str]
    offline_dir: str
    # columns added upstream to partitions it read, read past (validation.on_new_columns)
    schema_changes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """A training-set file whole or not at all: a torn one would be hashed and trained on."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomic(path, buffer.getvalue())


# DuckDB's memory for sorting a joined set into its file; beyond it the sort spills to disk
SORT_MEMORY = "1GB"


def _sorted_copy(source: Path, path: Path, order: list[str]) -> None:
    """``source`` sorted by ``order`` and then by every other column (so rows that tie on the
    keys still come in one order and the file hashes the same every time), written to
    ``path`` whole or not at all, in bounded memory."""
    import duckdb

    from driftline.feast_offline import _ident, _literal

    columns = pq.read_schema(source).names
    keys = [*order, *(c for c in columns if c not in order)]
    tmp = path.with_name(f".{path.name}.tmp")
    spill = path.with_name(f".{path.name}.spill")
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = {_literal(SORT_MEMORY)}")
        con.execute(f"SET temp_directory = {_literal(str(spill))}")
        con.execute(
            f"COPY (SELECT * FROM read_parquet({_literal(str(source))}) "
            f"ORDER BY {', '.join(f'{_ident(k)} NULLS LAST' for k in keys)}) "
            f"TO {_literal(str(tmp))} (FORMAT parquet)"
        )
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
        shutil.rmtree(spill, ignore_errors=True)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _window_partitions(
    store: Any, spec: ModelSpec, window: Window, offline_dir: Path
) -> list[tuple[str, list[date]]]:
    """Every offline table the window's training set reads, with the days it reads: the
    entity table's window days, and each feature view's window days plus its TTL before."""
    from driftline.feature_store import offline_table

    present = set(offline.list_days(offline_dir, spec.entity_table))
    tables = [(spec.entity_table, [d for d in window.days if d in present])]
    for name in spec.feature_views:
        view = store.get_feature_view(name)
        ttl = view.ttl or timedelta(0)
        table = offline_table(view)
        present = set(offline.list_days(offline_dir, table))
        first = (window.start - ttl).date()
        wanted = [d for d in window.days if d in present]
        wanted += [d for d in present if first <= d < window.start.date()]
        tables.append((table, sorted(wanted)))
    return tables


def _check_partitions(store: Any, spec: ModelSpec, window: Window, offline_dir: Path) -> list[str]:
    """Every partition the window reads must have its table's schema; returns the columns
    added upstream, one entry per partition.

    A missing or retyped column always fails. With ``validation.on_new_columns: warn`` added
    columns are read past (training never sees them) and recorded as a warning of the
    validation gate; with ``block`` the build fails here, naming the partition."""
    warn = spec.validation.on_new_columns == "warn"
    changes = []
    for table, days in _window_partitions(store, spec, window, offline_dir):
        for path in offline.check_table(offline_dir, table, days, allow_new_columns=warn):
            added = offline.new_columns(path, table)
            if added:
                changes.append(f"{path}: new columns {added}")
    return changes


def entity_rows(spec: ModelSpec, window: Window, offline_dir: Path) -> pd.DataFrame:
    """Rows of the entity table from the window's start to its as-of time, by day partition.

    Rows are read by partition, not filtered by time at the top: a row stamped after the
    as-of time is kept so the validation gate can report it.
    """
    present = set(offline.list_days(offline_dir, spec.entity_table))
    days = [d for d in window.days if d in present]
    warn = spec.validation.on_new_columns == "warn"
    table = offline.read_table(
        offline_dir,
        spec.entity_table,
        days,
        allow_new_columns=warn,
        filters=[(spec.timestamp_column, ">=", pd.Timestamp(window.start))],
    )
    return _to_pandas(table, set(spec.categorical))


def _to_pandas(table: pa.Table, categorical: set[str]) -> pd.DataFrame:
    """``table`` as pandas, category strings shared and other strings (ids) not.

    pyarrow shares equal strings through a hash table of every value it converts: right for
    a category column, and for a column of unique ids a table as large as the ids that is
    never used (1.26M transaction ids: 0.11 GB of strings, 0.47 GB more to convert them)."""
    ids = {
        name: table.column(name)
        for name in table.column_names
        if name not in categorical
        and (
            pa.types.is_string(table.schema.field(name).type)
            or pa.types.is_large_string(table.schema.field(name).type)
        )
    }
    order = table.column_names
    table = table.drop_columns(list(ids))
    # the table is ours alone: each column's Arrow buffers go once it is converted
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    for name in sorted(ids, key=order.index):
        frame.insert(order.index(name), name, ids.pop(name).to_numpy(zero_copy_only=False))
    return frame


def _write_joined(store: Any, spec: ModelSpec, rows: pd.DataFrame, path: Path) -> None:
    """Feast's point-in-time join of ``rows``, written to ``path`` sorted by time and keys.

    The joined rows go from Feast to disk and are sorted there: the set is never a pandas
    frame here, and a 10M-row one costs what the entity rows cost. driftline's offline store
    streams its result (``to_parquet``); another store's comes as one Arrow table."""
    if rows.empty:
        _write_parquet(rows, path)
        return
    service = store.get_feature_service(spec.feature_service)
    job = store.get_historical_features(entity_df=rows, features=service)
    unsorted = path.with_name(f".{path.name}.unsorted")
    try:
        if hasattr(job, "to_parquet") and not job.on_demand_feature_views:
            job.to_parquet(unsorted)
        else:  # a store without a streaming writer, or on-demand views to transform
            pq.write_table(job.to_arrow(), unsorted)
        del job
        _sorted_copy(unsorted, path, [spec.timestamp_column, *spec.entity_keys])
    finally:
        unsorted.unlink(missing_ok=True)


def build_training_set(
    spec: ModelSpec,
    *,
    as_of: datetime,
    run_dir: Path,
    window_days: int | None = None,
    settings: Settings | None = None,
) -> Fingerprint:
    """Write ``training_set.parquet``, ``recent.parquet`` and ``fingerprint.json`` to ``run_dir``.

    Re-running overwrites the same files with the same content (the inputs are immutable
    day partitions), so clearing the task is safe.
    """
    from driftline.feature_store import get_store

    settings = settings or get_settings()
    window = training_window(spec, as_of, window_days)
    store = get_store(settings)
    try:
        store.get_feature_service(spec.feature_service)
    except Exception as exc:
        raise DriftlineError(
            f"feature service {spec.feature_service!r} of {spec.name} ({spec.source}) is not in "
            f"the Feast registry: {exc}; run `driftline feast apply`"
        ) from None
    schema_changes = _check_partitions(store, spec, window, settings.offline_dir)
    rows = entity_rows(spec, window, settings.offline_dir)
    stamps = rows[spec.timestamp_column]
    labeled = rows[(stamps < window.end) & (rows["label_available_at"] <= window.as_of)]
    recent = rows[stamps >= window.end].drop(columns=[spec.label])
    del rows, stamps

    run_dir.mkdir(parents=True, exist_ok=True)
    training_path, recent_path = run_dir / TRAINING_FILE, run_dir / RECENT_FILE
    _write_joined(store, spec, labeled, training_path)
    del labeled
    _write_joined(store, spec, recent, recent_path)
    del recent
    training = pq.ParquetFile(training_path)
    positives = 0
    for batch in training.iter_batches(columns=[spec.label]):
        positives += int(pc.sum(batch.column(0)).as_py() or 0)
    fingerprint = Fingerprint(
        model=spec.name,
        feature_service=spec.feature_service,
        window=window.as_dict(),
        rows=training.metadata.num_rows,
        positives=positives,
        recent_rows=pq.ParquetFile(recent_path).metadata.num_rows,
        sha256=_file_hash(training_path),
        columns=training.schema_arrow.names,
        offline_dir=str(settings.offline_dir),
        schema_changes=schema_changes,
    )
    write_json(run_dir / FINGERPRINT_FILE, fingerprint.as_dict())
    log.info(
        "training set for %s: %d labeled rows (%d positives) in [%s, %s), %d recent rows",
        spec.name,
        fingerprint.rows,
        fingerprint.positives,
        window.start,
        window.end,
        fingerprint.recent_rows,
    )
    return fingerprint


def read_fingerprint(run_dir: Path) -> Fingerprint:
    path = run_dir / FINGERPRINT_FILE
    if not path.is_file():
        raise DriftlineError(f"no training set at {run_dir}: {FINGERPRINT_FILE} is missing")
    return Fingerprint(**json.loads(path.read_text()))

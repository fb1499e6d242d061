"""The offline store on disk: one parquet file per table and UTC day, written atomically.

Layout under the offline directory::

    transactions/date=2026-01-05/part-0.parquet       raw card transactions with labels
    card_features/date=2026-01-05/part-0.parquet      card state just before each transaction
    merchant_features/date=2026-01-05/part-0.parquet  merchant snapshot at 00:00 UTC
    _manifest.json                                     seed, population and scenario per day

Raw data is immutable: a day is written once and never rewritten. Feast reads the tables
through the globs from :func:`table_glob`; driftline checks every partition's schema before
it trusts a read, so a bad or changed file is reported by path instead of failing deep
inside a join.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from driftline.errors import DriftlineError
from driftline.files import write_atomic

_TS = pa.timestamp("us", tz="UTC")

TRANSACTIONS_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.int64()),
        ("merchant_id", pa.int64()),
        ("event_timestamp", _TS),
        ("amount", pa.float64()),
        ("merchant_category", pa.string()),
        ("channel", pa.string()),
        ("hour", pa.int64()),
        ("distance_from_home_km", pa.float64()),
        ("is_fraud", pa.int64()),
        ("label_available_at", _TS),
    ]
)

CARD_FEATURES_SCHEMA = pa.schema(
    [
        ("card_id", pa.int64()),
        ("event_timestamp", _TS),
        ("card_txn_count_1h", pa.int64()),
        ("card_txn_count_24h", pa.int64()),
        ("card_amount_mean_7d", pa.float64()),
        ("card_amount_max_7d", pa.float64()),
        ("card_distinct_merchants_24h", pa.int64()),
    ]
)

MERCHANT_FEATURES_SCHEMA = pa.schema(
    [
        ("merchant_id", pa.int64()),
        ("event_timestamp", _TS),
        ("merchant_txn_count_7d", pa.int64()),
        ("merchant_amount_mean_7d", pa.float64()),
        ("merchant_fraud_rate_30d", pa.float64()),
        ("merchant_labeled_txn_30d", pa.int64()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "transactions": TRANSACTIONS_SCHEMA,
    "card_features": CARD_FEATURES_SCHEMA,
    "merchant_features": MERCHANT_FEATURES_SCHEMA,
}

MANIFEST = "_manifest.json"
_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


def _check_table(table: str) -> None:
    if table not in SCHEMAS:
        raise DriftlineError(f"unknown offline table {table!r}; known: {', '.join(SCHEMAS)}")


def partition_path(offline_dir: Path, table: str, day: date) -> Path:
    """Where one day of one table lives."""
    _check_table(table)
    return offline_dir / table / f"date={day.isoformat()}" / "part-0.parquet"


def table_glob(offline_dir: Path, table: str) -> str:
    """The glob Feast's DuckDB offline store reads for a table."""
    _check_table(table)
    return str(offline_dir / table / "date=*" / "*.parquet")


def list_days(offline_dir: Path, table: str = "transactions") -> list[date]:
    """Days present for a table, oldest first. A partition directory without data is an error."""
    _check_table(table)
    root = offline_dir / table
    if not root.is_dir():
        return []
    days = []
    for child in sorted(root.iterdir()):
        match = _PARTITION.match(child.name)
        if not match:
            continue
        if not (child / "part-0.parquet").is_file():
            raise DriftlineError(
                f"offline partition {child} has no part-0.parquet; "
                "restore it or remove the directory"
            )
        days.append(date.fromisoformat(match.group(1)))
    return days


def _compatible(actual: pa.DataType, wanted: pa.DataType) -> bool:
    """Same type, or timestamps that differ only in unit (reads cast them losslessly)."""
    if actual == wanted:
        return True
    return (
        pa.types.is_timestamp(actual) and pa.types.is_timestamp(wanted) and actual.tz == wanted.tz
    )


def new_columns(path: Path, table: str) -> list[str]:
    """Columns a partition has beyond its table's schema (schema evolution upstream)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DriftlineError(f"offline partition unreadable: {path} ({exc})") from exc
    return sorted(set(schema.names) - set(SCHEMAS[table].names))


def check_partition(path: Path, table: str, *, allow_new_columns: bool = False) -> pa.Schema:
    """Fail with the path when a partition is missing, unreadable, or has another schema.

    A missing or retyped column always fails; an added column fails unless
    ``allow_new_columns`` (the reader ignores it then)."""
    expected = SCHEMAS[table]
    if not path.is_file():
        raise DriftlineError(f"offline partition missing: {path}")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DriftlineError(f"offline partition unreadable: {path} ({exc})") from exc
    actual = {field.name: field.type for field in schema}
    wanted = {field.name: field.type for field in expected}
    missing = sorted(set(wanted) - set(actual))
    changed = sorted(
        f"{name}: {actual[name]} (expected {wanted[name]})"
        for name in wanted
        if name in actual and not _compatible(actual[name], wanted[name])
    )
    extra = sorted(set(actual) - set(wanted))
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if changed:
        problems.append(f"changed types {changed}")
    if extra and not allow_new_columns:
        problems.append(f"unexpected columns {extra}")
    if problems:
        raise DriftlineError(f"schema change in offline partition {path}: {'; '.join(problems)}")
    return schema


def check_table(
    offline_dir: Path,
    table: str,
    days: Iterable[date] | None = None,
    *,
    allow_new_columns: bool = False,
) -> list[Path]:
    """Check the partitions of ``days`` (default: all) and return their paths."""
    wanted = list_days(offline_dir, table) if days is None else list(days)
    paths = [partition_path(offline_dir, table, day) for day in wanted]
    for path in paths:
        check_partition(path, table, allow_new_columns=allow_new_columns)
    return paths


def read_table(
    offline_dir: Path,
    table: str,
    days: Iterable[date],
    *,
    allow_new_columns: bool = False,
    filters: list[tuple[str, str, Any]] | None = None,
) -> pa.Table:
    """Read some days of a table after checking each partition's schema; columns beyond the
    table's schema (when allowed) are not read. ``filters`` (pyarrow's) drop rows as each
    partition is read, so the unfiltered table is never held."""
    paths = check_table(offline_dir, table, days, allow_new_columns=allow_new_columns)
    if not paths:
        return SCHEMAS[table].empty_table()
    try:
        return pa.concat_tables(
            pq.read_table(
                path, columns=SCHEMAS[table].names, schema=SCHEMAS[table], filters=filters
            )
            for path in paths
        )
    except (OSError, pa.ArrowException) as exc:
        raise DriftlineError(
            f"offline table {table} unreadable under {offline_dir}: {exc}"
        ) from exc


def write_partition(offline_dir: Path, table: str, day: date, data: pa.Table) -> Path:
    """Write one day atomically (temp file, then rename). Refuses to overwrite a day."""
    path = partition_path(offline_dir, table, day)
    if path.exists():
        raise DriftlineError(f"offline partition already exists, raw data is immutable: {path}")
    data = data.select(SCHEMAS[table].names).cast(SCHEMAS[table])
    buffer = pa.BufferOutputStream()
    pq.write_table(data, buffer, compression="zstd")
    return write_atomic(path, buffer.getvalue().to_pybytes())


QUARANTINE = "_quarantine"


def quarantine_day(offline_dir: Path, day: date, reason: str) -> Path:
    """Move every table's partition of ``day`` out of the store, into ``_quarantine/<day>/``.

    What an operator does with a broken delivery: the data is kept for inspection, but no
    stage reads it any more, and the next `driftline generate` delivers the day again. A day
    quarantined before and delivered again goes to ``_quarantine/<day>.2/`` (and so on);
    quarantining a day that is already out of the store says where it is.
    """
    quarantine = offline_dir / QUARANTINE
    present = [t for t in SCHEMAS if partition_path(offline_dir, t, day).parent.is_dir()]
    earlier = sorted(quarantine.glob(f"{day.isoformat()}*")) if quarantine.is_dir() else []
    if not present:
        if earlier:
            why = (
                (earlier[-1] / "reason.txt").read_text().strip()
                if (earlier[-1] / "reason.txt").is_file()
                else "?"
            )
            raise DriftlineError(
                f"{day} is already quarantined in {earlier[-1]} (reason: {why}); nothing left "
                f"in {offline_dir} to move. `driftline generate` delivers the day again"
            )
        raise DriftlineError(f"no partition of {day} in {offline_dir} to quarantine")
    target = quarantine / day.isoformat()
    if target.exists():
        target = quarantine / f"{day.isoformat()}.{len(earlier) + 1}"
    for table in present:
        (target / table).parent.mkdir(parents=True, exist_ok=True)
        os.replace(partition_path(offline_dir, table, day).parent, target / table)
    write_atomic(target / "reason.txt", reason + "\n")
    manifest = read_manifest(offline_dir)
    if manifest is not None:
        manifest["days"].pop(day.isoformat(), None)
        manifest.setdefault("quarantined", {})[day.isoformat()] = reason
        write_manifest(offline_dir, manifest)
    return target


def read_manifest(offline_dir: Path) -> dict[str, Any] | None:
    path = offline_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DriftlineError(f"offline manifest unreadable: {path} ({exc})") from exc


def write_manifest(offline_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(offline_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

"""The offline store names the path of every bad partition."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftline import offline
from driftline.errors import DriftlineError


def test_missing_partition_file_is_named(offline_copy: Path) -> None:
    path = offline.partition_path(offline_copy, "card_features", date(2026, 1, 5))
    path.unlink()
    with pytest.raises(DriftlineError, match=rf"{path.parent}.* has no part-0.parquet"):
        offline.list_days(offline_copy, "card_features")


def test_unreadable_partition_is_named(offline_copy: Path) -> None:
    path = offline.partition_path(offline_copy, "transactions", date(2026, 1, 7))
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DriftlineError, match=rf"offline partition unreadable: {path}"):
        offline.check_table(offline_copy, "transactions")


def test_schema_change_is_named_with_the_columns(offline_copy: Path) -> None:
    path = offline.partition_path(offline_copy, "transactions", date(2026, 1, 9))
    table = pq.read_table(path)
    table = table.set_column(
        table.schema.get_field_index("amount"), "amount", table["amount"].cast(pa.string())
    )
    table = table.drop_columns(["channel"])
    pq.write_table(table, path)
    with pytest.raises(DriftlineError) as error:
        offline.read_table(offline_copy, "transactions", [date(2026, 1, 9)])
    message = str(error.value)
    assert f"schema change in offline partition {path}" in message
    assert "missing columns ['channel']" in message
    assert "amount: string (expected double)" in message


def test_raw_data_is_immutable(offline_copy: Path) -> None:
    day = date(2026, 1, 3)
    data = pq.read_table(offline.partition_path(offline_copy, "transactions", day))
    with pytest.raises(DriftlineError, match="raw data is immutable"):
        offline.write_partition(offline_copy, "transactions", day, data)

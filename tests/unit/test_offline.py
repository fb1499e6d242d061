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


def test_quarantining_a_day_twice_says_where_it_is(tmp_path: Path) -> None:
    from driftline.datagen import generate
    from driftline.offline import QUARANTINE, list_days, quarantine_day

    offline_dir = tmp_path / "offline"
    generate(offline_dir=offline_dir, days=3, start="2026-01-01", n_cards=50, n_merchants=20)
    day = list_days(offline_dir)[-1]
    first = quarantine_day(offline_dir, day, "broken delivery")
    assert first == offline_dir / QUARANTINE / day.isoformat()
    with pytest.raises(DriftlineError) as error:
        quarantine_day(offline_dir, day, "again")
    assert f"{day} is already quarantined in {first} (reason: broken delivery)" in str(error.value)
    assert "`driftline generate` delivers the day again" in str(error.value)

    # delivered again, broken again: the second copy is kept beside the first
    generate(offline_dir=offline_dir, days=1, n_cards=50, n_merchants=20)
    second = quarantine_day(offline_dir, day, "broken twice")
    assert second == offline_dir / QUARANTINE / f"{day.isoformat()}.2"
    assert (first / "reason.txt").read_text() == "broken delivery\n"
    assert (second / "reason.txt").read_text() == "broken twice\n"
    assert list_days(offline_dir)[-1] < day


def test_an_interrupted_generate_is_cleared_and_the_day_generated_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from driftline.datagen import generate
    from driftline.offline import list_days, partition_path

    whole = tmp_path / "whole"
    generate(offline_dir=whole, days=3, start="2026-01-01", n_cards=50, n_merchants=20)
    offline_dir = tmp_path / "offline"
    generate(offline_dir=offline_dir, days=2, start="2026-01-01", n_cards=50, n_merchants=20)
    # the third day was interrupted: its card features landed, the merchant features were
    # being written (only a temporary file), the transactions never came
    day = list_days(whole)[-1]
    card = partition_path(offline_dir, "card_features", day)
    card.parent.mkdir(parents=True)
    card.write_bytes(partition_path(whole, "card_features", day).read_bytes())
    merchant = partition_path(offline_dir, "merchant_features", day).parent
    merchant.mkdir(parents=True)
    (merchant / ".part-0.parquet.abc123.tmp").write_bytes(b"PAR1 torn")

    result = generate(offline_dir=offline_dir, days=1, n_cards=50, n_merchants=20)
    assert result.days == [day]
    assert "left by an interrupted" in caplog.text
    for table in ("transactions", "card_features", "merchant_features"):
        assert (
            partition_path(offline_dir, table, day).read_bytes()
            == partition_path(whole, table, day).read_bytes()
        ), table

"""The monitoring store's 0004 migration on a store that already holds events (SQLite)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from driftline import monitoring


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(monitoring.MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_an_older_store_keeps_its_events_and_takes_minimal_inserts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    command.upgrade(_config(url), "0003")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO drift_events (created_at, model, source, payload, status, "
                "status_reason, updated_at) VALUES ('2026-11-20 10:00:00', 'm', 'old', '{}', "
                "'consumed', '', '2026-11-20 10:00:00')"
            )
        )
    monitoring.migrate(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO drift_events (model, source, payload) VALUES ('m', 'new', '{}')")
        )
    old, new = monitoring.drift_event(1, url=url), monitoring.drift_event(2, url=url)
    assert (old["source"], old["status"]) == ("old", "consumed")
    assert (new["source"], new["status"], new["status_reason"]) == ("new", "new", "")
    assert new["created_at"] is not None and new["updated_at"] is not None

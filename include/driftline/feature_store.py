"""The Feast store of driftline: open it, register the repo, materialize a window.

The store is configured by ``feature_repo/feature_store.yaml`` (or the file named by
``FEAST_FS_YAML_FILE_PATH``), whose ``${VARS}`` are filled from :mod:`driftline.settings`.
Registry sync (``feast apply``) is an explicit step, never part of materialization, and
keeps every feature view's materialization intervals.

The registry is Feast's SQL registry in both profiles (SQLite file embedded, PostgreSQL in
production): one row per object, each write its own transaction, so concurrent writers never
read a torn registry. Feast records a materialization interval by reading the view's row and
writing it back; two materializations of the same view at once could lose one interval, and
the online store (which overwrites without comparing timestamps) could end on the older
window. :func:`materialize_window` therefore holds a per-view lock across processes while it
reads the view's newest end, loads the rows and records the interval.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline import offline
from driftline.errors import DriftlineError
from driftline.files import write_atomic
from driftline.settings import Settings, get_settings

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = timedelta(hours=1)


def import_feast() -> Any:
    """Import Feast without its runtime type checks; returns the ``feast`` module.

    Feast decorates its classes with typeguard's ``@typechecked``, which recompiles them
    on every import: 12 s of a 2-core machine per process, paid by every Airflow task
    (agronholm/typeguard#468). Under ``python -O`` the decorator is a no-op by design; we
    make it one for the duration of Feast's import only, which brings the import to ~5 s.
    """
    if "feast" in sys.modules:
        return sys.modules["feast"]
    import typeguard

    original = typeguard.typechecked

    def unchecked(target: Any = None, **_: Any) -> Any:
        return (lambda inner: inner) if target is None else target

    typeguard.typechecked = unchecked
    try:
        import feast
    finally:
        typeguard.typechecked = original
    return feast


def feast_main() -> None:
    """Entry point of the Feast CLI with :func:`import_feast`'s faster import."""
    import_feast()
    from feast.cli.cli import cli

    cli()


def _export_feast_env(settings: Settings) -> None:
    # Feast expands ${VARS} of feature_store.yaml from the process environment.
    os.environ.update(settings.feast_env())


def get_store(
    settings: Settings | None = None, *, offline_store: str | None = None
) -> FeatureStore:
    """Open the feature store the settings point at.

    ``offline_store`` opens the same repo, registry and online store with another offline
    store ``type`` (e.g. ``duckdb``, Feast's own, beside driftline's plugin): the benchmark
    and the plugin's equivalence tests compare the two on the same data.
    """
    feast = import_feast()

    settings = settings or get_settings()
    if not settings.feast_yaml.is_file():
        raise DriftlineError(
            f"Feast config not found: {settings.feast_yaml} (FEAST_FS_YAML_FILE_PATH)"
        )
    _export_feast_env(settings)
    settings.feast_registry.parent.mkdir(parents=True, exist_ok=True)
    fs_yaml = settings.feast_yaml
    if offline_store is not None:
        import yaml

        config = yaml.safe_load(fs_yaml.read_text())
        config["offline_store"] = {"type": offline_store}
        # beside the registry, in the state directory: the repo's files are never edited
        slug = offline_store.rsplit(".", 1)[-1]
        fs_yaml = settings.feast_registry.parent / f"feature_store.{slug}.yaml"
        write_atomic(fs_yaml, yaml.safe_dump(config, sort_keys=False))
    return feast.FeatureStore(repo_path=str(settings.feast_repo), fs_yaml_file=fs_yaml)


def feast_command(args: list[str], settings: Settings | None = None) -> int:
    """Run the ``feast`` CLI on driftline's repo with driftline's settings; returns its code.

    ``apply`` runs holding every registered view's materialization lock: Feast's apply reads
    a view's row (with its materialization intervals) and writes it back later in the same
    transaction, which neither SQLite through pysqlite nor PostgreSQL under READ COMMITTED
    serializes against an interval recorded in between; that interval would be lost.
    """
    settings = settings or get_settings()
    settings.feast_registry.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.airflow_env()}
    entry = "from driftline.feature_store import feast_main; feast_main()"
    command = [sys.executable, "-c", entry, "--chdir", str(settings.feast_repo)]
    command += ["--feature-store-yaml", str(settings.feast_yaml), *args]
    if "apply" not in args:
        return subprocess.run(command, env=env, check=False).returncode
    store = get_store(settings)
    registered = store.registry.list_feature_views(store.project, allow_cache=False)
    with _views_locked(store, [view.name for view in registered]):
        return subprocess.run(command, env=env, check=False).returncode


def apply_repo(settings: Settings | None = None) -> None:
    """Register the feature repo's definitions (``feast apply``).

    Runs the Feast CLI in a child process: Feast imports the repo's modules by name, and a
    fresh interpreter guarantees they are read with the current settings.
    """
    code = feast_command(["apply"], settings)
    if code != 0:
        raise DriftlineError(f"feast apply failed with exit code {code}; see its output above")


@dataclass(frozen=True)
class MaterializedView:
    """What materialization did for one feature view."""

    feature_view: str
    start: str
    end: str
    rows: int
    entities: int
    note: str = ""

    def describe(self) -> str:
        text = (
            f"{self.feature_view}: {self.rows} rows for {self.entities} entities "
            f"in [{self.start}, {self.end}]"
        )
        return f"{text} ({self.note})" if self.note else text

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def offline_table(view: FeatureView) -> str:
    """The offline table a feature view reads (``<offline>/<table>/date=*/*.parquet``)."""
    return Path(view.batch_source.path).parent.parent.name


def _check_window_partitions(
    offline_dir: Path, table: str, start: datetime, end: datetime
) -> list[Path]:
    """Every day of the window between the store's first and newest day must be readable."""
    present = offline.list_days(offline_dir, table)
    if not present:
        return []
    first, last = present[0], present[-1]
    wanted: list[date] = []
    day = start.date()
    while day <= end.date():
        if first <= day <= last:
            wanted.append(day)
        day += timedelta(days=1)
    # A column added upstream is each model's call (``validation.on_new_columns``, judged
    # when its training set is built); materialization reads the declared columns only.
    return offline.check_table(offline_dir, table, wanted, allow_new_columns=True)


def _count_rows(
    paths: list[Path], join_key: str, start: datetime, end: datetime
) -> tuple[int, int]:
    import duckdb

    if not paths:
        return 0, 0
    with duckdb.connect() as con:
        rows, entities = con.execute(
            f"SELECT count(*), count(DISTINCT {join_key}) "
            "FROM read_parquet($paths, union_by_name = true) "
            "WHERE event_timestamp >= $start AND event_timestamp <= $end",
            {"paths": [str(p) for p in paths], "start": start, "end": end},
        ).fetchone()
    return int(rows), int(entities)


@contextlib.contextmanager
def _view_lock(store: FeatureStore, view: str) -> Iterator[None]:
    """One materialization of ``view`` at a time, across processes and machines.

    SQLite registry: an exclusive ``flock`` on a file beside it. PostgreSQL registry: a
    session advisory lock on the registry's database (held on its own connection; Feast's
    writes are not blocked by it, only other materializations of the same view).
    """
    url = str(store.config.registry.path)
    if url.startswith("sqlite:///"):
        lock_path = Path(f"{url.removeprefix('sqlite:///')}.{store.project}.{view}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if url.startswith("postgresql"):
        from sqlalchemy import text

        digest = hashlib.sha256(f"driftline-materialize/{store.project}/{view}".encode())
        key = int.from_bytes(digest.digest()[:8], "big", signed=True)
        with store.registry.write_engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    yield


@contextlib.contextmanager
def _views_locked(store: FeatureStore, views: list[str]) -> Iterator[None]:
    """Every named view's lock, taken in name order (as materializations take them)."""
    with contextlib.ExitStack() as held:
        for view in sorted(set(views)):
            held.enter_context(_view_lock(store, view))
        yield


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def materialize_window(
    start: datetime,
    end: datetime,
    *,
    overlap: timedelta = DEFAULT_OVERLAP,
    feature_views: list[str] | None = None,
    settings: Settings | None = None,
) -> list[MaterializedView]:
    """Load ``[start - overlap, end]`` of every feature view into the online store.

    Idempotent: the online store keeps one latest value per entity, so re-running a window
    writes the same values again. A window older than what a view already holds is
    extended to that view's newest materialized end, so a re-run never moves the online
    store back in time (the SQLite online store overwrites without comparing timestamps).
    """
    settings = settings or get_settings()
    start, end = _aware(start), _aware(end)
    if end <= start:
        raise DriftlineError(f"materialization window is empty or reversed: {start} .. {end}")
    store = get_store(settings)
    views = store.list_feature_views()
    if not views:
        raise DriftlineError(
            f"the Feast registry of project {store.project!r} has no feature views; "
            "run `driftline feast apply` (make apply) first"
        )
    if feature_views is not None:
        unknown = sorted(set(feature_views) - {view.name for view in views})
        if unknown:
            raise DriftlineError(
                f"feature views {unknown} are not in the Feast registry of project "
                f"{store.project!r}; run `driftline feast apply` after changing feature_repo/"
            )
        views = [view for view in views if view.name in feature_views]
    results = []
    for view in sorted(views, key=lambda v: v.name):
        with _view_lock(store, view.name):
            # Re-read inside the lock: another materialization may have ended meanwhile.
            view = store.registry.get_feature_view(view.name, store.project, allow_cache=False)
            window_start, window_end, note = start - overlap, end, ""
            newest = view.most_recent_end_time
            if newest is not None and _aware(newest) > window_end:
                window_end = _aware(newest)
                note = f"extended to the newest materialized end {window_end.isoformat()}"
            paths = _check_window_partitions(
                settings.offline_dir, offline_table(view), window_start, window_end
            )
            join_key = view.entity_columns[0].name
            rows, entities = _count_rows(paths, join_key, window_start, window_end)
            store.materialize(window_start, window_end, feature_views=[view.name])
        result = MaterializedView(
            feature_view=view.name,
            start=window_start.isoformat(),
            end=window_end.isoformat(),
            rows=rows,
            entities=entities,
            note=note or ("0 rows in this window, nothing to load" if rows == 0 else ""),
        )
        log.info("materialized %s", result.describe())
        results.append(result)
    return results


def materialization_intervals(settings: Settings | None = None) -> dict[str, list[tuple[str, str]]]:
    """Each feature view's materialized intervals, as recorded in the registry."""
    store = get_store(settings)
    return {
        view.name: [(s.isoformat(), e.isoformat()) for s, e in view.materialization_intervals]
        for view in store.list_feature_views()
    }

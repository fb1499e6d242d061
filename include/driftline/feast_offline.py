"""A Feast offline store whose point-in-time join is one DuckDB ``ASOF JOIN`` per feature view.

Configured in ``feature_store.yaml`` as::

    offline_store:
      type: driftline.feast_offline.DuckDBAsofOfflineStore

Feast finds the config class by name (``<Class>Config`` in the same module) and the store
class from the config class (its name without ``Config``), so both live here.

Feast's own DuckDB store answers ``get_historical_features`` with an ibis plan: a string row
id per entity row, an inner join of every feature row with every entity row of the same key,
and a window over the result (feast-dev/feast#3003). Its memory grows with entity rows x
feature rows per key. This store answers the same question with DuckDB's ``ASOF JOIN``, whose
cost is a sort of each side.

Invariants (checked against Feast's DuckDB store by tests/integration/test_feast_offline_plugin.py,
row for row, on the project's world and on randomized ones):

* For each entity row and feature view, the features come from the source row with the same
  join keys (after the projection's join-key map) whose timestamp is the latest one not after
  the entity row's timestamp; among rows with that timestamp, the latest created timestamp
  wins (Feast's tie-break). Rows with a null key or timestamp never match.
* TTL: when the view has a TTL, that row counts only if ``timestamp >= entity timestamp - ttl``
  (a row exactly at the edge counts); otherwise the view's features are null. A TTL of zero or
  none means no limit, as in Feast.
* Columns: the entity frame's columns in their order, then each view's requested features in
  request order, named ``<view>__<feature>`` with ``full_feature_names``; the source's
  ``field_mapping`` renames columns first. Types are what Feast's store returns (categoricals
  become strings, integer features with nulls become float64 in pandas).
* Row order is not defined (as in Feast); the rows are one per entity row.
* The result is built once: DuckDB streams record batches into one Arrow table (``to_arrow``),
  ``to_df`` converts it to pandas releasing the Arrow buffers as it goes, and ``to_parquet``
  / ``persist`` stream the batches to a file without holding the result.
* Memory is bounded by ``CHUNK_ROWS``, not by the entity frame: a larger frame is joined in
  pieces of that many rows, in timestamp order, each reading only the feature rows its own
  time range can pick. An entity row's features depend on its own keys and timestamp alone,
  so the pieces' results together are the whole frame's.

Whatever this store cannot answer the same way is delegated, unchanged, to Feast's
:class:`~feast.infra.offline_stores.duckdb.DuckDBOfflineStore`, which it extends: an entity
SQL string, ``filter_by_created_timestamp`` (a per-entity-row cutoff an ASOF join cannot
express), sources other than local parquet ``FileSource`` s, substrait on-demand views. Every
other method (materialization's ``pull_latest_from_table_or_query``,
``pull_all_from_table_or_query``, ``offline_write_batch``, ``write_logged_features``,
monitoring) is Feast's, inherited as is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast.data_format import ParquetFormat
from feast.errors import SavedDatasetLocationAlreadyExists
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import _get_entity_df_event_timestamp_range, _to_utc
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pydantic import StrictStr

log = logging.getLogger(__name__)

_ENTITY = "__driftline_entity"
_BATCH_ROWS = 256 * 1024
# Entity rows per ASOF join. DuckDB holds both sorted sides of a join (about 0.8 GB per
# million entity rows on the project's features, measured at 1M); in pieces of this size a
# 10M-row frame needs what a 2M-row one does, for one more scan of the sources per piece.
CHUNK_ROWS = 2_000_000


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class DuckDBAsofOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Feast's DuckDB store settings; ``type`` names this store."""

    type: StrictStr = "driftline.feast_offline.DuckDBAsofOfflineStore"


@dataclass(frozen=True)
class _ViewJoin:
    """One feature view's part of the join: where to read, what to match, what to return."""

    source_sql: str  # a read_parquet(...) call
    renames: dict[str, str]  # source column -> column name Feast uses (field_mapping)
    keys: dict[str, str]  # feature-table join key -> entity column
    timestamp: str
    created: str | None
    ttl: timedelta | None
    features: dict[str, str]  # feature name -> output column name


def _local_parquet(view: FeatureView) -> bool:
    source = view.batch_source
    if not isinstance(source, FileSource) or "://" in source.path:
        return False
    return isinstance(source.file_format, ParquetFormat) or (
        source.file_format is None and source.path.endswith(".parquet")
    )


def _view_join(view: FeatureView, feature_refs: list[str], full_feature_names: bool) -> _ViewJoin:
    """The same reading of a view as Feast's ibis ``read_fv`` (renames, prefixes, keys)."""
    source = view.batch_source
    prefix = f"{view.projection.name_to_use()}:"
    names = [ref.split(":")[1] for ref in feature_refs if ref.startswith(prefix)]
    base = view.projection.name_alias or view.name
    return _ViewJoin(
        source_sql=f"read_parquet({_literal(source.path)})",
        renames=dict(source.field_mapping),
        keys=view.projection.join_key_map or {e.name: e.name for e in view.entity_columns},
        timestamp=source.timestamp_field,
        created=source.created_timestamp_column or None,
        ttl=view.ttl or None,
        features={n: (f"{base}__{n}" if full_feature_names else n) for n in names},
    )


def _feature_subquery(
    con: duckdb.DuckDBPyConnection,
    join: _ViewJoin,
    index: int,
    bounds: tuple[pd.Timestamp, pd.Timestamp] | None,
) -> str:
    """The view's rows, one per (keys, timestamp): the latest created wins, as in Feast."""
    columns = [
        row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {join.source_sql}").fetchall()
    ]
    renamed = {join.renames.get(c, c): c for c in columns}  # name Feast uses -> source column
    wanted = [join.timestamp, *join.keys, *join.features]
    if join.created:
        wanted.append(join.created)
    missing = sorted({w for w in wanted if w not in renamed})
    if missing:
        raise ValueError(
            f"columns {missing} of feature view source {join.source_sql} are missing "
            f"(it has {columns}; field_mapping {join.renames})"
        )

    def col(name: str) -> str:
        return _ident(renamed[name])

    select = [f"CAST({col(join.timestamp)} AS TIMESTAMPTZ) AS __ts"]
    select += [f"{col(k)} AS __k{i}" for i, k in enumerate(join.keys)]
    select += [f"{col(f)} AS {_ident(out)}" for f, out in join.features.items()]
    where = [f"{col(join.timestamp)} IS NOT NULL"]
    where += [f"{col(k)} IS NOT NULL" for k in join.keys]
    if bounds is not None:
        # rows after the newest entity row are never picked; rows older than the oldest entity
        # row minus the TTL would be picked only to be nulled by it
        where.append(
            f"CAST({col(join.timestamp)} AS TIMESTAMPTZ) <= {_literal(bounds[1].isoformat())}"
        )
        if join.ttl:
            oldest = bounds[0] - join.ttl
            where.append(
                f"CAST({col(join.timestamp)} AS TIMESTAMPTZ) >= {_literal(oldest.isoformat())}"
            )
    sql = f"SELECT {', '.join(select)} FROM {join.source_sql} WHERE {' AND '.join(where)}"
    if join.created:
        partition = ", ".join([col(join.timestamp), *(col(k) for k in join.keys)])
        sql += (
            f" QUALIFY row_number() OVER (PARTITION BY {partition} "
            f"ORDER BY CAST({col(join.created)} AS TIMESTAMPTZ) DESC NULLS LAST) = 1"
        )
    return f"(\n  {sql}\n) AS __fv{index}"


def _query(
    con: duckdb.DuckDBPyConnection,
    joins: list[_ViewJoin],
    entity_columns: list[str],
    timestamp_column: str,
    bounds: tuple[pd.Timestamp, pd.Timestamp] | None,
) -> str:
    """``SELECT entity.*, features FROM entity ASOF LEFT JOIN view_0 ... ASOF LEFT JOIN view_n``."""
    entity_ts = f"e.{_ident(timestamp_column)}"
    select = [f"e.{_ident(c)}" for c in entity_columns]
    sources = [f"{_ENTITY} AS e"]
    for i, join in enumerate(joins):
        if not join.features:  # a view asked for nothing (e.g. only an on-demand view's input)
            continue
        alias = f"__fv{i}"
        on = [f"e.{_ident(column)} = {alias}.__k{k}" for k, column in enumerate(join.keys.values())]
        on.append(f"{entity_ts} >= {alias}.__ts")
        sources.append(
            f"ASOF LEFT JOIN {_feature_subquery(con, join, i, bounds)} ON {' AND '.join(on)}"
        )
        fresh = (
            f"{alias}.__ts >= {entity_ts} - INTERVAL ({_micros(join.ttl)}) MICROSECONDS"
            if join.ttl
            else None
        )
        for out in join.features.values():
            value = f"{alias}.{_ident(out)}"
            select.append(
                f"CASE WHEN {fresh} THEN {value} END AS {_ident(out)}"
                if fresh
                else f"{value} AS {_ident(out)}"
            )
    return f"SELECT {', '.join(select)}\nFROM " + "\n".join(sources)


def _feast_field(field: pa.Field) -> pa.Field:
    """The type Feast's store returns for a column DuckDB typed as ``field``: it reads
    categoricals as strings, and names UTC ``UTC`` where DuckDB says ``Etc/UTC``."""
    if pa.types.is_dictionary(field.type):
        return pa.field(field.name, field.type.value_type)
    if pa.types.is_timestamp(field.type) and field.type.tz == "Etc/UTC":
        return pa.field(field.name, pa.timestamp(field.type.unit, "UTC"))
    return field


class AsofRetrievalJob(RetrievalJob):
    """The ASOF query, run when a result is asked for; each run opens its own connection."""

    def __init__(
        self,
        *,
        entity_df: pd.DataFrame,
        joins: list[_ViewJoin],
        timestamp_column: str,
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata | None,
    ) -> None:
        super().__init__()
        self._entity_df = entity_df
        self._joins = joins
        self._timestamp_column = timestamp_column
        self._on_demand_feature_views = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def _pieces(self) -> Iterator[pd.DataFrame]:
        """The entity frame whole, or in CHUNK_ROWS pieces by timestamp (rows without one
        last, as NumPy sorts NaT)."""
        frame = self._entity_df
        if len(frame) <= CHUNK_ROWS:
            yield frame
            return
        stamps = frame[self._timestamp_column].to_numpy(dtype="datetime64[ns]")
        order = np.argsort(stamps, kind="stable")
        del stamps
        for start in range(0, len(order), CHUNK_ROWS):
            yield frame.take(np.sort(order[start : start + CHUNK_ROWS]))

    def _bounds(self, frame: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        stamps = frame[self._timestamp_column]
        first, last = stamps.min(), stamps.max()
        if pd.isna(first) or pd.isna(last):
            return None
        # whole microseconds, DuckDB's timestamp precision, widening the range
        return pd.Timestamp(first).floor("us"), pd.Timestamp(last).ceil("us")

    def _reader(
        self, frame: pd.DataFrame
    ) -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader, pa.Schema]:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        # the rows' order is not defined (as in Feast): DuckDB need not buffer to keep one
        con.execute("SET preserve_insertion_order = false")
        con.register(_ENTITY, frame)
        sql = _query(
            con, self._joins, list(frame.columns), self._timestamp_column, self._bounds(frame)
        )
        log.debug("point-in-time join:\n%s", sql)
        # the relation API streams; an execute() result would copy the rows once more
        reader = con.sql(sql).to_arrow_reader(_BATCH_ROWS)
        return con, reader, pa.schema([_feast_field(f) for f in reader.schema])

    def _batches(self) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        pieces = self._pieces()
        first = next(pieces)
        con, reader, schema = self._reader(first)

        def cast() -> Iterator[pa.RecordBatch]:
            nonlocal con, reader
            try:
                while True:
                    for batch in reader:
                        yield batch.cast(schema)
                    con.close()
                    piece = next(pieces, None)
                    if piece is None:
                        return
                    con, reader, _ = self._reader(piece)
            finally:
                con.close()

        return schema, cast()

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        schema, batches = self._batches()
        return pa.Table.from_batches(batches, schema=schema)

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def to_df(self, validation_reference: Any = None, timeout: int | None = None) -> pd.DataFrame:
        """Feast's ``to_df`` (on-demand views, validation), converting without a second copy."""
        table = self.to_arrow(validation_reference=validation_reference, timeout=timeout)
        # the table is ours alone: release each column's Arrow buffers once it is converted
        return table.to_pandas(split_blocks=True, self_destruct=True).reset_index(drop=True)

    def to_parquet(self, path: str | Path) -> Path:
        """Stream the result into one parquet file, a record batch at a time."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        schema, batches = self._batches()
        with pq.ParquetWriter(path, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        return path

    def persist(
        self,
        storage: SavedDatasetStorage,
        allow_overwrite: bool = False,
        timeout: int | None = None,
    ) -> None:
        source = storage.to_data_source()
        if not isinstance(source, FileSource) or "://" in source.path:
            raise ValueError(
                f"{type(self).__name__}.persist writes local parquet files only, "
                f"not {type(source).__name__} {getattr(source, 'path', '')!r}"
            )
        if os.path.exists(source.path) and not allow_overwrite:
            raise SavedDatasetLocationAlreadyExists(location=source.path)
        self.to_parquet(source.path)


class DuckDBAsofOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store with an ASOF-join ``get_historical_features``."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        delegate = (
            not isinstance(entity_df, pd.DataFrame)
            or filter_by_created_timestamp
            or not all(_local_parquet(view) for view in feature_views)
            or any(odfv.mode == "substrait" for odfv in odfvs)
        )
        if delegate:
            return DuckDBOfflineStore.get_historical_features(
                config=config,
                feature_views=feature_views,
                feature_refs=feature_refs,
                entity_df=entity_df,
                registry=registry,
                project=project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp,
            )
        entity_schema = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        timestamp_column = offline_utils.infer_event_timestamp_from_entity_df(entity_schema)
        first, last = _get_entity_df_event_timestamp_range(entity_df, timestamp_column)
        # Feast's store converts a string/object timestamp column to UTC in the caller's
        # frame; a shallow copy keeps the caller's frame as it was
        entity_df = _to_utc(entity_df.copy(deep=False), timestamp_column)
        for view in feature_views:
            for key, column in (
                view.projection.join_key_map or {e.name: e.name for e in view.entity_columns}
            ).items():
                if column not in entity_df.columns:
                    raise ValueError(
                        f"entity frame has no column {column!r}, the join key {key!r} of "
                        f"feature view {view.name!r}; it has {list(entity_df.columns)}"
                    )
        return AsofRetrievalJob(
            entity_df=entity_df,
            joins=[_view_join(view, feature_refs, full_feature_names) for view in feature_views],
            timestamp_column=timestamp_column,
            on_demand_feature_views=[odfv for odfv in odfvs if odfv.mode != "substrait"],
            full_feature_names=full_feature_names,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=list(set(entity_df.columns) - {timestamp_column}),
                min_event_timestamp=first,
                max_event_timestamp=last,
            ),
        )

"""driftline's ASOF offline store answers get_historical_features exactly as Feast's DuckDB store.

Both stores read the same registry and the same parquet files through Feast's API; their frames
are compared row for row (same columns, dtypes and values after sorting by a row number the
entity frame carries). Once on the project's world (the repo's feature service, entity rows at
the TTL edges and without history), then on seeded random worlds that have what the project's
data rarely has: duplicate timestamps, late-arriving rows (created after the event), rows
exactly at and just past the TTL, entities without history, null feature values, a composite
key, a field mapping, a join-key map and a renamed view in a feature service.

Feast breaks a tie of equal event *and* created timestamps arbitrarily, so the random worlds
give such ties identical values (a copy of the row) or distinct created timestamps.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from driftline.feature_store import get_store
from tests.conftest import applied_feast_home

PLUGIN = "driftline.feast_offline.DuckDBAsofOfflineStore"
SEEDS = range(24)
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _assert_same(feast: pd.DataFrame, plugin: pd.DataFrame, what: str) -> None:
    assert list(plugin.columns) == list(feast.columns), what
    feast = feast.sort_values("row", ignore_index=True)
    plugin = plugin.sort_values("row", ignore_index=True)
    pd.testing.assert_frame_equal(plugin, feast, check_exact=True, obj=what)


def _both(stores: dict[str, object], **request: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames = {
        name: store.get_historical_features(**request).to_df() for name, store in stores.items()
    }
    return frames["duckdb"], frames[PLUGIN]


# --- the project's world -------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_stores(
    tmp_path_factory: pytest.TempPathFactory, baseline_offline: Path
) -> Iterator[dict[str, object]]:
    """The repo's feature_store.yaml (the plugin) and the same repo on Feast's DuckDB store."""
    with applied_feast_home(tmp_path_factory, baseline_offline, "feast-plugin"):
        default = get_store()
        assert type(default.config.offline_store).__name__ == "DuckDBAsofOfflineStoreConfig"
        yield {"duckdb": get_store(offline_store="duckdb"), PLUGIN: default}


def _last_rows(table: pd.DataFrame, key: str, n: int) -> pd.DataFrame:
    """The newest row of ``n`` keys: nothing newer can stand in for it at its TTL edge."""
    newest = table.sort_values("event_timestamp").groupby(key).tail(1)
    return newest.sample(n=min(n, len(newest)), random_state=3)


def _project_entities(offline_dir: Path) -> pd.DataFrame:
    """Every transaction, plus rows on the edges the join must get right (column ``edge``)."""
    tx = pd.read_parquet(offline_dir / "transactions").drop(columns=["date"])
    tx["edge"] = ""
    template = tx.head(40).reset_index(drop=True)
    extra = []
    for table, key, ttl in (
        ("card_features", "card_id", 7),
        ("merchant_features", "merchant_id", 2),
    ):
        newest = _last_rows(pd.read_parquet(offline_dir / table), key, len(template))
        for edge, shift in (
            ("at", timedelta(0)),
            ("ttl", timedelta(days=ttl)),
            ("past", timedelta(days=ttl, microseconds=1)),
        ):
            rows = template.head(len(newest)).copy()
            rows[key] = newest[key].to_numpy()
            rows["event_timestamp"] = (newest["event_timestamp"] + shift).to_numpy()
            extra.append(rows.assign(edge=f"{key}:{edge}"))
    extra.append(template.assign(card_id=10**6, merchant_id=10**6, edge="no history"))
    extra.append(template.assign(event_timestamp=tx["event_timestamp"].min() - timedelta(days=30)))
    extra.append(tx.head(200))  # duplicate entity rows
    frame = pd.concat([tx, *extra], ignore_index=True)
    frame["channel"] = frame["channel"].astype("category")
    return frame.assign(row=np.arange(len(frame)))


@pytest.mark.parametrize(
    ("features", "full_feature_names"),
    [("service", False), ("service", True), ("refs", False)],
)
def test_project_world_equals_feast(
    project_stores: dict[str, object], features: str, full_feature_names: bool
) -> None:
    from driftline.settings import get_settings

    entities = _project_entities(get_settings().offline_dir)
    plugin_store = project_stores[PLUGIN]
    wanted = (
        plugin_store.get_feature_service("fraud_detection_v1")
        if features == "service"
        else ["merchant_features:merchant_fraud_rate_30d", "card_features:card_txn_count_24h"]
    )
    feast, plugin = _both(
        project_stores,
        entity_df=entities,
        features=wanted,
        full_feature_names=full_feature_names,
    )
    _assert_same(feast, plugin, f"project world, {features}, full names {full_feature_names}")

    # and the edges are really there: a row exactly TTL old counts, a microsecond older not
    prefix = ("card_features__", "merchant_features__") if full_feature_names else ("", "")
    card, merchant = f"{prefix[0]}card_txn_count_24h", f"{prefix[1]}merchant_fraud_rate_30d"
    by_edge = plugin.groupby("edge")
    assert by_edge[card].apply(lambda c: c.notna().all())["card_id:ttl"]
    assert by_edge[card].apply(lambda c: c.isna().all())["card_id:past"]
    assert by_edge[card].apply(lambda c: c.isna().all())["no history"]
    assert by_edge[merchant].apply(lambda c: c.isna().all())["merchant_id:past"]
    assert plugin[card].notna().mean() > 0.9


# --- random worlds -------------------------------------------------------------------------


def _write_partitions(root: Path, table: str, frame: pd.DataFrame, timestamp: str) -> str:
    """One parquet file per UTC day, like the offline store; returns the source glob."""
    for day, rows in frame.groupby(frame[timestamp].dt.strftime("%Y-%m-%d")):
        path = root / table / f"date={day}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
    return str(root / table / "date=*" / "*.parquet")


def _random_rows(
    rng: np.random.Generator, keys: dict[str, int], n: int, prefix: str, *, created: bool
) -> pd.DataFrame:
    """Feature rows on a 15-minute grid (timestamps repeat); with ``created``, late-arriving
    rows and duplicate timestamps told apart by their created time, else exact copies."""
    frame = pd.DataFrame({k: rng.integers(0, size, n) for k, size in keys.items()})
    frame["ts"] = T0 + pd.to_timedelta(rng.integers(0, 3 * 96, n) * 15, unit="min")
    frame = frame.drop_duplicates([*keys, "ts"], ignore_index=True)
    if created:
        late = pd.to_timedelta(rng.choice([0, 5, 120, 1440], len(frame)), unit="min")
        frame["created"] = frame["ts"] + late
        again = frame.sample(frac=0.2, random_state=rng.integers(1 << 31)).copy()
        again["created"] += pd.to_timedelta(rng.integers(1, 600, len(again)), unit="s")
        frame = pd.concat([frame, again], ignore_index=True)
    m = len(frame)
    frame[f"{prefix}_i"] = pd.array(rng.integers(0, 1000, m), dtype="Int64")
    frame.loc[rng.random(m) < 0.1, f"{prefix}_i"] = pd.NA
    frame[f"{prefix}_f"] = rng.normal(size=m)  # never null: tells a hit from a miss
    frame[f"{prefix}_s"] = np.where(rng.random(m) < 0.1, None, rng.choice(["p", "q", "r"], m))
    if not created:
        frame = pd.concat([frame, frame.sample(frac=0.1, random_state=1)], ignore_index=True)
    return frame.sample(frac=1, random_state=2, ignore_index=True)


def _world(seed: int, root: Path) -> tuple[dict[str, object], pd.DataFrame, dict[str, timedelta]]:
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
    from feast.data_format import ParquetFormat
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    rng = np.random.default_rng(seed)
    hours = [0, 1, 6, 24, 48]
    ttl = {v: timedelta(hours=int(rng.choice(hours))) for v in ("fv_a", "fv_b", "fv_ab")}
    a = Entity(name="a", join_keys=["a_id"], value_type=ValueType.INT64)
    b = Entity(name="b", join_keys=["b_id"], value_type=ValueType.INT64)

    rows_a = _random_rows(rng, {"a_id": 8}, 150, "a", created=True)
    rows_b = _random_rows(rng, {"b_id": 6}, 120, "b", created=False)
    rows_b = rows_b.rename(columns={"ts": "event_timestamp"})
    rows_ab = _random_rows(rng, {"a_id": 8, "b_id": 6}, 200, "ab", created=True)
    rows_ab = rows_ab.rename(columns={"ab_f": "src_f"})  # read through a field mapping

    def view(name: str, entities: list, rows: pd.DataFrame, **source: object) -> FeatureView:
        timestamp = source.get("timestamp_field", "ts")
        prefix = name.removeprefix("fv_")
        return FeatureView(
            name=name,
            entities=entities,
            ttl=ttl[name],
            schema=[
                Field(name=f"{prefix}_i", dtype=Int64),
                Field(name=f"{prefix}_f", dtype=Float64),
                Field(name=f"{prefix}_s", dtype=String),
            ],
            source=FileSource(
                name=f"{name}_source",
                path=_write_partitions(root, name, rows, str(timestamp)),
                file_format=ParquetFormat(),
                **source,
            ),
        )

    fv_a = view("fv_a", [a], rows_a, timestamp_field="ts", created_timestamp_column="created")
    fv_b = view("fv_b", [b], rows_b, timestamp_field="event_timestamp")
    fv_ab = view(
        "fv_ab",
        [a, b],
        rows_ab,
        timestamp_field="ts",
        created_timestamp_column="created",
        field_mapping={"src_f": "ab_f"},
    )
    service = FeatureService(
        name="svc",
        features=[
            fv_a,
            fv_ab[["ab_f", "ab_i"]],
            fv_b.with_name("b2").with_join_key_map({"b_id": "b2_id"}),
        ],
    )

    def store(offline: str) -> FeatureStore:
        return FeatureStore(
            repo_path=str(root),
            config=RepoConfig(
                project=f"world{seed}",
                provider="local",
                registry=str(root / "registry.db"),
                offline_store={"type": offline},
                online_store={"type": "sqlite", "path": str(root / "online.db")},
                entity_key_serialization_version=3,
                repo_path=str(root),
            ),
        )

    stores = {PLUGIN: store(PLUGIN), "duckdb": store("duckdb")}
    stores[PLUGIN].apply([a, b, fv_a, fv_b, fv_ab, service])
    return stores, _random_entities(rng, rows_a, rows_b, rows_ab, ttl), ttl


def _random_entities(
    rng: np.random.Generator,
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    rows_ab: pd.DataFrame,
    ttl: dict[str, timedelta],
) -> pd.DataFrame:
    """Random rows (some keys without history), rows at feature timestamps, at each view's TTL
    edge and a microsecond past it, before any data, and duplicates (column ``edge`` says which)."""
    n = 120
    frame = pd.DataFrame(
        {
            "a_id": rng.integers(0, 10, n),  # 8 and 9 have no history
            "b_id": rng.integers(0, 8, n),  # 6 and 7 neither
            "b2_id": rng.integers(0, 8, n),
            "event_timestamp": T0
            + pd.to_timedelta(rng.integers(-6 * 60, 4 * 1440, n), unit="min")
            + pd.to_timedelta(rng.integers(0, 60, n), unit="s"),
            "edge": "",
        }
    )
    parts = [frame]
    exact = rows_a.sample(n=20, random_state=4)
    parts.append(
        frame.head(20).assign(a_id=exact["a_id"].to_numpy(), event_timestamp=exact["ts"].to_numpy())
    )
    for name, rows, keys, timestamp in (
        ("fv_a", rows_a, ["a_id"], "ts"),
        ("fv_b", rows_b, ["b_id"], "event_timestamp"),
        ("fv_ab", rows_ab, ["a_id", "b_id"], "ts"),
    ):
        newest = rows.sort_values(timestamp).groupby(keys).tail(1).head(10)
        limit = ttl[name] or timedelta(days=1)
        for edge, shift in (("ttl", limit), ("past", limit + timedelta(microseconds=1))):
            part = frame.head(len(newest)).copy()
            for key in keys:
                part[key] = newest[key].to_numpy()
            part["event_timestamp"] = (newest[timestamp] + shift).to_numpy()
            parts.append(part.assign(edge=f"{name}:{edge}"))
    parts.append(frame.head(5).assign(event_timestamp=T0 - timedelta(days=3), edge="before"))
    parts.append(frame.sample(n=15, random_state=5))
    entities = pd.concat(parts, ignore_index=True)
    entities["tag"] = pd.Categorical(rng.choice(["x", "y"], len(entities)))
    entities["flag"] = rng.random(len(entities)) < 0.5
    return entities.assign(row=np.arange(len(entities)))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_world_equals_feast(seed: int, tmp_path: Path) -> None:
    stores, entities, ttl = _world(seed, tmp_path)
    full = seed % 2 == 0
    for features, full_feature_names in (
        (stores[PLUGIN].get_feature_service("svc"), full),
        (["fv_ab:ab_s", "fv_a:a_i", "fv_b:b_f", "fv_a:a_s"], not full),
    ):
        feast, plugin = _both(
            stores, entity_df=entities, features=features, full_feature_names=full_feature_names
        )
        _assert_same(feast, plugin, f"seed {seed}, {features}, full names {full_feature_names}")

    # the edges are in the world: a row exactly TTL old counts, a microsecond older does not
    f_column = "fv_b__b_f" if not full else "b_f"
    at, past = plugin[plugin["edge"] == "fv_b:ttl"], plugin[plugin["edge"] == "fv_b:past"]
    assert len(at) and at[f_column].notna().all(), f"seed {seed}: fv_b's TTL edge lost a row"
    if ttl["fv_b"]:
        assert past[f_column].isna().all(), f"seed {seed}: a row past fv_b's TTL was used"


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_random_world_in_pieces_equals_feast(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entity frame larger than CHUNK_ROWS is joined in time-ordered pieces (bounded
    memory at 10M rows); pieces of 7 rows cut between rows of equal timestamps and across
    TTL edges, and the frames must still equal Feast's, streamed to parquet too."""
    from driftline import feast_offline

    stores, entities, _ = _world(seed, tmp_path)
    monkeypatch.setattr(feast_offline, "CHUNK_ROWS", 7)
    assert len(entities) > 3 * feast_offline.CHUNK_ROWS
    for features, full_feature_names in (
        (stores[PLUGIN].get_feature_service("svc"), True),
        (["fv_ab:ab_s", "fv_a:a_i", "fv_b:b_f", "fv_a:a_s"], False),
    ):
        feast, plugin = _both(
            stores, entity_df=entities, features=features, full_feature_names=full_feature_names
        )
        _assert_same(feast, plugin, f"seed {seed} in pieces of 7, {features}")
        streamed = tmp_path / f"streamed-{full_feature_names}.parquet"
        stores[PLUGIN].get_historical_features(
            entity_df=entities, features=features, full_feature_names=full_feature_names
        ).to_parquet(streamed)
        _assert_same(feast, pd.read_parquet(streamed), f"seed {seed} in pieces, to_parquet")

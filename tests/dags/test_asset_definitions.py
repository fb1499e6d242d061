"""One definition per asset across every DAG file, watchers included.

Airflow keeps one definition per asset URI and the dag-processor writes whichever DAG file
it parsed last; two files that build ``drift://<model>`` differently (one with the watcher,
one without) make the watcher's trigger start and get cancelled on every parse cycle."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.dags.test_dag_integrity import DAG_FILES, _parse


@pytest.fixture(scope="module")
def parse_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("airflow_home"))  # no metadata database


def _definitions(paths: list[Path], home: str) -> dict[str, dict[str, list[str]]]:
    """uri -> serialized definition -> where it is declared."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for dag in _parse(path, home)["dags"]:
            for asset in dag["assets"]:
                definition = json.dumps(asset["definition"], sort_keys=True)
                found[asset["uri"]][definition].append(f"{path.name}:{asset['where']}")
    return found


def _conflicts(found: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    return {uri: dict(defs) for uri, defs in found.items() if len(defs) > 1}


def test_every_asset_has_one_definition_across_dag_files(parse_home: str) -> None:
    found = _definitions(DAG_FILES, parse_home)
    assert _conflicts(found) == {}


def test_the_drift_asset_carries_its_watcher_wherever_it_is_named(parse_home: str) -> None:
    found = _definitions(DAG_FILES, parse_home)
    drift = {uri: defs for uri, defs in found.items() if uri.startswith("drift://")}
    assert drift, "no DAG names a drift:// asset"
    for uri, defs in drift.items():
        (definition, where), *_ = defs.items()
        watchers = json.loads(definition).get("watchers", [])
        assert len(watchers) == 1, f"{uri} declared without its watcher at {where}"
        files = {place.split(":")[0] for place in where}
        assert {"model_retrain.py", "model_drift_monitor.py"} <= files, where


def test_the_check_catches_two_definitions(tmp_path: Path) -> None:
    # the check must be able to fail: the old pair, one file with the watcher, one without
    header = (
        "from datetime import datetime\n"
        "from airflow.sdk import Asset, AssetWatcher, dag, task\n"
        "from driftline_airflow.triggers import DriftEventTrigger\n"
    )
    watched = tmp_path / "watched.py"
    watched.write_text(
        header + "asset = Asset(name='drift://m', uri='drift://m', watchers=[AssetWatcher("
        "name='w', trigger=DriftEventTrigger(model='m'))])\n"
        "@dag(schedule=[asset], start_date=datetime(2026, 1, 1), catchup=False)\n"
        "def watched():\n    pass\nwatched()\n"
    )
    bare = tmp_path / "bare.py"
    bare.write_text(
        header + "asset = Asset(name='drift://m', uri='drift://m')\n"
        "@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)\n"
        "def bare():\n    @task(outlets=[asset])\n    def announce():\n        pass\n"
        "    announce()\nbare()\n"
    )
    conflicts = _conflicts(_definitions([watched, bare], str(tmp_path)))
    (uri,) = conflicts  # Airflow normalizes the URI to drift://m/
    assert uri.startswith("drift://m") and len(conflicts[uri]) == 2

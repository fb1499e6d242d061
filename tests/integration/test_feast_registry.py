"""Feast's registry under concurrent writers: nothing registered is ever lost.

A fresh `make up` once lost its entities and feature service: Feast's file registry rewrote
the whole file in place, two materialize tasks in parallel read a torn file and wrote it
back. The embedded profile now uses the SQL registry on SQLite (one row per object, each
write a transaction); these tests run real processes against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from driftline.feature_store import apply_repo, get_store
from driftline.settings import REPO_ROOT, get_settings

END = datetime(2026, 1, 22, tzinfo=UTC)  # the baseline data covers 2026-01-01 .. 2026-01-21

# One process per (view, day): two per view, as two overlapping materialization runs; each
# records an interval per 6-hour slice, so registry reads and writes interleave. A window
# older than what the view already holds is extended to its newest end (by design), so each
# process prints the intervals it recorded.
MATERIALIZE = """
import json, sys
from datetime import datetime, timedelta
from driftline.feature_store import materialize_window
view, start = sys.argv[1], datetime.fromisoformat(sys.argv[2])
for slice in range(4):
    begin = start + timedelta(hours=6 * slice)
    for result in materialize_window(
        begin, begin + timedelta(hours=6), feature_views=[view], overlap=timedelta(0)
    ):
        print("RECORDED " + json.dumps(result.as_dict()))
"""
# Three applies in a row, so at least one overlaps the interval writes: Feast's apply reads a
# view's row with its intervals and writes it back; an interval recorded in between was lost
# (CI saw it once) until apply took the views' materialization locks.
APPLY = "from driftline.feature_store import apply_repo\nfor _ in range(3): apply_repo()"


def _process(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{process.args[3:]} failed:\n{output[-3000:]}"
    return output


def test_registry_is_sql_on_sqlite_in_the_embedded_profile(driftline_home: Path) -> None:
    store = get_store()
    assert store.config.registry.registry_type == "sql"
    assert store.config.registry.path == f"sqlite:///{get_settings().feast_registry}"
    assert get_settings().feast_registry.is_relative_to(driftline_home)


def test_four_materializations_during_an_apply_keep_the_registry_complete(
    offline_copy: Path,
) -> None:
    apply_repo()
    days = [
        (view, END - timedelta(days=offset))
        for view in ("card_features", "merchant_features")
        for offset in (3, 1)
    ]
    workers = [_process(MATERIALIZE, view, day.isoformat()) for view, day in days]
    apply = _process(APPLY)
    outputs = [_finish(process) for process in [*workers, apply]]

    reported = [
        json.loads(line.removeprefix("RECORDED "))
        for output in outputs
        for line in output.splitlines()
        if line.startswith("RECORDED ")
    ]
    assert len(reported) == 16, f"expected 4 slices from each of 4 processes: {reported}"
    windows = {
        (r["feature_view"], datetime.fromisoformat(r["start"]), datetime.fromisoformat(r["end"]))
        for r in reported
    }
    store = get_store()
    assert sorted(entity.name for entity in store.list_entities()) == ["card", "merchant"]
    assert sorted(view.name for view in store.list_feature_views()) == [
        "card_features",
        "merchant_features",
    ]
    assert [service.name for service in store.list_feature_services()] == ["fraud_detection_v1"]
    recorded = {
        (view.name, start, end)
        for view in store.list_feature_views()
        for start, end in view.materialization_intervals
    }
    assert windows <= recorded, f"materialization intervals lost: {sorted(windows - recorded)}"
    assert len(store.get_feature_service("fraud_detection_v1").feature_view_projections) == 2
    # the newest window wins: each view's online data ends at the newest day, never older
    for view in store.list_feature_views():
        assert view.most_recent_end_time == END, (view.name, view.most_recent_end_time)


def test_an_apply_waits_for_a_running_materialization_of_a_view(offline_copy: Path) -> None:
    from driftline.feature_store import _view_lock

    apply_repo()
    store = get_store()
    with _view_lock(store, "card_features"):
        apply = _process(APPLY.replace("range(3)", "range(1)"))
        with pytest.raises(subprocess.TimeoutExpired):
            apply.wait(timeout=30)
    _finish(apply)


def test_a_materialization_with_a_stale_cache_does_not_undo_an_apply(
    offline_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("DRIFTLINE_FEAST_REPO", str(repo))
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(repo / "feature_store.yaml"))
    apply_repo()

    # A task opens the store and caches the registry (cache_ttl_seconds: 60) ...
    stale = get_store()
    assert [service.name for service in stale.list_feature_services()] == ["fraud_detection_v1"]

    # ... an operator adds a feature service and changes a view ...
    with (repo / "features.py").open("a") as definitions:
        definitions.write(
            "\n# added while a materialization holds an older registry\n"
            "card_only_v1 = FeatureService(name='card_only_v1', features=[card_stats_fv])\n"
        )
    features = (repo / "features.py").read_text()
    (repo / "features.py").write_text(
        features.replace('"owner": "driftline"}', '"owner": "driftline", "rev": "2"}', 1)
    )

    # ... and the task materializes with the registry it cached before the apply: the apply
    # lands after the task read the registry and loaded the rows, as it records the interval.
    record = stale.registry.apply_materialization

    def apply_then_record(*args: object, **kwargs: object) -> None:
        apply_repo()
        return record(*args, **kwargs)

    monkeypatch.setattr(stale.registry, "apply_materialization", apply_then_record)
    stale.materialize(END - timedelta(days=1), END, feature_views=["card_features"])

    fresh = get_store()
    assert sorted(service.name for service in fresh.list_feature_services()) == [
        "card_only_v1",
        "fraud_detection_v1",
    ]
    card = fresh.get_feature_view("card_features")
    assert card.tags.get("rev") == "2", f"the apply's change was undone: tags {card.tags}"
    assert (END - timedelta(days=1), END) in card.materialization_intervals

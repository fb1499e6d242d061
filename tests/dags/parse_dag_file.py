"""Parse one DAG file the way the DAG processor does, with every external system failing.

Run as a script by test_dag_integrity.py, in a fresh interpreter: Airflow is imported
first, then sockets, SQLite, connections and Variables are made to raise, then the file is
parsed. A DAG file that touches any of them at parse time gets an import error — the access
is made to fail, never patched into a harmless fake. Prints one JSON document.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
import time
from typing import Any

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import Asset, BaseHook, Connection, Variable
from airflow.serialization.encoders import encode_asset_like


class ParseTimeAccess(RuntimeError):
    pass


def _forbid(what: str) -> Any:
    def refuse(*_: Any, **__: Any) -> Any:
        raise ParseTimeAccess(f"{what} at parse time")

    return refuse


def _assets(dag: Any) -> list[dict[str, Any]]:
    """Every asset a DAG names (schedule, outlets, inlets), serialized the way the
    dag-processor writes it: watchers and their triggers' kwargs included."""

    def walk(condition: Any) -> list[Any]:  # Asset, or AssetAny/AssetAll of them
        if isinstance(condition, Asset):
            return [condition]
        return [a for part in getattr(condition, "objects", []) for a in walk(part)]

    named = [("schedule", asset) for asset in walk(getattr(dag.timetable, "asset_condition", None))]
    for task in dag.tasks:
        for kind in ("outlets", "inlets"):
            named += [(f"{task.task_id}.{kind}", a) for a in getattr(task, kind) or []]
    return [
        {"uri": asset.uri, "where": f"{dag.dag_id}:{where}", "definition": encode_asset_like(asset)}
        for where, asset in named
        if isinstance(asset, Asset)
    ]


def main(path: str) -> None:
    socket.socket.connect = _forbid("network connection")  # type: ignore[method-assign]
    socket.create_connection = _forbid("network connection")
    socket.getaddrinfo = _forbid("DNS lookup")
    sqlite3.connect = _forbid("database access (sqlite)")
    BaseHook.get_connection = classmethod(_forbid("Airflow connection lookup"))  # type: ignore[method-assign]
    Connection.get = classmethod(_forbid("Airflow connection lookup"))  # type: ignore[method-assign]
    Variable.get = staticmethod(_forbid("Airflow Variable lookup"))  # type: ignore[method-assign]

    started = time.perf_counter()
    bag = DagBag(dag_folder=path, safe_mode=False)
    seconds = time.perf_counter() - started
    dags = []
    for dag in bag.dags.values():
        dags.append(
            {
                "dag_id": dag.dag_id,
                "tags": sorted(dag.tags),
                "owners": sorted({task.owner for task in dag.tasks}),
                "min_retries": min((task.retries for task in dag.tasks), default=0),
                "catchup": dag.catchup,
                "timetable": type(dag.timetable).__name__,
                "max_active_runs": dag.max_active_runs,
                "doc_md": dag.doc_md or "",
                "params": sorted(dag.params.keys()),
                "tasks": sorted(task.task_id for task in dag.tasks),
                "assets": _assets(dag),
            }
        )
    errors = {key: str(value) for key, value in bag.import_errors.items()}
    print(json.dumps({"seconds": seconds, "dags": dags, "import_errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1])

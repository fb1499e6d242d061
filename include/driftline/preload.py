"""Warm start for task processes: import the heavy libraries once, in the scheduler.

Airflow's LocalExecutor forks its workers from the scheduler, and each worker forks one
process per task. Modules imported in the scheduler are therefore already loaded in every
task — Feast alone costs ~5 s per process here, Evidently ~14 s, MLflow with XGBoost ~7 s.
Only third-party imports happen here: no threads, pools or connections are created before
the forks, and driftline's own modules are dropped again so tasks always run the code on
disk (Airflow plugins, as always, need a restart: `make down && make up`).
`driftline up` starts the scheduler through :func:`main`; set DRIFTLINE_PRELOAD=0 to start
it plainly.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

MODULES = (
    "pandas",
    "pyarrow.parquet",
    "duckdb",
    "sklearn.metrics",
    "xgboost",
    "mlflow",
    "mlflow.xgboost",
    "evidently",
    "evidently.metrics",
    "evidently.presets",
)


def preload() -> float:
    """Import everything in MODULES (and Feast, the fast way); returns the seconds spent."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    started = time.perf_counter()
    from driftline.feature_store import import_feast

    import_feast()
    for name in MODULES:
        importlib.import_module(name)
    # driftline's own modules stay out of the fork, so every task reads the code on disk
    for name in [m for m in sys.modules if m == "driftline" or m.startswith("driftline.")]:
        del sys.modules[name]
    return time.perf_counter() - started


def main() -> None:
    """``python -m driftline.preload <airflow args>``: preload, then run the Airflow CLI."""
    if os.environ.get("DRIFTLINE_PRELOAD", "1") != "0":
        seconds = preload()
        print(f"driftline: preloaded task libraries in {seconds:.1f} s", flush=True)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    sys.exit(airflow_main())


if __name__ == "__main__":
    main()

"""
### model specs (this file defines no Airflow DAG)

Loads every model spec in `include/models/` (or `$DRIFTLINE_MODELS_DIR`) and raises one
error listing each broken spec: its file, the field, the value and the nearest valid name.
Airflow records it as this file's import error (UI: "DAG Import Errors"; REST:
`GET /api/v2/importErrors`), while `model_retrain.py`, `model_drift_monitor.py` and
`feature_materialization.py` build DAGs only from the specs that load — a broken spec
costs only its own model.
"""

from __future__ import annotations

from driftline.specs import check_specs

check_specs()

"""Where driftline keeps its state, read from the environment when asked, never at import.

Every path and URL has an embedded default under one state directory (``.local/`` in the
repository, or ``$DRIFTLINE_HOME``). The production profile sets the URL variables instead;
no file is edited to switch profiles. Standard variables keep the meaning their tools give
them: ``AIRFLOW_HOME``, ``MLFLOW_TRACKING_URI``, Feast's ``FEAST_FS_YAML_FILE_PATH``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

# (variable, what it sets, embedded default) — the README's configuration table is checked
# against this list by tests/unit/test_settings.py.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    ("DRIFTLINE_HOME", "state directory of the embedded profile", "<repo>/.local"),
    ("DRIFTLINE_OFFLINE_DIR", "offline store: parquet day partitions", "$DRIFTLINE_HOME/offline"),
    ("DRIFTLINE_RUNS_DIR", "per-run artifacts (training sets, reports)", "$DRIFTLINE_HOME/runs"),
    ("DRIFTLINE_MODELS_DIR", "model specs, one file per model", "<repo>/include/models"),
    ("DRIFTLINE_FEAST_REPO", "Feast feature repository", "<repo>/feature_repo"),
    (
        "FEAST_FS_YAML_FILE_PATH",
        "Feast config file; the production one is feature_store.production.yaml",
        "<repo>/feature_repo/feature_store.yaml",
    ),
    ("DRIFTLINE_FEAST_PROJECT", "Feast project name", "driftline"),
    (
        "DRIFTLINE_FEAST_REGISTRY",
        "Feast SQL registry's SQLite file (embedded)",
        "$DRIFTLINE_HOME/feast/registry.sqlite",
    ),
    (
        "DRIFTLINE_FEAST_ONLINE_PATH",
        "Feast SQLite online store (embedded)",
        "$DRIFTLINE_HOME/feast/online.db",
    ),
    ("DRIFTLINE_FEAST_REGISTRY_URL", "Feast SQL registry URL (production)", "(unset)"),
    ("DRIFTLINE_FEAST_REDIS", "Feast Redis online store, host:port,db=N (production)", "(unset)"),
    ("AIRFLOW_HOME", "Airflow home (config, SQLite metadata DB, logs)", "$DRIFTLINE_HOME/airflow"),
    (
        "MLFLOW_TRACKING_URI",
        "MLflow tracking and registry store",
        "sqlite:///$DRIFTLINE_HOME/mlflow/mlflow.db",
    ),
    (
        "DRIFTLINE_MLFLOW_ARTIFACTS",
        "artifact root for experiments driftline creates",
        "$DRIFTLINE_HOME/mlflow/artifacts",
    ),
    (
        "DRIFTLINE_MONITORING_DB_URL",
        "monitoring store (drift reports, events, audit)",
        "sqlite:///$DRIFTLINE_HOME/monitoring.db",
    ),
    ("DRIFTLINE_EXPORTER_HOST", "address the Prometheus exporter listens on", "127.0.0.1"),
    ("DRIFTLINE_EXPORTER_PORT", "port of the Prometheus exporter (`make up`)", "9108"),
    (
        "DRIFTLINE_EXPORTER_CACHE_SECONDS",
        "the exporter reads the monitoring store at most once per this period",
        "10",
    ),
    ("DRIFTLINE_SERVE_HOST", "scoring service: address it listens on", "127.0.0.1"),
    ("DRIFTLINE_SERVE_PORT", "scoring service: port (`make up` starts it there)", "8000"),
    ("DRIFTLINE_SERVE_WORKERS", "scoring service: uvicorn worker processes", "1"),
    (
        "DRIFTLINE_SERVE_POLL_SECONDS",
        "scoring service: how often it checks the registry's aliases",
        "2",
    ),
    ("DRIFTLINE_SERVE_MAX_BATCH", "scoring service: most rows one batch request may hold", "1000"),
    (
        "DRIFTLINE_DASK_SCHEDULER",
        "Dask scheduler for training.engine: dask, tcp://host:port; overrides the spec's "
        "training.dask.scheduler_address",
        "(unset)",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Resolved locations. Build with :func:`get_settings`; every field is absolute."""

    home: Path
    offline_dir: Path
    runs_dir: Path
    models_dir: Path
    feast_repo: Path
    feast_yaml: Path
    feast_project: str
    feast_registry: Path
    feast_online_path: Path
    feast_registry_url: str | None
    feast_redis: str | None
    airflow_home: Path
    mlflow_tracking_uri: str
    mlflow_artifacts: Path
    monitoring_db_url: str
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_workers: int = 1
    serve_poll_seconds: float = 2.0
    serve_max_batch: int = 1000
    dask_scheduler: str | None = None

    def feast_env(self) -> dict[str, str]:
        """Variables ``feature_store.yaml`` expands (Feast runs ``os.path.expandvars`` on it)."""
        env = {
            "DRIFTLINE_FEAST_PROJECT": self.feast_project,
            "DRIFTLINE_FEAST_REGISTRY": str(self.feast_registry),
            "DRIFTLINE_FEAST_ONLINE_PATH": str(self.feast_online_path),
            "FEAST_FS_YAML_FILE_PATH": str(self.feast_yaml),
        }
        if self.feast_registry_url:
            env["DRIFTLINE_FEAST_REGISTRY_URL"] = self.feast_registry_url
        if self.feast_redis:
            env["DRIFTLINE_FEAST_REDIS"] = self.feast_redis
        return env

    def airflow_env(self) -> dict[str, str]:
        """Variables an Airflow process of driftline needs (standalone, dags test, workers)."""
        env = {
            "DRIFTLINE_HOME": str(self.home),
            "DRIFTLINE_OFFLINE_DIR": str(self.offline_dir),
            "DRIFTLINE_RUNS_DIR": str(self.runs_dir),
            "DRIFTLINE_MODELS_DIR": str(self.models_dir),
            "DRIFTLINE_FEAST_REPO": str(self.feast_repo),
            "DRIFTLINE_MONITORING_DB_URL": self.monitoring_db_url,
            "DRIFTLINE_MLFLOW_ARTIFACTS": str(self.mlflow_artifacts),
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": os.environ.get(
                "AIRFLOW__CORE__DAGS_FOLDER", str(REPO_ROOT / "dags")
            ),
            "AIRFLOW__CORE__PLUGINS_FOLDER": os.environ.get(
                "AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO_ROOT / "plugins")
            ),
            "AIRFLOW__CORE__LOAD_EXAMPLES": os.environ.get("AIRFLOW__CORE__LOAD_EXAMPLES", "False"),
        }
        if self.dask_scheduler:
            env["DRIFTLINE_DASK_SCHEDULER"] = self.dask_scheduler
        env.update(self.feast_env())
        return env


def _path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def _number(name: str, default: float, kind: type, minimum: float) -> Any:
    raw = os.environ.get(name)
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        from driftline.errors import InvalidInput

        raise InvalidInput(
            f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'} >= {minimum}"
        )
    return value


def get_settings() -> Settings:
    """Read the environment now. Cheap; call it where a location is needed, not at import."""
    home = _path("DRIFTLINE_HOME", REPO_ROOT / ".local")
    feast_repo = _path("DRIFTLINE_FEAST_REPO", REPO_ROOT / "feature_repo")
    mlflow_dir = home / "mlflow"
    return Settings(
        home=home,
        offline_dir=_path("DRIFTLINE_OFFLINE_DIR", home / "offline"),
        runs_dir=_path("DRIFTLINE_RUNS_DIR", home / "runs"),
        models_dir=_path("DRIFTLINE_MODELS_DIR", REPO_ROOT / "include" / "models"),
        feast_repo=feast_repo,
        feast_yaml=_path("FEAST_FS_YAML_FILE_PATH", feast_repo / "feature_store.yaml"),
        feast_project=os.environ.get("DRIFTLINE_FEAST_PROJECT", "driftline"),
        feast_registry=_path("DRIFTLINE_FEAST_REGISTRY", home / "feast" / "registry.sqlite"),
        feast_online_path=_path("DRIFTLINE_FEAST_ONLINE_PATH", home / "feast" / "online.db"),
        feast_registry_url=os.environ.get("DRIFTLINE_FEAST_REGISTRY_URL") or None,
        feast_redis=os.environ.get("DRIFTLINE_FEAST_REDIS") or None,
        airflow_home=_path("AIRFLOW_HOME", home / "airflow"),
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        mlflow_artifacts=_path("DRIFTLINE_MLFLOW_ARTIFACTS", mlflow_dir / "artifacts"),
        monitoring_db_url=os.environ.get("DRIFTLINE_MONITORING_DB_URL")
        or f"sqlite:///{home / 'monitoring.db'}",
        serve_host=os.environ.get("DRIFTLINE_SERVE_HOST") or "127.0.0.1",
        serve_port=_number("DRIFTLINE_SERVE_PORT", 8000, int, 1),
        serve_workers=_number("DRIFTLINE_SERVE_WORKERS", 1, int, 1),
        serve_poll_seconds=_number("DRIFTLINE_SERVE_POLL_SECONDS", 2.0, float, 0.1),
        serve_max_batch=_number("DRIFTLINE_SERVE_MAX_BATCH", 1000, int, 1),
        dask_scheduler=os.environ.get("DRIFTLINE_DASK_SCHEDULER") or None,
    )

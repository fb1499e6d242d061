"""The MLflow model registry as driftline uses it: versions, aliases and lineage tags.

Aliases, not stages (deprecated): ``champion`` serves, ``challenger`` is the newest trained
candidate, ``previous_champion`` is where a rollback goes. Models are logged in XGBoost's
native format (no pickles) and loaded back as boosters.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from driftline.errors import DriftlineError
from driftline.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"

# MLflow's HTTP client retries an unreachable tracking server for ~4 minutes by default
# (7 retries, backoff factor 2). driftline gives up after ~10 s instead, so a task fails
# while Airflow's own retries (with their delay) take over; set the variables to override.
MLFLOW_CLIENT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the settings' tracking store; returns the tracking URI."""
    settings = settings or get_settings()
    # no telemetry: these machines have no internet, and a DNS lookup per process is waste
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, default in MLFLOW_CLIENT_RETRIES.items():
        os.environ.setdefault(name, default)
    import mlflow

    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        db = settings.mlflow_tracking_uri.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(db), exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return settings.mlflow_tracking_uri


def client(settings: Settings | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str, settings: Settings | None = None) -> str:
    """The experiment named after the model, created on first use.

    With a local tracking store the artifact root is set explicitly (MLflow's default is
    ``./mlruns`` relative to whatever the working directory happens to be); a tracking
    server chooses its own.
    """
    settings = settings or get_settings()
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
        location = (settings.mlflow_artifacts / name).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:
        # another process created it between our lookup and create
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return (
        code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
        and "not found" in str(exc).lower()
    )


def alias_version(model: str, alias: str, settings: Settings | None = None) -> str | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(model, alias).version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str
    tags: dict[str, str]
    aliases: list[str]


def version_info(model: str, version: str, settings: Settings | None = None) -> VersionInfo:
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version(model, version)
    except MlflowException as exc:
        if _not_found(exc) or getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise DriftlineError(f"model {model!r} has no version {version}") from None
        raise
    return VersionInfo(str(mv.version), mv.run_id or "", dict(mv.tags), list(mv.aliases))


def find_version_by_tag(
    model: str, key: str, value: str, settings: Settings | None = None
) -> str | None:
    """The newest version carrying tag ``key=value`` (how re-runs find their own version)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client(settings).search_model_versions(
            f"name='{model}' and tags.{key}='{value}'",
            order_by=["version_number DESC"],
            max_results=1,
        )
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    return str(versions[0].version) if versions else None


def set_tags(
    model: str, version: str, tags: dict[str, Any], settings: Settings | None = None
) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model, version, key, str(value))


def load_booster(model: str, version: str, settings: Settings | None = None) -> Any:
    """The XGBoost booster of a registered version."""
    configure(settings)
    import mlflow.xgboost

    return mlflow.xgboost.load_model(f"models:/{model}/{version}")


def git_commit() -> str:
    """The commit of the code that trains, for lineage; "unknown" outside a git checkout."""
    if os.environ.get("DRIFTLINE_GIT_COMMIT"):
        return os.environ["DRIFTLINE_GIT_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"

"""The MLflow model registry as driftline uses it: versions, aliases and lineage tags.

Aliases, not stages (deprecated): ``champion`` serves, ``challenger`` is the newest trained
candidate, ``previous_champion`` is where a rollback goes, ``candidate`` is the version in a
canary rollout (with its traffic share in the version tag ``rollout_share``). Models are logged in XGBoost's
native format (no pickles) and loaded back as boosters.

A registry that cannot be reached (connection refused, a timeout, a 5xx answer, a locked
SQLite store) raises ``Unavailable``, so Airflow retries and the CLI exits 3; a version
that does not exist is ``InvalidInput``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from driftline.errors import DriftlineError, InvalidInput, Unavailable
from driftline.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"
# the version in a canary rollout; the scoring service routes its share of traffic to it
CANDIDATE = "candidate"

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


# MLflow error codes of an answer that may well be different on a retry
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}
# MLflow error codes of a request the server refused for who sent it
_REFUSED_CODES = {"UNAUTHENTICATED", "PERMISSION_DENIED"}


def _unreachable(exc: BaseException) -> bool:
    """Does ``exc`` say the registry could not be reached (rather than refused the request)?"""
    import requests
    import sqlalchemy as sa

    seen: BaseException | None = exc
    for _ in range(10):  # the exception chain, never a cycle
        if seen is None:
            break
        if isinstance(
            seen,
            (
                requests.exceptions.RequestException,
                sa.exc.OperationalError,
                ConnectionError,
                TimeoutError,
            ),
        ):
            return True
        message = str(seen)
        if message.startswith("API request to") and (
            "failed with exception" in message
            or "failed with timeout" in message
            or "failed with error code 5" in message
        ):
            return True
        code = getattr(seen, "error_code", None)
        if code in _TRANSIENT_CODES and "API request to" in message:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def reaching(settings: Settings | None = None) -> Iterator[None]:
    """Turn "MLflow could not be reached" into ``Unavailable`` naming the tracking URI."""
    try:
        yield
    except DriftlineError:
        raise
    except Exception as exc:
        uri = (settings or get_settings()).mlflow_tracking_uri
        if getattr(exc, "error_code", None) in _REFUSED_CODES:
            # a closed server (basic-auth app) refusing the workers' account: configuration,
            # not an outage; retrying with the same credentials cannot help
            user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "no user"
            raise InvalidInput(
                f"MLflow at {uri} refused the request as {user!r} ({exc.error_code}): set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD to the workers' account "
                "(`driftline mlflow-account` creates it)"
            ) from exc
        if not _unreachable(exc):
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise Unavailable(
            f"MLflow registry unreachable at {uri} (MLFLOW_TRACKING_URI): {detail}"
        ) from exc


def client(settings: Settings | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_store(settings: Settings | None = None) -> None:
    """Create a local (SQLite) tracking and registry database's tables, in this process.

    MLflow creates them on first use, in whichever process opens the new file first. The
    stack starts the MLflow UI, the scoring service and Airflow's tasks together, and two
    MLflow processes initializing one new file race: the loser fails with ``table datasets
    already exists`` (the MLflow UI died of it on a fresh `make up`). A tracking server
    (production) owns its database, so there is nothing to do for an HTTP URI."""
    settings = settings or get_settings()
    if not settings.mlflow_tracking_uri.startswith("sqlite"):
        return
    mlflow_client = client(settings)
    mlflow_client.search_experiments(max_results=1)
    mlflow_client.search_registered_models(max_results=1)


def experiment_id(name: str, settings: Settings | None = None) -> str:
    """The experiment named after the model, created on first use.

    With a local tracking store the artifact root is set explicitly (MLflow's default is
    ``./mlruns`` relative to whatever the working directory happens to be); a tracking
    server chooses its own.
    """
    settings = settings or get_settings()
    with reaching(settings):
        return _experiment_id(name, settings)


def _experiment_id(name: str, settings: Settings) -> str:
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

    with reaching(settings):
        mlflow_client = client(settings)
        try:
            return str(mlflow_client.get_model_version_by_alias(model, alias).version)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            # MLflow's basic-auth app answers 403, not 404, for a model that does not exist
            # yet (it cannot find the model to check the permission on): ask whether it does
            if exc.error_code == "PERMISSION_DENIED" and not mlflow_client.search_registered_models(
                filter_string=f"name = '{model}'", max_results=1
            ):
                return None
            raise


def set_alias(
    model: str, alias: str, version: str | None, settings: Settings | None = None
) -> None:
    """Point ``alias`` at ``version``; None deletes the alias (absent already is fine)."""
    from mlflow.exceptions import MlflowException

    with reaching(settings):
        mlflow_client = client(settings)
        if version is not None:
            mlflow_client.set_registered_model_alias(model, alias, version)
            return
        try:
            mlflow_client.delete_registered_model_alias(model, alias)
        except MlflowException as exc:
            if not _not_found(exc):
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
        with reaching(settings):
            mv = client(settings).get_model_version(model, version)
    except MlflowException as exc:
        if _not_found(exc) or getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise InvalidInput(f"model {model!r} has no version {version}") from None
        raise
    return VersionInfo(str(mv.version), mv.run_id or "", dict(mv.tags), list(mv.aliases))


def find_version_by_tag(
    model: str, key: str, value: str, settings: Settings | None = None
) -> str | None:
    """The newest version carrying tag ``key=value`` (how re-runs find their own version)."""
    from mlflow.exceptions import MlflowException

    try:
        with reaching(settings):
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
    with reaching(settings):
        mlflow_client = client(settings)
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(model, version, key, str(value))


def delete_tag(model: str, version: str, key: str, settings: Settings | None = None) -> None:
    """Remove a version tag; a tag (or version) that is already gone is fine."""
    from mlflow.exceptions import MlflowException

    with reaching(settings):
        try:
            client(settings).delete_model_version_tag(model, version, key)
        except MlflowException as exc:
            if not (_not_found(exc) or exc.error_code == "RESOURCE_DOES_NOT_EXIST"):
                raise


def load_booster(model: str, version: str, settings: Settings | None = None) -> Any:
    """The XGBoost booster of a registered version."""
    configure(settings)
    import mlflow.xgboost

    with reaching(settings):
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

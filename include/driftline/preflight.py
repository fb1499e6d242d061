"""`driftline check`: can every service the settings name be reached?

Run before anything starts (the compose file's airflow-init runs it first): a wrong
password, an unknown database or a service that is down is reported with the service, the
setting that points at it (password redacted) and the error — instead of a stack trace from
deep inside Airflow, MLflow or Feast.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from driftline.errors import Unavailable
from driftline.settings import Settings, get_settings


@dataclass(frozen=True)
class Probe:
    service: str
    setting: str
    target: str
    ok: bool
    detail: str

    def describe(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return f"{state:6} {self.service} ({self.setting}={self.target}): {self.detail}"


def _redact(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _database(service: str, setting: str, url: str) -> Probe:
    from pathlib import Path

    import sqlalchemy as sa

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(
            url, connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {}
        )
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return Probe(service, setting, _redact(url), False, reason)
    return Probe(service, setting, _redact(url), True, "reachable")


def _redis(setting: str, value: str) -> Probe:
    import redis

    host_port, *options = value.split(",")
    host, _, port = host_port.partition(":")
    kwargs = dict(option.split("=", 1) for option in options if "=" in option)
    shown = value.replace(kwargs.get("password", "\0"), "***") if kwargs.get("password") else value
    try:
        client = redis.Redis(
            host=host,
            port=int(port or 6379),
            db=int(kwargs.get("db", 0)),
            password=kwargs.get("password"),
            socket_connect_timeout=5,
        )
        client.ping()
    except Exception as exc:
        return Probe("Feast online store (Redis)", setting, shown, False, str(exc))
    return Probe("Feast online store (Redis)", setting, shown, True, "reachable")


def _mlflow(uri: str) -> Probe:
    if not uri.startswith(("http://", "https://")):
        return _database("MLflow tracking store", "MLFLOW_TRACKING_URI", uri)
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        return Probe("MLflow tracking server", "MLFLOW_TRACKING_URI", uri, False, str(exc))
    return Probe(
        "MLflow tracking server", "MLFLOW_TRACKING_URI", uri, ok, "reachable" if ok else "unhealthy"
    )


def probes(settings: Settings | None = None) -> list[Probe]:
    settings = settings or get_settings()
    found = []
    airflow_db = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if airflow_db:
        found.append(
            _database(
                "Airflow metadata database", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", airflow_db
            )
        )
    found.append(_mlflow(settings.mlflow_tracking_uri))
    if settings.feast_registry_url:
        found.append(
            _database("Feast registry", "DRIFTLINE_FEAST_REGISTRY_URL", settings.feast_registry_url)
        )
    if settings.feast_redis:
        found.append(_redis("DRIFTLINE_FEAST_REDIS", settings.feast_redis))
    found.append(
        _database("monitoring store", "DRIFTLINE_MONITORING_DB_URL", settings.monitoring_db_url)
    )
    return found


def check(settings: Settings | None = None, results: list[Probe] | None = None) -> list[Probe]:
    """All probes (or ``results`` already taken); raises ``Unavailable`` naming every service
    that cannot be reached."""
    results = probes(settings) if results is None else results
    failed = [probe for probe in results if not probe.ok]
    if failed:
        raise Unavailable(
            "cannot reach "
            + "; ".join(f"{p.service} ({p.setting}={p.target}): {p.detail}" for p in failed)
        )
    return results
